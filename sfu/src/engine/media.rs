//! The packet path: binding publisher media to tracks, forwarding RTP to subscriptions,
//! keyframe requests, and data-channel relay.

use super::*;
use crate::session::{MAX_DATA_BACKLOG_BYTES, SCTP_SEND_BUFFER_BYTES};

impl Engine {
    /// Binds a media section the client offers for sending to one of its pending tracks: by
    /// msid track id (= `AddTrackRequest.cid`), else the first pending track of the same kind.
    pub(super) fn bind_media(&mut self, key: SessionKey, mid: Mid, kind: MediaKind) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        if session.mid_tracks.contains_key(&mid) {
            return;
        }
        let Some(media) = session.rtc.media(mid) else {
            return;
        };
        if !media.direction().is_receiving() {
            return;
        }
        let msid_track = media.track_id().to_string();
        let want = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let idx = session
            .pending
            .iter()
            .position(|p| p.cid == msid_track && p.kind == want)
            .or_else(|| session.pending.iter().position(|p| p.kind == want));
        let Some(idx) = idx else {
            tracing::debug!(%mid, "offered media section matches no announced track");
            return;
        };
        let pending = session.pending.remove(idx);
        session.mid_tracks.insert(mid, pending.track);
        let participant = session.participant;
        self.tracks.insert(
            pending.track,
            Track {
                publisher: participant,
                session: key,
                mid,
                kind: pending.kind,
                rids: pending.rids,
                layer_seen: [None; 3],
                last_pli: [None; 3],
                params: None,
                codec: MediaCodec::Other,
                subscribers: Vec::new(),
            },
        );
        if let Some(p) = self.participants.get_mut(&participant) {
            p.published.push(pending.track);
        }
        SfuMetrics::add(&self.metrics.published_tracks, 1);
    }

    /// The packet path: one publisher packet, fanned out to every subscription of its track.
    pub(super) fn rtp(&mut self, key: SessionKey, pkt: RtpPacket) {
        SfuMetrics::inc(&self.metrics.rtp_in);
        let now = pkt.timestamp;
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let (track_id, layer) = match session.ssrc_map.get(&ssrc) {
            Some(v) => *v,
            None => {
                let (mid, rid) = {
                    let mut api = session.rtc.direct_api();
                    let Some(rx) = api.stream_rx(&ssrc) else {
                        return;
                    };
                    (rx.mid(), rx.rid())
                };
                let Some(track_id) = session.mid_tracks.get(&mid).copied() else {
                    return;
                };
                let layer = match (rid, self.tracks.get(&track_id)) {
                    (Some(rid), Some(t)) => t
                        .rids
                        .iter()
                        .position(|r| r.as_str() == &*rid)
                        .unwrap_or(0)
                        .min(2) as u8,
                    _ => 0,
                };
                session.ssrc_map.insert(ssrc, (track_id, layer));
                (track_id, layer)
            }
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        track.layer_seen[usize::from(layer)] = Some(now);
        let pt = pkt.header.payload_type;
        if track.params.is_none_or(|p| p.pt() != pt) {
            let Some(params) = session.rtc.codec_config().find(|p| p.pt() == pt).copied() else {
                return;
            };
            let first = track.params.is_none();
            track.params = Some(params);
            track.codec = MediaCodec::from_str0m(params.spec().codec);
            if first {
                let mime = track.codec.mime(track.kind == TrackKind::Video).to_string();
                if let Some(p) = self.participants.get(&track.publisher) {
                    let _ = p.events.send(SfuEvent::TrackLive {
                        track: track_id,
                        mime,
                    });
                }
            }
        }
        let Some(params) = track.params else {
            return;
        };
        let video = track.kind == TrackKind::Video;
        let targets = track.targets(now);
        // Layers some subscription waits for a keyframe of (asked for below).
        let mut waiting = [false; 3];
        let keyframe = video && is_keyframe_start(track.codec, &pkt.payload);
        let lp = LayerPacket {
            layer,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            keyframe,
            now,
        };
        for sub_pid in &track.subscribers {
            let Some(sub) = self.subs.get_mut(&(*sub_pid, track_id)) else {
                continue;
            };
            if !sub.ready || sub.paused {
                continue;
            }
            let Some(mid) = sub.mid else { continue };
            let target = targets[usize::from(sub.max_layer)];
            let forwarded = sub.forwarder.forward(lp, target);
            if video && sub.forwarder.current_layer() != Some(target) {
                waiting[usize::from(target)] = true;
            }
            let Some(h) = forwarded else {
                continue;
            };
            let Some(out) = self.sessions.get_mut(&sub.session) else {
                continue;
            };
            let out_pt = match sub.pt_cache {
                Some((from, to)) if from == pt => to,
                _ => match out.rtc.codec_config().match_params(params) {
                    Some(p) => {
                        sub.pt_cache = Some((pt, p.pt()));
                        p.pt()
                    }
                    None => continue,
                },
            };
            let payload = pkt.payload.clone();
            let marker = pkt.header.marker;
            let written = out.guard(|rtc| {
                let mut api = rtc.direct_api();
                match api.stream_tx_by_mid(mid, None) {
                    Some(tx) => {
                        tx.write_rtp(
                            RtpWrite::new(out_pt, h.seq.into(), h.ts, now, payload)
                                .marker(marker)
                                .nackable(video),
                        );
                        true
                    }
                    None => false,
                }
            });
            match written {
                Ok(true) => {
                    SfuMetrics::inc(&self.metrics.rtp_forwarded);
                    if video {
                        SfuMetrics::inc(&self.metrics.rtp_forwarded_video);
                    }
                    self.dirty.push(sub.session);
                }
                Ok(false) => {}
                Err(_) => {
                    // Contained below, once the borrow of the track ends.
                    self.dirty.push(sub.session);
                }
            }
        }
        // A video subscription waits for a keyframe of its target layer: ask for one per
        // layer waited for (throttled per layer in `request_keyframe`).
        for (layer, wait) in waiting.iter().enumerate() {
            if *wait {
                self.request_keyframe(track_id, Some(layer as u8), KeyframeRequestKind::Pli);
            }
        }
    }

    pub(super) fn request_keyframe(
        &mut self,
        track_id: TrackId,
        layer: Option<u8>,
        kind: KeyframeRequestKind,
    ) {
        let now = Instant::now();
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let layer = layer.unwrap_or_else(|| track.target_layer(now));
        let slot = &mut track.last_pli[usize::from(layer.min(2))];
        if slot.is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL) {
            return;
        }
        *slot = Some(now);
        let rid = track
            .rids
            .get(usize::from(layer))
            .map(|r| r.as_str().into());
        let mid = track.mid;
        let key = track.session;
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let _ = session.guard(|rtc| {
            let mut api = rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(kind);
            } else if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(kind);
            }
        });
        self.dirty.push(key);
    }

    // ---------------------------------------------------------------- data

    pub(super) fn data(&mut self, from: ParticipantId, kind: DataKind, payload: &[u8]) {
        let Some(sender) = self.participants.get_mut(&from) else {
            return;
        };
        let Some(routed) = sender.router.route(kind, payload) else {
            return;
        };
        let room = sender.room.clone();
        let Some(members) = self.rooms.get(&room) else {
            return;
        };
        let mut to_flush = Vec::new();
        for pid in members {
            if *pid == from {
                continue;
            }
            let Some(p) = self.participants.get(pid) else {
                continue;
            };
            if !routed.destinations.is_empty()
                && !routed.destinations.iter().any(|d| **d == *p.identity)
            {
                continue;
            }
            // Downstream data goes on the subscriber PC when there is one, else back on the
            // client's own channels.
            let target = p
                .subscriber
                .and_then(|k| {
                    self.sessions
                        .get(&k)
                        .and_then(|s| s.channel_for(kind).map(|c| (k, c)))
                })
                .or_else(|| {
                    self.sessions
                        .get(&p.publisher)
                        .and_then(|s| s.channel_for(kind).map(|c| (p.publisher, c)))
                });
            let Some((key, channel)) = target else {
                continue;
            };
            if let Some(s) = self.sessions.get_mut(&key) {
                let queued = s.data_backlog_bytes + routed.payload.len();
                if kind == DataKind::Reliable && queued <= MAX_DATA_BACKLOG_BYTES {
                    s.data_backlog_bytes = queued;
                    s.data_backlog.push_back((channel, routed.payload.clone()));
                    to_flush.push(key);
                } else if kind == DataKind::Lossy && s.data_backlog.is_empty() {
                    let sent = s.guard(|rtc| {
                        rtc.channel(channel).is_some_and(|mut ch| {
                            matches!(ch.write(true, &routed.payload), Ok(true))
                        })
                    });
                    if !matches!(sent, Ok(true)) {
                        SfuMetrics::inc(&self.metrics.data_dropped);
                    }
                    self.dirty.push(key);
                } else {
                    SfuMetrics::inc(&self.metrics.data_dropped);
                }
            }
        }
        for key in to_flush {
            self.flush_data(key);
        }
    }

    /// Writes a session's queued reliable data until SCTP's send buffer is full; the rest goes
    /// when str0m reports the buffer drained (`ChannelBufferedAmountLow`).
    pub(super) fn flush_data(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        while let Some((channel, payload)) = s.data_backlog.pop_front() {
            let outcome = s.guard(|rtc| match rtc.channel(channel) {
                Some(mut ch) => match ch.write(true, &payload) {
                    Ok(true) => Some(true),
                    Ok(false) => {
                        ch.set_buffered_amount_low_threshold(SCTP_SEND_BUFFER_BYTES / 2);
                        Some(false)
                    }
                    Err(_) => None,
                },
                None => None,
            });
            match outcome {
                // Buffer full: keep the message first in line until the buffer drains.
                Ok(Some(false)) => {
                    s.data_backlog.push_front((channel, payload));
                    break;
                }
                Ok(Some(true)) => {}
                // Channel gone or message refused: drop it.
                Ok(None) | Err(_) => SfuMetrics::inc(&self.metrics.data_dropped),
            }
            s.data_backlog_bytes -= payload.len();
        }
        self.dirty.push(key);
    }
}
