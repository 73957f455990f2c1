//! One LiveKit signalling session (`/rtc` with two peer connections, `/rtc/v1` with one): the
//! task that owns a client's WebSocket, its participant in the roster and in the SFU. This
//! file owns the task's life: start, the loop over client messages, room events and SFU
//! events, how it ends ([`End`], [`SignalError`] and what the client is told), and the
//! teardown. The jobs it hands out: `join.rs` (entering the room), `request.rs` (client
//! requests), `publish.rs` (the participant's own tracks), `media.rs` (SFU events to wire
//! messages), `resume.rs` (`reconnect=1`). Message flow as in `livekit-protocol.md` §3–§7.

mod join;
mod media;
mod publish;
mod request;
mod resume;

pub use resume::{ResumeCounters, Resumption};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{ParticipantId, SfuError, SfuEvent, SfuHandle};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::link::{self, SignalLink};
use super::render;
use crate::ids::{ParticipantSid, RoomName};
use crate::rooms::{LeaveReason, MemberEvent, Permissions, Track};
use crate::token::{self, JoinGrant};
use crate::AppState;

/// Seconds between client pings (`JoinResponse.ping_interval`).
pub const PING_INTERVAL_S: i32 = 5;
/// Seconds of client silence after which the session ends (`JoinResponse.ping_timeout`).
pub const PING_TIMEOUT_S: i32 = 15;
/// How often a fresh token is pushed (`refresh_token`).
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// The LiveKit server version we report; ≥ 1.8.0 so SDKs enable RPC.
pub const SERVER_VERSION: &str = "1.9.0";
/// How long a participant whose WebSocket dropped without `leave` stays in the room, media
/// flowing, for its client to resume (`reconnect=1`). livekit-client's first resume attempts
/// come within ~5 s (retry delays 0, 0.3, 1.2, 2.7 s); a crashed client is seen leaving after this.
pub const RESUME_WINDOW: Duration = Duration::from_secs(10);
/// LiveKit signal protocol version we speak.
const SERVER_PROTOCOL: i32 = 16;

/// Connection options from the `/rtc` query string.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `auto_subscribe` (default true).
    pub auto_subscribe: bool,
    /// `protocol`.
    pub protocol: i32,
    /// `client_protocol`.
    pub client_protocol: i32,
    /// `reconnect=1`: the client asks to resume a session.
    pub reconnect: bool,
    /// The participant sid a resuming client names (`sid`, v1 `participant_sid`).
    pub resume_sid: Option<String>,
    /// `/rtc/v1`: one peer connection, the client always offers.
    pub single_pc: bool,
    /// `/rtc/v1`'s `JoinRequest` (tracks to add, the bundled publisher offer).
    pub initial: Option<proto::JoinRequest>,
}

/// What reaches a session task from outside: the roster's events for its participant, and a
/// resuming client's new WebSocket.
#[derive(Debug)]
pub enum Inbox {
    /// A change in the room (or this participant's removal).
    Room(MemberEvent),
    /// The client resumed (`reconnect=1`) on a new WebSocket: continue on that one.
    Resume(Box<Resumption>),
}

impl From<MemberEvent> for Inbox {
    fn from(e: MemberEvent) -> Self {
        Inbox::Room(e)
    }
}

/// The inbox of every live session, by participant, so a resuming client's connection can be
/// handed to its session.
#[derive(Debug, Default)]
pub struct Sessions {
    inboxes: Mutex<HashMap<ParticipantId, mpsc::UnboundedSender<Inbox>>>,
}

impl Sessions {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, mpsc::UnboundedSender<Inbox>>> {
        // every change is one insert or remove: a poisoned map is still consistent
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, pid: ParticipantId, inbox: mpsc::UnboundedSender<Inbox>) {
        self.lock().insert(pid, inbox);
    }

    fn remove(&self, pid: ParticipantId) {
        self.lock().remove(&pid);
    }

    fn get(&self, pid: ParticipantId) -> Option<mpsc::UnboundedSender<Inbox>> {
        self.lock().get(&pid).cloned()
    }
}

/// Why a session failed, each mapped to what the client is told in [`SignalError::notice`].
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The media plane did not take the participant (it has stopped).
    #[error("media plane refused the participant: {0}")]
    Join(#[source] SfuError),
    /// The media plane did not take a command for the participant (it has stopped).
    #[error("media plane command failed: {0}")]
    Media(#[from] SfuError),
    /// The client sent something unreadable (not a `SignalRequest`, text, a broken frame).
    #[error("{0}")]
    BadInput(String),
}

/// How a client is told its session ends.
enum Notice {
    /// `leave{reason, DISCONNECT}` then close.
    Leave(proto::DisconnectReason),
    /// A close frame with this code and reason.
    Close(u16, String),
}

impl SignalError {
    /// What the client is told, and why the participant left the room.
    fn notice(&self) -> (Notice, LeaveReason) {
        match self {
            SignalError::Join(_) => (
                Notice::Leave(proto::DisconnectReason::JoinFailure),
                LeaveReason::JoinFailure,
            ),
            SignalError::Media(_) => (
                Notice::Leave(proto::DisconnectReason::MediaFailure),
                LeaveReason::MediaFailure,
            ),
            // 1007: invalid payload data (RFC 6455 §7.4.1)
            SignalError::BadInput(why) => (
                Notice::Close(1007, truncate(why, 120).to_string()),
                LeaveReason::SignalClose,
            ),
        }
    }
}

/// Why the session loop ended.
enum End {
    /// Client sent `leave` (or closed its peer connection).
    Client,
    /// Replaced, removed, or its media failed; told with `leave`.
    Server(LeaveReason),
    /// Silent past the ping timeout.
    Timeout,
    /// The WebSocket dropped and no resume came within [`RESUME_WINDOW`].
    Abandoned,
    /// An error; the client is told as [`SignalError::notice`] says.
    Failed(SignalError),
}

impl From<SfuError> for End {
    fn from(e: SfuError) -> Self {
        End::Failed(SignalError::Media(e))
    }
}

/// What a step of the session gives: go on, or end.
type Step = Result<(), End>;

/// A track the client announced with `add_track`, before and after its media arrives.
struct OwnTrack {
    track: Track,
    rids: Vec<String>,
    live: bool,
}

struct Session {
    state: Arc<AppState>,
    grant: JoinGrant,
    opts: ConnectOptions,
    pid: ParticipantId,
    sid: ParticipantSid,
    room: RoomName,
    perms: Permissions,
    /// By `cid`.
    tracks: HashMap<String, OwnTrack>,
    /// Ids of client offers awaiting our answer, oldest first.
    offer_ids: VecDeque<u32>,
    next_offer_id: u32,
    last_heard: Instant,
    active: bool,
    /// Sids of the speakers last announced active to this client, so one who left the room
    /// (gone from the roster) is still announced inactive.
    speaking: HashMap<ParticipantId, ParticipantSid>,
}

/// Runs a session to its end. The token has been verified by the caller. A `reconnect=1`
/// connection is handed to the session it resumes instead (or told to rejoin).
pub async fn run(state: Arc<AppState>, socket: WebSocket, grant: JoinGrant, opts: ConnectOptions) {
    let span = tracing::info_span!(
        "participant",
        room = %grant.room(),
        identity = %grant.identity(),
        participant = tracing::field::Empty
    );
    if opts.reconnect {
        return resume::hand_over(&state, socket, grant, opts)
            .instrument(span)
            .await;
    }
    run_session(state, socket, grant, opts)
        .instrument(span)
        .await
}

async fn run_session(
    state: Arc<AppState>,
    socket: WebSocket,
    grant: JoinGrant,
    opts: ConnectOptions,
) {
    let mut link = SignalLink::new(socket, Some(state.livekit.resumes.detached.clone()));
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Inbox>();
    let (sfu_tx, mut sfu_rx) = mpsc::unbounded_channel::<SfuEvent>();
    state.livekit.tasks.fetch_add(1, Relaxed);
    let mut s = Session {
        pid: ParticipantId::next(),
        sid: ParticipantSid::generate(),
        room: grant.room().into(),
        perms: render::permissions(&grant.claims.video),
        state: state.clone(),
        grant,
        opts,
        tracks: HashMap::new(),
        offer_ids: VecDeque::new(),
        next_offer_id: rand::random::<u32>() % 256 + 1,
        last_heard: Instant::now(),
        active: false,
        speaking: HashMap::new(),
    };
    tracing::Span::current().record("participant", s.sid.as_str());
    let end = match s.start(&mut link, inbox_tx, sfu_tx).await {
        Ok(()) => s.serve(&mut link, &mut inbox, &mut sfu_rx).await,
        Err(end) => end,
    };

    let reason = match &end {
        End::Client => LeaveReason::ClientInitiated,
        End::Server(r) => *r,
        End::Timeout | End::Abandoned => LeaveReason::SignalClose,
        End::Failed(e) => e.notice().1,
    };
    let notice = match &end {
        End::Server(r) => Some(Notice::Leave(render::disconnect_reason(*r))),
        End::Failed(e) => {
            tracing::info!(error = %e, "session failed");
            Some(e.notice().0)
        }
        End::Timeout => {
            tracing::info!("client silent past ping timeout");
            None
        }
        End::Abandoned => {
            tracing::info!("signalling not resumed in time");
            None
        }
        End::Client => None,
    };
    match notice {
        Some(Notice::Leave(reason)) => {
            let leave = proto::LeaveRequest {
                reason: reason as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                ..Default::default()
            };
            link.send(encode(Resp::Leave(leave))).await;
            link.close(None).await;
        }
        Some(Notice::Close(code, why)) => {
            let frame = CloseFrame {
                code,
                reason: why.into(),
            };
            link.close(Some(frame)).await;
        }
        None => {}
    }
    drop(link); // a link still waiting for a resume leaves the detached gauge
                // After a media-plane failure the leave cannot reach it either; that was logged above.
    let media_gone = matches!(
        end,
        End::Failed(SignalError::Join(_) | SignalError::Media(_))
    );
    if let Err(e) = state.sfu.leave(s.pid) {
        if !media_gone {
            tracing::warn!(error = %e, "media plane did not take the leave");
        }
    }
    state.rooms.leave(&s.room, s.pid, reason);
    state.livekit.sessions.remove(s.pid);
    // A resume that raced with the end finds no session: tell its client to rejoin.
    inbox.close();
    while let Ok(msg) = inbox.try_recv() {
        if let Inbox::Resume(r) = msg {
            resume::refuse(&state, r.socket).await;
        }
    }
    state.livekit.tasks.fetch_sub(1, Relaxed);
    tracing::info!(?reason, "participant left");
}

impl Session {
    fn sfu(&self) -> &SfuHandle {
        &self.state.sfu
    }

    /// Joins, answers `JoinResponse`, handles what a `/rtc/v1` client bundled in its join
    /// request, sends the first token refresh and subscribes to what is already live.
    async fn start(
        &mut self,
        link: &mut SignalLink,
        inbox: mpsc::UnboundedSender<Inbox>,
        sfu_events: mpsc::UnboundedSender<SfuEvent>,
    ) -> Step {
        let (join, live) = self.join(inbox, sfu_events)?;
        link.send(encode(join)).await;
        if let Some(jr) = self.opts.initial.take() {
            self.initial_requests(jr, link).await?;
        }
        self.refresh_token(link).await;
        for t in live {
            self.subscribe(&t)?;
        }
        Ok(())
    }

    /// The loop: client messages, room events, SFU events, and a one-second tick for the
    /// ping timeout, the resume window and token refreshes.
    async fn serve(
        &mut self,
        link: &mut SignalLink,
        inbox: &mut mpsc::UnboundedReceiver<Inbox>,
        sfu_rx: &mut mpsc::UnboundedReceiver<SfuEvent>,
    ) -> End {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_refresh = Instant::now() + REFRESH_EVERY;
        loop {
            let step = tokio::select! {
                msg = link.recv() => self.client_message(msg, link).await,
                Some(msg) = inbox.recv() => match msg {
                    Inbox::Room(event) => self.room_event(event, link).await,
                    Inbox::Resume(r) => self.resume(*r, link).await,
                },
                Some(ev) = sfu_rx.recv() => self.sfu_event(ev, link).await,
                _ = tick.tick() => {
                    if let Some(gone) = link.detached_for() {
                        if gone > RESUME_WINDOW || link.overflowed() {
                            return End::Abandoned;
                        }
                    } else if self.last_heard.elapsed() > Duration::from_secs(PING_TIMEOUT_S as u64) {
                        return End::Timeout;
                    }
                    if Instant::now() >= next_refresh {
                        next_refresh = Instant::now() + REFRESH_EVERY;
                        self.refresh_token(link).await;
                    }
                    Ok(())
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// One read from the WebSocket.
    async fn client_message(
        &mut self,
        msg: Option<Result<Message, axum::Error>>,
        link: &mut SignalLink,
    ) -> Step {
        let bad = |why: String| Err(End::Failed(SignalError::BadInput(why)));
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                self.last_heard = Instant::now();
                match proto::SignalRequest::decode(bytes.as_ref()) {
                    Ok(req) => self.request(req, link).await,
                    Err(e) => bad(format!("malformed SignalRequest: {e}")),
                }
            }
            Some(Ok(Message::Text(_))) => bad("text (JSON) signalling is not supported".into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.last_heard = Instant::now();
                Ok(())
            }
            // Closed without `leave`: the client may come back with `reconnect=1`.
            Some(Ok(Message::Close(_))) | None => {
                self.detach(link);
                Ok(())
            }
            Some(Err(e)) if link::is_transport_error(&e) => {
                self.detach(link);
                Ok(())
            }
            Some(Err(e)) => bad(format!("websocket error: {e}")),
        }
    }

    /// One change in the room, told to the client as LiveKit does.
    async fn room_event(&mut self, event: MemberEvent, link: &mut SignalLink) -> Step {
        match event {
            MemberEvent::Joined(p) | MemberEvent::Updated(p) => {
                link.send(encode(render::update(vec![render::participant_info(&p)])))
                    .await;
            }
            MemberEvent::Left {
                participant,
                reason,
            } => {
                let info = render::departed_info(&participant, reason);
                link.send(encode(render::update(vec![info]))).await;
            }
            MemberEvent::Subscribe(t) => self.subscribe(&t)?,
            MemberEvent::Removed(reason) => return Err(End::Server(reason)),
        }
        Ok(())
    }

    async fn refresh_token(&self, link: &mut SignalLink) {
        match token::refresh(&self.grant, &self.state.settings.keys) {
            Some(t) => link.send(encode(Resp::RefreshToken(t))).await,
            None => tracing::warn!("could not mint a refreshed token"),
        }
    }
}

/// What every session tells its client: resume allowed (the default, `UNSET`).
fn client_configuration() -> proto::ClientConfiguration {
    proto::ClientConfiguration::default()
}

fn server_info() -> proto::ServerInfo {
    proto::ServerInfo {
        edition: proto::server_info::Edition::Standard as i32,
        version: SERVER_VERSION.into(),
        protocol: SERVER_PROTOCOL,
        node_id: "switchboard".into(),
        debug_info: concat!("switchboard ", env!("CARGO_PKG_VERSION")).into(),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn encode(msg: Resp) -> Message {
    let resp = proto::SignalResponse { message: Some(msg) };
    Message::Binary(resp.encode_to_vec().into())
}
