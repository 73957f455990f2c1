//! Resuming a session (`reconnect=1`, `livekit-protocol.md` §7.3): a dropped WebSocket
//! detaches the session (which stays in the room for [`super::RESUME_WINDOW`]); a resuming
//! client's new WebSocket is handed to that session's task, which answers
//! `ReconnectResponse`, replays what queued meanwhile and sends everyone's current state. A
//! connection with nothing to resume is told to rejoin.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocket;
use livekit_protocol as proto;
use proto::signal_response::Message as Resp;
use tokio::sync::mpsc;

use super::{client_configuration, encode, server_info, ConnectOptions, End, Inbox, Session, Step};
use crate::ids::RoomName;
use crate::livekit::link::SignalLink;
use crate::livekit::render;
use crate::token::JoinGrant;
use crate::AppState;

/// Counts of signalling drops and resumes (`switchboard_signal_*` in `/metrics`).
#[derive(Debug, Default)]
pub struct ResumeCounters {
    /// Sessions whose WebSocket is gone, waiting for a resume (gauge, kept by `SignalLink`).
    pub detached: Arc<AtomicI64>,
    /// Resumes that continued a session.
    pub resumed: AtomicU64,
    /// `reconnect=1` connections with nothing to resume (told to rejoin).
    pub refused: AtomicU64,
}

/// A resuming client's new WebSocket, on its way to the session it resumes.
#[derive(Debug)]
pub struct Resumption {
    pub(super) socket: WebSocket,
    grant: JoinGrant,
    opts: ConnectOptions,
}

/// Gives a `reconnect=1` connection to the live session of the same identity (and sid, when
/// the client names it) in the token's room. Without one, the client is told to rejoin from
/// scratch: `leave{STATE_MISMATCH, RECONNECT}`, LiveKit's answer for a session it cannot resume.
pub(super) async fn hand_over(
    state: &AppState,
    socket: WebSocket,
    grant: JoinGrant,
    opts: ConnectOptions,
) {
    let room = RoomName::from(grant.room());
    let inbox = state
        .rooms
        .find_identity(&room, &grant.identity().into())
        .filter(|p| {
            opts.resume_sid
                .as_ref()
                .is_none_or(|sid| p.sid == *sid.as_str())
        })
        .and_then(|p| state.livekit.sessions.get(p.id));
    let socket = match inbox {
        Some(inbox) => {
            let r = Resumption {
                socket,
                grant,
                opts,
            };
            match inbox.send(Inbox::Resume(Box::new(r))) {
                Ok(()) => return,
                // the session ended in the meantime
                Err(mpsc::error::SendError(Inbox::Resume(r))) => r.socket,
                // only a resume was sent
                Err(mpsc::error::SendError(Inbox::Room(_))) => return,
            }
        }
        None => socket,
    };
    refuse(state, socket).await;
}

/// Tells a resuming client there is nothing to resume: `leave{STATE_MISMATCH, RECONNECT}`
/// and close; it rejoins from scratch.
pub(super) async fn refuse(state: &AppState, socket: WebSocket) {
    tracing::info!("nothing to resume; told the client to rejoin");
    state.livekit.resumes.refused.fetch_add(1, Relaxed);
    let mut link = SignalLink::new(socket, None);
    refuse_on(&mut link).await;
}

async fn refuse_on(link: &mut SignalLink) {
    #[allow(deprecated)] // `can_reconnect` for clients older than protocol 13
    let leave = proto::LeaveRequest {
        reason: proto::DisconnectReason::StateMismatch as i32,
        action: proto::leave_request::Action::Reconnect as i32,
        can_reconnect: true,
        ..Default::default()
    };
    link.send(encode(Resp::Leave(leave))).await;
    link.close(None).await;
}

impl Session {
    /// The WebSocket closed without `leave`: keep the participant (media keeps flowing) for
    /// a resume within [`super::RESUME_WINDOW`].
    pub(super) fn detach(&mut self, link: &mut SignalLink) {
        if link.detached_for().is_none() {
            tracing::info!("signalling connection lost; waiting for a resume");
        }
        link.detach();
    }

    /// Takes over a resuming client's WebSocket: answers `ReconnectResponse`, sends what
    /// queued while it was away, then everyone's current `ParticipantUpdate`. The client
    /// follows with `sync_state` (nothing to restore: the session never went away) and, if
    /// its transport broke, an ICE-restart offer. Ends the session when messages for the
    /// client were lost.
    pub(super) async fn resume(&mut self, r: Resumption, link: &mut SignalLink) -> Step {
        if r.opts.single_pc != self.opts.single_pc || link.overflowed() {
            // a session cannot change its peer-connection layout, nor go on with a gap in
            // what its client was told
            tracing::info!(
                overflowed = link.overflowed(),
                "resume refused (other signalling path, or too much missed)"
            );
            let mut other = SignalLink::new(r.socket, None);
            refuse_on(&mut other).await;
            self.state.livekit.resumes.refused.fetch_add(1, Relaxed);
            return if link.overflowed() {
                Err(End::Abandoned)
            } else {
                Ok(())
            };
        }
        self.state.livekit.resumes.resumed.fetch_add(1, Relaxed);
        link.attach(r.socket).await;
        self.grant = r.grant;
        self.last_heard = Instant::now();
        let reconnect = proto::ReconnectResponse {
            ice_servers: Vec::new(),
            client_configuration: Some(client_configuration()),
            server_info: Some(server_info()),
            last_message_seq: 0,
        };
        link.send(encode(Resp::Reconnect(reconnect))).await;
        link.flush().await;
        let everyone = self
            .state
            .rooms
            .view(&self.room, self.pid)
            .map(|v| {
                let mut all: Vec<_> = v
                    .others
                    .iter()
                    .map(|p| render::participant_info(p))
                    .collect();
                all.extend(v.me.map(|me| render::participant_info(&me)));
                all
            })
            .unwrap_or_default();
        link.send(encode(render::update(everyone))).await;
        if let Some(jr) = r.opts.initial {
            self.initial_requests(jr, link).await?;
        }
        tracing::info!("signalling resumed");
        Ok(())
    }
}
