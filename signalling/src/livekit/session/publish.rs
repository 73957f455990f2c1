//! The participant's own tracks: `AddTrackRequest` (checked against its grant, answered with
//! `TrackPublishedResponse`), mute, and the SFU's word that a track's media started or ended,
//! which publishes or unpublishes it in the roster.

use livekit_protocol as proto;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{TrackId, TrackKind};

use super::{encode, OwnTrack, Session};
use crate::ids::TrackSid;
use crate::livekit::link::SignalLink;
use crate::livekit::render;

impl Session {
    /// Announces a track the client is about to publish; refused with `RequestResponse`
    /// when its type is not audio or video or the grant does not allow it.
    pub(super) async fn add_track(&mut self, add: proto::AddTrackRequest, link: &mut SignalLink) {
        let kind = match proto::TrackType::try_from(add.r#type) {
            Ok(proto::TrackType::Audio) => TrackKind::Audio,
            Ok(proto::TrackType::Video) => TrackKind::Video,
            _ => {
                let rr = refusal(
                    &add,
                    proto::request_response::Reason::UnsupportedType,
                    "only audio and video tracks",
                );
                link.send(encode(Resp::RequestResponse(rr))).await;
                return;
            }
        };
        let source = render::source_of(add.source);
        let source_ok = self.perms.can_publish_sources.is_empty()
            || self.perms.can_publish_sources.contains(&source);
        if !self.perms.can_publish || !source_ok {
            let rr = refusal(
                &add,
                proto::request_response::Reason::NotAllowed,
                "not allowed to publish",
            );
            link.send(encode(Resp::RequestResponse(rr))).await;
            return;
        }
        if let Some(t) = self.tracks.get(&add.cid) {
            let resp = proto::TrackPublishedResponse {
                cid: add.cid.clone(),
                track: Some(render::track_info(&t.track)),
            };
            link.send(encode(Resp::TrackPublished(resp))).await;
            return;
        }
        let track = render::track_from_request(&add, kind, TrackSid::generate(), TrackId::next());
        let rids: Vec<String> = if kind == TrackKind::Video && track.layers.len() > 1 {
            track
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if l.rid.is_empty() {
                        ["q", "h", "f"].get(i).copied().unwrap_or("f").to_string()
                    } else {
                        l.rid.clone()
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let resp = proto::TrackPublishedResponse {
            cid: add.cid.clone(),
            track: Some(render::track_info(&track)),
        };
        self.tracks.insert(
            add.cid,
            OwnTrack {
                track,
                rids,
                live: false,
            },
        );
        link.send(encode(Resp::TrackPublished(resp))).await;
    }

    /// The client (un)muted one of its tracks.
    pub(super) fn set_muted(&mut self, sid: &TrackSid, muted: bool) {
        let Some(t) = self.tracks.values_mut().find(|t| t.track.sid == *sid) else {
            return;
        };
        t.track.muted = muted;
        self.state
            .rooms
            .set_track_muted(&self.room, self.pid, sid, muted);
    }

    /// A published track's first packet arrived: it goes live in the roster, which announces
    /// it and lets everyone subscribe.
    pub(super) fn track_live(&mut self, media: TrackId, mime: String) {
        let Some(t) = self.tracks.values_mut().find(|t| t.track.media == media) else {
            return;
        };
        t.live = true;
        t.track.mime = mime;
        let track = t.track.clone();
        let (sid, mime) = (track.sid.clone(), track.mime.clone());
        self.state.rooms.publish_track(&self.room, self.pid, track);
        tracing::info!(track = %sid, %mime, "track published");
    }

    /// A published track's media section went away: it leaves the roster.
    pub(super) fn track_ended(&mut self, media: TrackId) {
        let Some(cid) = self
            .tracks
            .iter()
            .find(|(_, t)| t.track.media == media)
            .map(|(c, _)| c.clone())
        else {
            return;
        };
        let Some(t) = self.tracks.remove(&cid) else {
            return;
        };
        self.state
            .rooms
            .unpublish_track(&self.room, self.pid, &t.track.sid);
        tracing::info!(track = %t.track.sid, "track unpublished");
    }
}

fn refusal(
    add: &proto::AddTrackRequest,
    reason: proto::request_response::Reason,
    message: &str,
) -> proto::RequestResponse {
    proto::RequestResponse {
        reason: reason as i32,
        message: message.into(),
        request: Some(proto::request_response::Request::AddTrack(add.clone())),
        ..Default::default()
    }
}
