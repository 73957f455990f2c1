//! Client requests (`SignalRequest`), one by one: SDP and ICE to the SFU, track publication
//! and mute (to `publish.rs`), subscriptions and their settings (layer caps, pause), pings,
//! metadata updates, `leave`. A request the SFU cannot take ends the session
//! ([`super::SignalError::Media`]); one the client may not make is answered with
//! `RequestResponse`.

use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{Layer, PeerRole, PendingTrack};

use super::{encode, now_ms, End, Session, Step};
use crate::ids::TrackSid;
use crate::livekit::link::SignalLink;
use crate::rooms::{MetadataUpdate, TrackSource, VideoLayer};

impl Session {
    /// Handles one client request.
    pub(super) async fn request(
        &mut self,
        req: proto::SignalRequest,
        link: &mut SignalLink,
    ) -> Step {
        let Some(msg) = req.message else {
            return Ok(());
        };
        match msg {
            Req::Offer(sd) => {
                self.offer_ids.push_back(sd.id);
                let pending = self
                    .tracks
                    .values()
                    .filter(|t| !t.live)
                    .map(|t| PendingTrack {
                        track: t.track.media,
                        cid: t.track.cid.clone(),
                        kind: t.track.kind,
                        rids: t.rids.clone(),
                        screen_share: t.track.source == TrackSource::ScreenShare,
                    })
                    .collect();
                self.sfu().offer(self.pid, sd.sdp, pending)?;
            }
            Req::Answer(sd) => self.sfu().answer(self.pid, sd.sdp)?,
            Req::Trickle(t) => self.trickle(t)?,
            Req::AddTrack(add) => self.add_track(add, link).await,
            Req::Mute(m) => self.set_muted(&TrackSid::from(m.sid), m.muted),
            Req::Subscription(sub) => self.update_subscription(sub)?,
            Req::TrackSetting(ts) => self.track_settings(ts)?,
            Req::Leave(_) => return Err(End::Client),
            Req::Ping(_) => link.send(encode(Resp::Pong(now_ms()))).await,
            Req::PingReq(p) => {
                let pong = proto::Pong {
                    last_ping_timestamp: p.timestamp,
                    timestamp: now_ms(),
                };
                link.send(encode(Resp::PongResp(pong))).await;
            }
            Req::UpdateMetadata(u) => self.update_metadata(u, link).await,
            _ => {}
        }
        Ok(())
    }

    /// A trickled ICE candidate (`candidate_init` is the browser's `RTCIceCandidateInit` JSON).
    fn trickle(&self, t: proto::TrickleRequest) -> Step {
        #[derive(serde::Deserialize)]
        struct Init {
            #[serde(default)]
            candidate: String,
        }
        let role = if t.target == proto::SignalTarget::Subscriber as i32 {
            PeerRole::Subscriber
        } else {
            PeerRole::Publisher
        };
        match serde_json::from_str::<Init>(&t.candidate_init) {
            // an empty candidate is the end-of-candidates marker
            Ok(init) if init.candidate.is_empty() => {}
            Ok(init) => self.sfu().candidate(self.pid, role, init.candidate)?,
            Err(e) => tracing::debug!(error = %e, "ignored unreadable trickle candidate"),
        }
        Ok(())
    }

    fn update_subscription(&self, sub: proto::UpdateSubscription) -> Step {
        if !self.perms.can_subscribe {
            return Ok(());
        }
        let mut sids: Vec<String> = sub.track_sids;
        for pt in sub.participant_tracks {
            sids.extend(pt.track_sids);
        }
        for tsid in sids {
            let Some(t) = self
                .state
                .rooms
                .find_track(&self.room, &TrackSid::from(tsid))
            else {
                continue;
            };
            if t.publisher == self.pid {
                continue;
            }
            if sub.subscribe {
                self.subscribe(&t)?;
            } else {
                self.sfu().unsubscribe(self.pid, t.track.media)?;
            }
        }
        Ok(())
    }

    /// `UpdateTrackSettings`: pause (`disabled`, quality `OFF`) and the layer cap.
    fn track_settings(&self, ts: proto::UpdateTrackSettings) -> Step {
        for tsid in &ts.track_sids {
            let Some(t) = self
                .state
                .rooms
                .find_track(&self.room, &TrackSid::from(tsid.as_str()))
            else {
                continue;
            };
            let media = t.track.media;
            let off = ts.quality == proto::VideoQuality::Off as i32;
            self.sfu().set_paused(self.pid, media, ts.disabled || off)?;
            if let Some(layer) = max_layer(&t.track.layers, &ts) {
                self.sfu().set_max_layer(self.pid, media, layer)?;
            }
        }
        Ok(())
    }

    async fn update_metadata(&self, u: proto::UpdateParticipantMetadata, link: &mut SignalLink) {
        if !self.perms.can_update_metadata {
            let rr = proto::RequestResponse {
                request_id: u.request_id,
                reason: proto::request_response::Reason::NotAllowed as i32,
                message: "no canUpdateOwnMetadata grant".into(),
                ..Default::default()
            };
            link.send(encode(Resp::RequestResponse(rr))).await;
            return;
        }
        let update = MetadataUpdate {
            name: Some(u.name).filter(|n| !n.is_empty()),
            metadata: Some(u.metadata).filter(|m| !m.is_empty()),
            attributes: u.attributes,
        };
        self.state
            .rooms
            .update_metadata(&self.room, self.pid, update);
    }
}

/// The simulcast layer cap an `UpdateTrackSettings` asks for, as an index into the track's
/// layers sorted by quality (the media plane's `Layer`). Dimensions win over
/// `quality`: the smallest layer at least `width` × `height`, else the largest (LiveKit
/// `UpdateTrackSettings`; livekit-client sends its video element's size with adaptive
/// stream). `None` for a track without simulcast layers.
fn max_layer(layers: &[VideoLayer], ts: &proto::UpdateTrackSettings) -> Option<Layer> {
    if layers.len() < 2 {
        return None;
    }
    let mut sorted: Vec<&VideoLayer> = layers.iter().collect();
    sorted.sort_by_key(|l| l.quality);
    let last = sorted.len() - 1;
    let index = if ts.width > 0 || ts.height > 0 {
        sorted
            .iter()
            .position(|l| l.width >= ts.width && l.height >= ts.height)
            .unwrap_or(last)
    } else {
        sorted
            .iter()
            .rposition(|l| l.quality <= ts.quality)
            .unwrap_or(0)
    };
    Some(Layer::from_index(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<VideoLayer> {
        [(2, 1280, 720), (0, 320, 180), (1, 640, 360)]
            .iter()
            .map(|&(quality, width, height)| VideoLayer {
                quality,
                width,
                height,
                ..Default::default()
            })
            .collect()
    }

    fn settings(
        quality: proto::VideoQuality,
        width: u32,
        height: u32,
    ) -> proto::UpdateTrackSettings {
        proto::UpdateTrackSettings {
            quality: quality as i32,
            width,
            height,
            ..Default::default()
        }
    }

    #[test]
    fn quality_caps_the_layer() {
        use proto::VideoQuality::*;
        assert_eq!(max_layer(&layers(), &settings(Low, 0, 0)), Some(Layer::Low));
        assert_eq!(
            max_layer(&layers(), &settings(Medium, 0, 0)),
            Some(Layer::Medium)
        );
        assert_eq!(
            max_layer(&layers(), &settings(High, 0, 0)),
            Some(Layer::High)
        );
    }

    #[test]
    fn dimensions_pick_the_smallest_layer_that_covers_them() {
        use proto::VideoQuality::*;
        assert_eq!(
            max_layer(&layers(), &settings(High, 300, 170)),
            Some(Layer::Low)
        );
        assert_eq!(
            max_layer(&layers(), &settings(Low, 321, 180)),
            Some(Layer::Medium)
        );
        assert_eq!(
            max_layer(&layers(), &settings(Low, 1920, 1080)),
            Some(Layer::High)
        );
    }

    #[test]
    fn a_track_without_simulcast_is_not_capped() {
        let one = vec![VideoLayer::default()];
        assert_eq!(
            max_layer(&one, &settings(proto::VideoQuality::Low, 0, 0)),
            None
        );
        assert_eq!(
            max_layer(&[], &settings(proto::VideoQuality::Low, 0, 0)),
            None
        );
    }
}
