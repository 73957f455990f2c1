//! The packet path: a publisher's RTP packet fanned out to every subscription of its track
//! (the forwarder rewrites sequence number and timestamp, the subscriber's session maps the
//! payload type and encrypts), keyframe requests, and data-channel relay within a room.
//!
//! Per packet: no allocation in our code (the payload is shared), no lock, no channel hop, no
//! log line; counters are plain integers of the core.

use crate::codec::is_keyframe_start;
use crate::forwarder::LayerPacket;
use crate::layer::{Layer, PerLayer};
use crate::room::Room;
use crate::session::{KeyframeKind, RtpIn, Section};
use crate::speakers::LevelMeter;
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
        track.saw(pkt.layer, now);
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
        let keyframe = video && is_keyframe_start(codec.media_codec(), &pkt.payload);
        let lp = LayerPacket {
            layer: pkt.layer,
            seq: pkt.seq,
            ts: pkt.ts,
            keyframe,
            now,
        };
        // Layers some subscription waits for a keyframe of (asked for below).
        let mut waiting = PerLayer([false; 3]);
        let mut panicked: Option<SessionRef> = None;
        let (mut forwarded, mut forwarded_video) = (0u64, 0u64);
        for sub in &mut track.subscriptions {
            if !sub.ready || sub.paused {
                continue;
            }
            let Some(section) = sub.section else { continue };
            let target = targets[sub.max_layer];
            let header = sub.forwarder.forward(lp, target);
            if video && sub.forwarder.current_layer() != Some(target) {
                waiting[target] = true;
            }
            let Some(h) = header else { continue };
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
                pkt.payload.clone(),
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
        if let Some(s) = panicked {
            self.session_panicked(s);
        }
    }

    /// Asks a track's publisher for a keyframe of `layer` (default: the highest flowing one),
    /// at most once per `PLI_INTERVAL` per layer.
    pub(super) fn request_keyframe(
        &mut self,
        room: RoomKey,
        track_id: TrackId,
        layer: Option<Layer>,
        kind: KeyframeKind,
    ) {
        let now = self.now;
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(track) = r.tracks.get_mut(&track_id) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let layer = layer.unwrap_or_else(|| track.targets(now)[Layer::High]);
        if !track.keyframe_request_due(layer, now) {
            return;
        }
        let section = track.section;
        let publisher = track.publisher;
        let rid = track.rid(layer).map(str::to_string);
        let Some(p) = r.participants.get_mut(&publisher) else {
            return;
        };
        let sref = SessionRef {
            room,
            participant: publisher,
            role: PeerRole::Publisher,
        };
        if p.publisher
            .request_keyframe(section, rid.as_deref(), kind)
            .is_err()
        {
            self.session_panicked(sref);
            return;
        }
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
