//! Media-plane events to LiveKit messages: SDP answers and offers (with `mid_to_track_id`),
//! `MediaSectionsRequirement`, failed negotiations, tracks going live or ending, the peer
//! connection that makes the participant `ACTIVE`, media failures that end the session, and
//! dynacast's `SubscribedQualityUpdate` to a publisher, the room's active speakers
//! (`SpeakersChanged`) and connection qualities (`ConnectionQualityUpdate`).

use std::collections::HashMap;

use livekit_protocol as proto;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{
    ConnectionQuality, Layer, PeerRole, PerLayer, QualityUpdate, SfuEvent, Speaker, TrackId,
};

use super::{encode, End, Session, Step};
use crate::livekit::link::SignalLink;
use crate::rooms::LeaveReason;

impl Session {
    /// Handles one media-plane event.
    pub(super) async fn sfu_event(&mut self, ev: SfuEvent, link: &mut SignalLink) -> Step {
        match ev {
            SfuEvent::Answer {
                sdp, mid_to_track, ..
            } => {
                let id = self.offer_ids.pop_front().unwrap_or(0);
                let sd = proto::SessionDescription {
                    r#type: "answer".into(),
                    sdp,
                    id,
                    mid_to_track_id: self.track_sids(&mid_to_track),
                };
                link.send(encode(Resp::Answer(sd))).await;
            }
            SfuEvent::Offer { sdp, mid_to_track } => {
                let id = self.next_offer_id;
                self.next_offer_id = self.next_offer_id.wrapping_add(1);
                let sd = proto::SessionDescription {
                    r#type: "offer".into(),
                    sdp,
                    id,
                    mid_to_track_id: self.track_sids(&mid_to_track),
                };
                link.send(encode(Resp::Offer(sd))).await;
            }
            SfuEvent::NeedOffer { audio, video } => {
                let req = proto::MediaSectionsRequirement {
                    num_audios: audio,
                    num_videos: video,
                };
                link.send(encode(Resp::MediaSectionsRequirement(req))).await;
            }
            SfuEvent::NegotiationFailed { role, reason } => {
                tracing::warn!(?role, %reason, "negotiation failed");
                if role == PeerRole::Publisher {
                    self.offer_ids.pop_front();
                }
            }
            SfuEvent::TrackLive { track, mime } => self.track_live(track, mime),
            SfuEvent::StreamPaused { track, paused } => {
                if let Some(update) = self.stream_state(track, paused) {
                    link.send(encode(Resp::StreamStateUpdate(update))).await;
                }
            }
            SfuEvent::TrackEnded { track } => self.track_ended(track),
            SfuEvent::SubscribedLayers { track, layers } => {
                // Not before the codec is known: livekit-client would take a codec name it
                // does not publish for a request to publish a backup codec.
                let Some(t) = self
                    .tracks
                    .values()
                    .find(|t| t.track.media == track && !t.track.mime.is_empty())
                else {
                    return Ok(());
                };
                let update = quality_update(t.track.sid.to_string(), &t.track.mime, layers);
                tracing::info!(track = %t.track.sid, ?layers, "subscribed quality update");
                link.send(encode(Resp::SubscribedQualityUpdate(update)))
                    .await;
            }
            SfuEvent::Connected { role } => {
                let primary = if self.perms.can_subscribe && !self.opts.single_pc {
                    PeerRole::Subscriber
                } else {
                    PeerRole::Publisher
                };
                if role == primary && !self.active {
                    self.active = true;
                    self.state.rooms.mark_active(&self.room, self.pid);
                }
            }
            SfuEvent::Failed {
                reason, by_peer, ..
            } => {
                if by_peer {
                    tracing::info!(%reason, "client closed its peer connection");
                    return Err(End::Client);
                }
                tracing::info!(%reason, "media failed");
                return Err(End::Server(LeaveReason::MediaFailure));
            }
            SfuEvent::SpeakersChanged { speakers } => {
                if let Some(msg) = self.speakers_changed(&speakers) {
                    link.send(encode(Resp::SpeakersChanged(msg))).await;
                }
            }
            SfuEvent::ConnectionQuality { updates } => {
                if let Some(msg) = self.connection_quality(&updates) {
                    link.send(encode(Resp::ConnectionQuality(msg))).await;
                }
            }
        }
        Ok(())
    }

    /// LiveKit `StreamStateUpdate` for a subscribed track paused or resumed by the subscriber's
    /// bandwidth; `None` if the track is gone from the roster.
    fn stream_state(&self, track: TrackId, paused: bool) -> Option<proto::StreamStateUpdate> {
        let sid = self
            .state
            .rooms
            .track_sids(&self.room, &[track])
            .remove(&track)?;
        let published = self.state.rooms.find_track(&self.room, &sid)?;
        let state = if paused {
            proto::StreamState::Paused
        } else {
            proto::StreamState::Active
        };
        Some(proto::StreamStateUpdate {
            stream_states: vec![proto::StreamStateInfo {
                participant_sid: published.publisher_sid.to_string(),
                track_sid: sid.to_string(),
                state: state as i32,
            }],
        })
    }

    /// `SpeakersChanged` for this participant: the media plane's changes with the roster's
    /// sids, the participant itself included, hidden others left out (`livekit-protocol.md`
    /// §7.5, §12.8). A speaker who stopped because it left is no longer in the roster: its
    /// sid is the one announced before. Protocol 2 and older clients took speakers in data
    /// packets: they get nothing.
    fn speakers_changed(&mut self, speakers: &[Speaker]) -> Option<proto::SpeakersChanged> {
        if self.opts.protocol <= 2 {
            return None;
        }
        let pids: Vec<_> = speakers.iter().map(|s| s.participant).collect();
        let sids = self
            .state
            .rooms
            .participant_sids(&self.room, self.pid, &pids);
        let speakers: Vec<proto::SpeakerInfo> = speakers
            .iter()
            .filter_map(|s| {
                let sid = if s.active {
                    let sid = sids.get(&s.participant)?;
                    self.speaking.insert(s.participant, sid.clone());
                    sid.clone()
                } else {
                    self.speaking.remove(&s.participant)?
                };
                Some(proto::SpeakerInfo {
                    sid: sid.to_string(),
                    level: s.level,
                    active: s.active,
                })
            })
            .collect();
        (!speakers.is_empty()).then_some(proto::SpeakersChanged { speakers })
    }

    /// `ConnectionQualityUpdate` for this participant: itself and everyone it may see, with
    /// the roster's sids (`livekit-protocol.md` §12.9).
    fn connection_quality(
        &self,
        updates: &[QualityUpdate],
    ) -> Option<proto::ConnectionQualityUpdate> {
        let pids: Vec<_> = updates.iter().map(|u| u.participant).collect();
        let sids = self
            .state
            .rooms
            .participant_sids(&self.room, self.pid, &pids);
        let updates: Vec<proto::ConnectionQualityInfo> = updates
            .iter()
            .filter_map(|u| {
                let sid = sids.get(&u.participant)?;
                let quality = match u.quality {
                    ConnectionQuality::Excellent => proto::ConnectionQuality::Excellent,
                    ConnectionQuality::Good => proto::ConnectionQuality::Good,
                    ConnectionQuality::Poor => proto::ConnectionQuality::Poor,
                    ConnectionQuality::Lost => proto::ConnectionQuality::Lost,
                };
                Some(proto::ConnectionQualityInfo {
                    participant_sid: sid.to_string(),
                    quality: quality as i32,
                    score: u.score,
                })
            })
            .collect();
        (!updates.is_empty()).then_some(proto::ConnectionQualityUpdate { updates })
    }

    /// `mid → TR_ sid` for `SessionDescription.mid_to_track_id`.
    fn track_sids(&self, mid_to_track: &[(String, TrackId)]) -> HashMap<String, String> {
        if mid_to_track.is_empty() {
            return HashMap::new();
        }
        let media: Vec<TrackId> = mid_to_track.iter().map(|(_, t)| *t).collect();
        let sids = self.state.rooms.track_sids(&self.room, &media);
        mid_to_track
            .iter()
            .filter_map(|(mid, t)| sids.get(t).map(|sid| (mid.clone(), sid.to_string())))
            .collect()
    }
}

/// LiveKit `SubscribedQualityUpdate` for a track whose codec is `mime` (`video/VP8`): one
/// `SubscribedQuality` per layer, in the legacy list and under the codec's lower-case name
/// (`vp8`), which livekit-client compares with the codec it publishes (a name it does not
/// publish would make it start publishing that codec as a backup).
fn quality_update(
    track_sid: String,
    mime: &str,
    layers: PerLayer<bool>,
) -> proto::SubscribedQualityUpdate {
    let qualities: Vec<proto::SubscribedQuality> = Layer::ALL
        .into_iter()
        .map(|l| proto::SubscribedQuality {
            quality: video_quality(l) as i32,
            enabled: layers[l],
        })
        .collect();
    let codec = mime
        .rsplit_once('/')
        .map_or(mime, |(_, c)| c)
        .to_ascii_lowercase();
    #[allow(deprecated)] // `subscribed_qualities`: read by clients older than multi-codec
    proto::SubscribedQualityUpdate {
        track_sid,
        subscribed_qualities: qualities.clone(),
        subscribed_codecs: vec![proto::SubscribedCodec { codec, qualities }],
    }
}

/// The LiveKit quality of a simulcast layer (rid `q`/`h`/`f`).
fn video_quality(layer: Layer) -> proto::VideoQuality {
    match layer {
        Layer::Low => proto::VideoQuality::Low,
        Layer::Medium => proto::VideoQuality::Medium,
        Layer::High => proto::VideoQuality::High,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_update_lists_each_layer_under_the_lower_case_codec() {
        let u = quality_update("TR_x".into(), "video/VP8", PerLayer([true, false, false]));
        assert_eq!(u.track_sid, "TR_x");
        assert_eq!(u.subscribed_codecs.len(), 1);
        let c = &u.subscribed_codecs[0];
        assert_eq!(c.codec, "vp8");
        let got: Vec<(i32, bool)> = c.qualities.iter().map(|q| (q.quality, q.enabled)).collect();
        assert_eq!(
            got,
            [
                (proto::VideoQuality::Low as i32, true),
                (proto::VideoQuality::Medium as i32, false),
                (proto::VideoQuality::High as i32, false),
            ]
        );
        #[allow(deprecated)]
        let legacy = &u.subscribed_qualities;
        assert_eq!(legacy, &c.qualities);
    }
}
