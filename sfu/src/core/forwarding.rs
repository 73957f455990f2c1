//! The packet path: a publisher's RTP packet fanned out to every subscription of its track
//! (the forwarder rewrites sequence number and timestamp, the subscriber's session maps the
//! payload type and encrypts), keyframe requests, and data-channel relay within a room.
//!
//! Per packet: no allocation in our code (the payload is shared), no lock, no channel hop, no
//! log line; counters are plain integers of the core.

use std::sync::Arc;
use std::time::Instant;

use crate::codec::{is_keyframe_start, MediaCodec};
use crate::forwarder::LayerPacket;
use crate::layer::{Layer, PerLayer};
use crate::room::Room;
use crate::session::{KeyframeKind, RtpIn, Section};
use crate::speakers::LevelMeter;
use crate::vp8::{Vp8Descriptor, Vp8Fields};
use crate::{DataKind, PeerRole, SfuEvent, TrackId, TrackKind};

use super::{MediaCore, RoomKey, SessionRef};

impl MediaCore {
    /// One publisher packet, fanned out to every ready subscription of its track.
    pub(super) fn forward(&mut self, from: SessionRef, pkt: RtpIn) {
        self.stats.rtp_in += 1;
        let now = self.now;
        let Some(room) = self.rooms.get_mut(&from.room) else {
            return;
        };
        let Room {
            participants,
            tracks,
            ..
        } = room;
        let Some(track) = tracks.get_mut(&pkt.track) else {
            return;
        };
        track.saw(pkt.layer, pkt.payload.len(), now);
        let mut went_live = false;
        track.loss[pkt.layer].observe(pkt.seq);
        let clock_rate = track.clock_rate();
        if let (Some(meter), Some(level)) = (track.meter.as_mut(), pkt.audio_level) {
            meter.observe(level, pkt.ts, clock_rate, now);
        }
        if track.codec.is_none_or(|c| c.payload_type() != pkt.pt) {
            let Some(publisher) = participants.get(&from.participant) else {
                return;
            };
            let Some(codec) = publisher.publisher.codec_of(pkt.pt) else {
                return;
            };
            let first = track.codec.is_none();
            track.codec = Some(codec);
            if first {
                track.dynacast.went_live(now);
                went_live = true;
                publisher.emit(SfuEvent::TrackLive {
                    track: pkt.track,
                    mime: codec.media_codec().mime(track.is_video()).to_string(),
                });
            }
        }
        let Some(codec) = track.codec else {
            return;
        };
        let video = track.is_video();
        let targets = track.targets(now);
        let media_codec = codec.media_codec();
        let keyframe = video && is_keyframe_start(media_codec, &pkt.payload);
        let vp8 = (media_codec == MediaCodec::Vp8)
            .then(|| Vp8Descriptor::parse(&pkt.payload))
            .flatten();
        if keyframe {
            track.keyframes.arrived(pkt.layer);
        }
        let lp = LayerPacket {
            layer: pkt.layer,
            seq: pkt.seq,
            ts: pkt.ts,
            keyframe,
            now,
            vp8,
        };
        // Payloads with renumbered VP8 descriptors, shared by the subscriptions that need the
        // same numbers (usually none: only a subscription that switched layers needs its own).
        let mut rewritten = Rewritten::default();
        // Layers some subscription waits for a keyframe of (asked for below).
        let mut waiting = PerLayer([false; 3]);
        let mut panicked: Option<SessionRef> = None;
        let (mut forwarded, mut forwarded_video) = (0u64, 0u64);
        for sub in &mut track.subscriptions {
            if !sub.ready || sub.paused {
                continue;
            }
            let Some(section) = sub.section else { continue };
            // Video goes at most at what the subscriber's bandwidth allows (none: paused).
            let Some(limit) = (if video {
                sub.grant.limit(sub.max_layer)
            } else {
                Some(sub.max_layer)
            }) else {
                continue;
            };
            let target = targets[limit];
            let header = sub.forwarder.forward(lp, target);
            if video && sub.forwarder.current_layer() != Some(target) {
                waiting[target] = true;
            }
            let Some(h) = header else { continue };
            let payload = match (h.vp8, &vp8) {
                (Some(fields), Some(d)) => rewritten.get(fields, d, &pkt.payload),
                _ => pkt.payload.clone(),
            };
            let Some(p) = participants.get_mut(&sub.subscriber) else {
                continue;
            };
            let Some(out) = p.session_mut(sub.role) else {
                continue;
            };
            let to = SessionRef {
                room: from.room,
                participant: sub.subscriber,
                role: sub.role,
            };
            match out.write_rtp(
                now,
                section,
                &codec,
                &mut sub.pt,
                h.seq,
                h.ts,
                pkt.marker,
                payload,
                video,
            ) {
                Ok(true) => {
                    forwarded += 1;
                    forwarded_video += u64::from(video);
                    if out.mark_dirty(false) {
                        self.dirty.push(to);
                    }
                }
                Ok(false) => {}
                // Contained below, once the borrow of the track ends.
                Err(_) => panicked = Some(to),
            }
        }
        self.stats.rtp_forwarded += forwarded;
        self.stats.rtp_forwarded_video += forwarded_video;
        for layer in Layer::ALL {
            if waiting[layer] {
                self.request_keyframe(from.room, pkt.track, Some(layer), KeyframeKind::Pli);
            }
        }
        if went_live {
            self.update_dynacast(from.room, pkt.track);
        }
        if let Some(s) = panicked {
            self.session_panicked(s);
        }
    }

    /// A keyframe of `layer` (default: the highest flowing one) is needed from a track's
    /// publisher: asked for now, or when the track's throttle window ends, and again until it
    /// arrives (`keyframe.rs`).
    pub(super) fn request_keyframe(
        &mut self,
        room: RoomKey,
        track_id: TrackId,
        layer: Option<Layer>,
        kind: KeyframeKind,
    ) {
        let now = self.now;
        let Some(track) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.tracks.get_mut(&track_id))
        else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let layer = layer.unwrap_or_else(|| track.targets(now)[Layer::High]);
        let send = track.keyframes.want(layer, now);
        if !self.keyframe_waits.contains(&(room, track_id)) {
            self.keyframe_waits.push((room, track_id));
        }
        if send {
            self.send_keyframe_request(room, track_id, layer, kind);
        }
    }

    /// Sends the deferred and repeated keyframe requests due at `now`; forgets tracks that
    /// wait for nothing any more.
    pub(super) fn keyframe_timers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.keyframe_waits.len() {
            let (room, track_id) = self.keyframe_waits[i];
            let Some(track) = self
                .rooms
                .get_mut(&room)
                .and_then(|r| r.tracks.get_mut(&track_id))
            else {
                self.keyframe_waits.swap_remove(i);
                continue;
            };
            let due = track.keyframes.poll_due(now);
            if !track.keyframes.waiting() {
                self.keyframe_waits.swap_remove(i);
            } else {
                i += 1;
            }
            for layer in Layer::ALL {
                if due[layer] {
                    self.send_keyframe_request(room, track_id, layer, KeyframeKind::Pli);
                }
            }
        }
    }

    /// When the next deferred or repeated keyframe request is due.
    pub(super) fn next_keyframe_due(&self) -> Option<Instant> {
        self.keyframe_waits
            .iter()
            .filter_map(|(room, track)| {
                self.rooms
                    .get(room)?
                    .tracks
                    .get(track)?
                    .keyframes
                    .next_due()
            })
            .min()
    }

    fn send_keyframe_request(
        &mut self,
        room: RoomKey,
        track_id: TrackId,
        layer: Layer,
        kind: KeyframeKind,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(track) = r.tracks.get(&track_id) else {
            return;
        };
        let section = track.section;
        let publisher = track.publisher;
        let Some(p) = r.participants.get_mut(&publisher) else {
            return;
        };
        let sref = SessionRef {
            room,
            participant: publisher,
            role: PeerRole::Publisher,
        };
        let rid = track.rid(layer);
        if p.publisher.request_keyframe(section, rid, kind).is_err() {
            self.session_panicked(sref);
            return;
        }
        self.stats.keyframe_requests += 1;
        self.mark_dirty(sref);
    }

    /// A subscriber's PLI/FIR for a section it receives: passed to the publisher for the layer
    /// that subscription is on.
    pub(super) fn subscriber_wants_keyframe(
        &mut self,
        sref: SessionRef,
        section: Section,
        kind: KeyframeKind,
    ) {
        let Some(room) = self.rooms.get_mut(&sref.room) else {
            return;
        };
        let Some(track) = room
            .participants
            .get(&sref.participant)
            .and_then(|p| p.plan.carried.get(&section).copied())
        else {
            return;
        };
        let layer = room
            .tracks
            .get_mut(&track)
            .and_then(|t| t.subscription_mut(sref.participant))
            .and_then(|s| s.forwarder.current_layer());
        self.request_keyframe(sref.room, track, layer, kind);
    }

    /// One data-channel message of a participant: the adapter's router decides what and to
    /// whom; delivered to the other participants of the same room only.
    pub(super) fn relay_data(&mut self, from: SessionRef, kind: DataKind, payload: &[u8]) {
        let Some(room) = self.rooms.get_mut(&from.room) else {
            return;
        };
        let Some(sender) = room.participants.get_mut(&from.participant) else {
            return;
        };
        let Some(routed) = sender.router.route(kind, payload) else {
            return;
        };
        let mut panicked: Option<SessionRef> = None;
        for (pid, p) in room.participants.iter_mut() {
            if *pid == from.participant {
                continue;
            }
            if !routed.destinations.is_empty()
                && !routed.destinations.iter().any(|d| **d == *p.identity)
            {
                continue;
            }
            let Some(role) = p.data_role(kind) else {
                continue;
            };
            let Some(session) = p.session_mut(role) else {
                continue;
            };
            let to = SessionRef {
                room: from.room,
                participant: *pid,
                role,
            };
            match session.send_data(kind, &routed.payload) {
                Ok(true) => {
                    if session.mark_dirty(true) {
                        self.dirty.push(to);
                    }
                }
                Ok(false) => self.stats.data_dropped += 1,
                Err(_) => panicked = Some(to),
            }
        }
        if let Some(s) = panicked {
            self.session_panicked(s);
        }
    }

    /// Binds a section the client offers for sending to one of its announced tracks: by msid
    /// track id (= `AddTrackRequest.cid`), else the first pending track of the same kind.
    pub(super) fn bind_media(&mut self, sref: SessionRef, section: Section, video: bool) {
        let Some(room) = self.rooms.get_mut(&sref.room) else {
            return;
        };
        let Some(p) = room.participants.get_mut(&sref.participant) else {
            return;
        };
        if p.publisher.is_bound(section) {
            return;
        }
        let Some(msid_track) = p.publisher.receiving_track_id(section) else {
            return;
        };
        let want = if video {
            TrackKind::Video
        } else {
            TrackKind::Audio
        };
        let idx = p
            .pending
            .iter()
            .position(|t| t.cid == msid_track && t.kind == want)
            .or_else(|| p.pending.iter().position(|t| t.kind == want));
        let Some(idx) = idx else {
            tracing::debug!(%section, "offered media section matches no announced track");
            return;
        };
        let pending = p.pending.remove(idx);
        p.publisher
            .bind(section, pending.track, pending.rids.clone());
        p.published.push(pending.track);
        let mut track =
            crate::track::Track::new(sref.participant, section, pending.kind, pending.rids);
        track.screen_share = pending.screen_share;
        if pending.kind == TrackKind::Audio {
            track.meter = Some(LevelMeter::new(self.speaker_settings));
        }
        room.tracks.insert(pending.track, track);
        self.stats.published_tracks += 1;
    }

    /// A publisher section stopped sending: its track ends.
    pub(super) fn section_stopped(&mut self, sref: SessionRef, section: Section) {
        let Some(room) = self.rooms.get(&sref.room) else {
            return;
        };
        let track = room
            .tracks
            .iter()
            .find(|(_, t)| t.publisher == sref.participant && t.section == section)
            .map(|(id, _)| *id);
        if let Some(track) = track {
            self.end_track(sref.room, track);
        }
    }
}

/// Rewritten copies of one packet's payload, by the VP8 fields written into them. A few
/// distinct numberings at most per packet (one per group of subscriptions that switched
/// layers at the same picture); past [`Rewritten::SLOTS`] each gets its own copy.
#[derive(Default)]
struct Rewritten {
    slots: [Option<(Vp8Fields, Arc<[u8]>)>; Rewritten::SLOTS],
}

impl Rewritten {
    const SLOTS: usize = 4;

    fn get(&mut self, fields: Vp8Fields, d: &Vp8Descriptor, payload: &Arc<[u8]>) -> Arc<[u8]> {
        let mut free = None;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot {
                Some((f, p)) if *f == fields => return p.clone(),
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        let mut copy = payload.to_vec();
        d.write(fields, &mut copy);
        let copy: Arc<[u8]> = copy.into();
        if let Some(i) = free {
            self.slots[i] = Some((fields, copy.clone()));
        }
        copy
    }
}
