//! Entering the room: the participant's description from its token, its place in the roster
//! (replacing an older session with the same identity) and in the SFU (peer-connection
//! layout, data routing), the `JoinResponse`, what a `/rtc/v1` client bundled in its join
//! request, and subscriptions to tracks the roster says to take.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{JoinParams, PcLayout, SfuEvent};
use tokio::sync::mpsc;

use super::{
    client_configuration, server_info, End, Inbox, Session, SignalError, Step, PING_INTERVAL_S,
    PING_TIMEOUT_S, SERVER_VERSION,
};
use crate::livekit::data::LiveKitDataRouter;
use crate::livekit::link::SignalLink;
use crate::livekit::render::{self, LiveKitParticipant};
use crate::rooms::{AdapterData, NewMember, Participant, ParticipantState, PublishedTrack};

impl Session {
    /// Registers the participant in its room and in the SFU; returns the `JoinResponse` and
    /// the live tracks to subscribe to once it is sent.
    pub(super) fn join(
        &mut self,
        inbox: mpsc::UnboundedSender<Inbox>,
        sfu_events: mpsc::UnboundedSender<SfuEvent>,
    ) -> Result<(Resp, Vec<PublishedTrack>), End> {
        let c = &self.grant.claims;
        let participant = Participant {
            id: self.pid,
            sid: self.sid.clone(),
            identity: c.sub.as_str().into(),
            name: c.name.clone(),
            metadata: c.metadata.clone(),
            attributes: c.attributes.clone().into_iter().collect(),
            state: ParticipantState::Joined,
            joined_at: SystemTime::now(),
            version: 1,
            permissions: self.perms.clone(),
            kind: render::kind_from_name(&c.kind),
            tracks: Vec::new(),
            is_publisher: false,
            adapter: AdapterData::new(LiveKitParticipant {
                client_protocol: self.opts.client_protocol,
            }),
        };
        let hidden = self.perms.hidden;
        // in the session table before the roster, so a resume finds it as soon as others can
        self.state.livekit.sessions.insert(self.pid, inbox.clone());
        let joined = self.state.rooms.join(
            &self.room,
            NewMember {
                participant,
                auto_subscribe: self.opts.auto_subscribe && self.perms.can_subscribe,
                inbox: Box::new(inbox),
            },
        );
        if joined.replaced {
            tracing::info!("previous session with the same identity replaced");
        }
        let router = LiveKitDataRouter {
            sid: self.sid.to_string(),
            identity: if hidden { String::new() } else { c.sub.clone() },
            can_publish_data: self.perms.can_publish_data,
            last_reliable_seq: 0,
            malformed: Arc::new(AtomicU64::new(0)),
        };
        let layout = if self.opts.single_pc {
            PcLayout::Single
        } else if self.perms.can_subscribe {
            PcLayout::Dual
        } else {
            PcLayout::PublishOnly
        };
        self.sfu()
            .join(JoinParams {
                participant: self.pid,
                room: self.room.as_str().into(),
                identity: c.sub.as_str().into(),
                events: sfu_events,
                data_router: Box::new(router),
                layout,
            })
            .map_err(|e| End::Failed(SignalError::Join(e)))?;
        tracing::info!(
            identity = %c.sub,
            path = if self.opts.single_pc { "/rtc/v1" } else { "/rtc" },
            protocol = self.opts.protocol,
            "participant joined"
        );
        let resp = Resp::Join(proto::JoinResponse {
            room: Some(render::room(&joined.room)),
            participant: Some(render::participant_info(&joined.participant)),
            other_participants: joined
                .others
                .iter()
                .map(|p| render::participant_info(p))
                .collect(),
            server_version: SERVER_VERSION.into(),
            subscriber_primary: layout == PcLayout::Dual,
            fast_publish: layout == PcLayout::Single && self.perms.can_publish,
            client_configuration: Some(client_configuration()),
            ping_timeout: PING_TIMEOUT_S,
            ping_interval: PING_INTERVAL_S,
            server_info: Some(server_info()),
            ..Default::default()
        });
        Ok((resp, joined.subscribe))
    }

    /// The tracks and offer a `/rtc/v1` client put in its `JoinRequest`, handled as if sent.
    pub(super) async fn initial_requests(
        &mut self,
        jr: proto::JoinRequest,
        link: &mut SignalLink,
    ) -> Step {
        for add in jr.add_track_requests {
            self.add_track(add, link).await;
        }
        if let Some(offer) = jr.publisher_offer {
            let req = proto::SignalRequest {
                message: Some(Req::Offer(offer)),
            };
            self.request(req, link).await?;
        }
        Ok(())
    }

    /// Subscribes to another participant's track (msid `PA_…|TR_… TR_…`, LiveKit's form).
    pub(super) fn subscribe(&self, t: &PublishedTrack) -> Step {
        self.sfu().subscribe(
            self.pid,
            t.track.media,
            format!("{}|{}", t.publisher_sid, t.track.sid),
            t.track.sid.to_string(),
        )?;
        Ok(())
    }
}
