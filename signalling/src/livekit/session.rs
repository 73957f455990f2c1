//! One LiveKit signalling session (`/rtc`, two peer connections): the task that owns a client's
//! WebSocket, its place in the room, and its participant in the SFU. Message flow as in
//! `livekit-protocol.md` §3–§7.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{
    JoinParams, ParticipantId, PcLayout, PeerRole, PendingTrack, SfuEvent, SfuHandle, TrackId,
    TrackKind,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::data::LiveKitDataRouter;
use super::link::{self, SignalLink};
use super::room::{Inbox, Member};
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

/// A track the client announced with `add_track`, before and after its media arrives.
struct OwnTrack {
    id: TrackId,
    info: proto::TrackInfo,
    kind: TrackKind,
    rids: Vec<String>,
    live: bool,
}

struct Session {
    state: Arc<AppState>,
    grant: JoinGrant,
    opts: ConnectOptions,
    pid: ParticipantId,
    sid: String,
    room: String,
    hidden: bool,
    perms: proto::ParticipantPermission,
    /// By `cid`.
    tracks: HashMap<String, OwnTrack>,
    /// Ids of client offers awaiting our answer, oldest first.
    offer_ids: VecDeque<u32>,
    next_offer_id: u32,
    last_heard: Instant,
    active: bool,
}

/// Why the session loop ended.
enum End {
    /// Client sent `leave` (or closed its peer connection).
    Client,
    /// Replaced, removed or failed; tell the client with `leave`.
    Server(proto::DisconnectReason),
    /// Silent past the ping timeout.
    Timeout,
    /// The WebSocket dropped and no resume came within [`RESUME_WINDOW`].
    Abandoned,
    /// Unparseable input; close with this reason.
    BadInput(String),
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
        return hand_over(&state, socket, grant, opts)
            .instrument(span)
            .await;
    }
    run_inner(state, socket, grant, opts).instrument(span).await
}

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
    socket: WebSocket,
    grant: JoinGrant,
    opts: ConnectOptions,
}

/// Gives a `reconnect=1` connection to the live session of the same identity (and sid, when
/// the client names it) in the token's room. Without one, the client is told to rejoin from
/// scratch: `leave{STATE_MISMATCH, RECONNECT}`, LiveKit's answer for a session it cannot resume.
async fn hand_over(state: &AppState, socket: WebSocket, grant: JoinGrant, opts: ConnectOptions) {
    let identity = grant.identity().to_string();
    let inbox = state
        .registry
        .with_room(grant.room(), |room| {
            room.members
                .values()
                .find(|m| {
                    m.info.identity == identity
                        && opts
                            .resume_sid
                            .as_ref()
                            .is_none_or(|sid| *sid == m.info.sid)
                })
                .map(|m| m.inbox.clone())
        })
        .flatten();
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
                Err(_) => return,
            }
        }
        None => socket,
    };
    tracing::info!("nothing to resume; told the client to rejoin");
    state.resumes.refused.fetch_add(1, Relaxed);
    let mut link = SignalLink::new(socket, None);
    refuse_resume(&mut link).await;
}

/// `leave{STATE_MISMATCH, RECONNECT}` and close: the client rejoins from scratch.
async fn refuse_resume(link: &mut SignalLink) {
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

async fn run_inner(
    state: Arc<AppState>,
    socket: WebSocket,
    grant: JoinGrant,
    opts: ConnectOptions,
) {
    let mut link = SignalLink::new(socket, Some(state.resumes.detached.clone()));
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Inbox>();
    let (sfu_tx, mut sfu_rx) = mpsc::unbounded_channel::<SfuEvent>();
    state.tasks.fetch_add(1, Relaxed);

    let video = &grant.claims.video;
    // `recorder` and `agent` are deprecated in the proto but still read by older clients.
    #[allow(deprecated)]
    let perms = proto::ParticipantPermission {
        can_subscribe: video.can_subscribe(),
        can_publish: video.can_publish(),
        can_publish_data: video.can_publish_data(),
        can_publish_sources: video
            .can_publish_sources
            .iter()
            .filter_map(|s| source_from_name(s))
            .map(|s| s as i32)
            .collect(),
        hidden: video.hidden,
        recorder: video.recorder,
        can_update_metadata: video.can_update_own_metadata(),
        agent: video.agent,
        ..Default::default()
    };
    let mut s = Session {
        pid: ParticipantId::next(),
        sid: crate::ids::participant_sid(),
        room: grant.room().to_string(),
        hidden: video.hidden,
        perms,
        state: state.clone(),
        grant,
        opts,
        tracks: HashMap::new(),
        offer_ids: VecDeque::new(),
        next_offer_id: rand::random::<u32>() % 256 + 1,
        last_heard: Instant::now(),
        active: false,
    };
    tracing::Span::current().record("participant", s.sid.as_str());
    let join = s.join(inbox_tx, sfu_tx);
    link.send(encode(join)).await;
    let initial = s.opts.initial.take();
    if let Some(jr) = initial {
        s.initial_requests(jr, &mut link).await;
    }
    if let Some(t) = token::refresh(&s.grant, &state.settings.keys) {
        link.send(encode(Resp::RefreshToken(t))).await;
    }
    s.subscribe_existing();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_refresh = Instant::now() + REFRESH_EVERY;
    let end = loop {
        tokio::select! {
            msg = link.recv() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    s.last_heard = Instant::now();
                    match proto::SignalRequest::decode(bytes.as_ref()) {
                        Ok(req) => {
                            if let Some(end) = s.request(req, &mut link).await {
                                break end;
                            }
                        }
                        Err(e) => break End::BadInput(format!("malformed SignalRequest: {e}")),
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    break End::BadInput("text (JSON) signalling is not supported".into())
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => s.last_heard = Instant::now(),
                // Closed without `leave`: the client may come back with `reconnect=1`.
                Some(Ok(Message::Close(_))) | None => s.detach(&mut link),
                Some(Err(e)) if link::is_transport_error(&e) => s.detach(&mut link),
                Some(Err(e)) => break End::BadInput(format!("websocket error: {e}")),
            },
            Some(msg) = inbox.recv() => match msg {
                Inbox::Signal(m) => link.send(encode(*m)).await,
                Inbox::TrackLive { track, publisher_sid, track_sid } => {
                    if s.opts.auto_subscribe && s.perms.can_subscribe {
                        s.subscribe(track, &publisher_sid, &track_sid);
                    }
                }
                Inbox::Resume(r) => {
                    if let Some(end) = s.resume(*r, &mut link).await {
                        break end;
                    }
                }
                Inbox::Close(reason) => break End::Server(reason),
            },
            Some(ev) = sfu_rx.recv() => {
                if let Some(end) = s.sfu_event(ev, &mut link).await {
                    break end;
                }
            }
            _ = tick.tick() => {
                if let Some(gone) = link.detached_for() {
                    if gone > RESUME_WINDOW || link.overflowed() {
                        break End::Abandoned;
                    }
                } else if s.last_heard.elapsed() > Duration::from_secs(PING_TIMEOUT_S as u64) {
                    break End::Timeout;
                }
                if Instant::now() >= next_refresh {
                    next_refresh = Instant::now() + REFRESH_EVERY;
                    if let Some(t) = token::refresh(&s.grant, &state.settings.keys) {
                        link.send(encode(Resp::RefreshToken(t))).await;
                    }
                }
            }
        }
    };

    let reason = match &end {
        End::Client => proto::DisconnectReason::ClientInitiated,
        End::Server(r) => *r,
        End::Timeout | End::Abandoned | End::BadInput(_) => proto::DisconnectReason::SignalClose,
    };
    match end {
        End::Server(reason) => {
            let leave = proto::LeaveRequest {
                reason: reason as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                ..Default::default()
            };
            link.send(encode(Resp::Leave(leave))).await;
            link.close(None).await;
        }
        End::BadInput(why) => {
            tracing::info!(reason = %why, "closing signalling connection");
            let frame = CloseFrame {
                code: 1007,
                reason: truncate(&why, 120).into(),
            };
            link.close(Some(frame)).await;
        }
        End::Timeout => tracing::info!("client silent past ping timeout"),
        End::Abandoned => tracing::info!("signalling not resumed in time"),
        End::Client => {}
    }
    drop(link); // a link still waiting for a resume leaves the detached gauge
    let _ = state.sfu.leave(s.pid);
    state.registry.remove(&s.room, s.pid, reason);
    state.tasks.fetch_sub(1, Relaxed);
    tracing::info!(?reason, "participant left");
}

impl Session {
    fn sfu(&self) -> &SfuHandle {
        &self.state.sfu
    }

    /// Registers the participant in its room (replacing one with the same identity) and in the
    /// SFU, and builds the `JoinResponse`.
    fn join(
        &mut self,
        inbox: mpsc::UnboundedSender<Inbox>,
        sfu_events: mpsc::UnboundedSender<SfuEvent>,
    ) -> Resp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let c = &self.grant.claims;
        let info = proto::ParticipantInfo {
            sid: self.sid.clone(),
            identity: c.sub.clone(),
            name: c.name.clone(),
            metadata: c.metadata.clone(),
            attributes: c.attributes.clone().into_iter().collect(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: now.as_secs() as i64,
            joined_at_ms: now.as_millis() as i64,
            version: 1,
            permission: Some(self.perms.clone()),
            kind: kind_from_name(&c.kind) as i32,
            client_protocol: self.opts.client_protocol,
            ..Default::default()
        };
        let identity = c.sub.clone();
        let pid = self.pid;
        let hidden = self.hidden;
        let (room_info, others, replaced) =
            self.state.registry.with_room_or_create(&self.room, |room| {
                // The session this one replaces leaves first, so everyone (this client not yet
                // among them) sees the old participant go before the new one arrives.
                let replaced: Vec<ParticipantId> = room
                    .members
                    .iter()
                    .filter(|(_, m)| m.info.identity == identity)
                    .map(|(p, _)| *p)
                    .collect();
                for old in &replaced {
                    if let Some(m) =
                        room.remove_member(*old, proto::DisconnectReason::DuplicateIdentity)
                    {
                        let _ = m
                            .inbox
                            .send(Inbox::Close(proto::DisconnectReason::DuplicateIdentity));
                    }
                }
                let others = room.others(pid);
                room.members.insert(
                    pid,
                    Member {
                        info: info.clone(),
                        track_ids: HashMap::new(),
                        hidden,
                        inbox,
                    },
                );
                room.announce(pid, false);
                (room.info.clone(), others, !replaced.is_empty())
            });
        if replaced {
            tracing::info!("previous session with the same identity replaced");
        }
        let router = LiveKitDataRouter {
            sid: self.sid.clone(),
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
        if let Err(e) = self.sfu().join(JoinParams {
            participant: pid,
            room: self.room.as_str().into(),
            identity: c.sub.as_str().into(),
            events: sfu_events,
            data_router: Box::new(router),
            layout,
        }) {
            tracing::error!(error = %e, "media plane unavailable");
        }
        tracing::info!(
            identity = %c.sub,
            path = if self.opts.single_pc { "/rtc/v1" } else { "/rtc" },
            protocol = self.opts.protocol,
            "participant joined"
        );
        Resp::Join(proto::JoinResponse {
            room: Some(room_info),
            participant: Some(info),
            other_participants: others,
            server_version: SERVER_VERSION.into(),
            subscriber_primary: layout == PcLayout::Dual,
            fast_publish: layout == PcLayout::Single && self.perms.can_publish,
            client_configuration: Some(client_configuration()),
            ping_timeout: PING_TIMEOUT_S,
            ping_interval: PING_INTERVAL_S,
            server_info: Some(server_info()),
            ..Default::default()
        })
    }

    /// The tracks and offer a `/rtc/v1` client put in its `JoinRequest`, handled as if sent.
    async fn initial_requests(&mut self, jr: proto::JoinRequest, link: &mut SignalLink) {
        for add in jr.add_track_requests {
            self.add_track(add, link).await;
        }
        if let Some(offer) = jr.publisher_offer {
            let req = proto::SignalRequest {
                message: Some(Req::Offer(offer)),
            };
            self.request(req, link).await;
        }
    }

    /// The WebSocket closed without `leave`: keep the participant (media keeps flowing) for
    /// a resume within [`RESUME_WINDOW`].
    fn detach(&mut self, link: &mut SignalLink) {
        if link.detached_for().is_none() {
            tracing::info!("signalling connection lost; waiting for a resume");
        }
        link.detach();
    }

    /// Takes over a resuming client's WebSocket (`livekit-protocol.md` §7.3): answers
    /// `ReconnectResponse`, sends what queued while it was away, then everyone's current
    /// `ParticipantUpdate`. The client follows with `sync_state` (nothing to restore: the
    /// session never went away) and, if its transport broke, an ICE-restart offer.
    /// Returns `Some` when the session cannot continue (messages for the client were lost).
    async fn resume(&mut self, r: Resumption, link: &mut SignalLink) -> Option<End> {
        if r.opts.single_pc != self.opts.single_pc || link.overflowed() {
            // a session cannot change its peer-connection layout, nor go on with a gap in
            // what its client was told
            tracing::info!(
                overflowed = link.overflowed(),
                "resume refused (other signalling path, or too much missed)"
            );
            let mut other = SignalLink::new(r.socket, None);
            refuse_resume(&mut other).await;
            self.state.resumes.refused.fetch_add(1, Relaxed);
            return link.overflowed().then_some(End::Abandoned);
        }
        self.state.resumes.resumed.fetch_add(1, Relaxed);
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
        let pid = self.pid;
        let everyone = self
            .state
            .registry
            .with_room(&self.room, |room| {
                let mut all = room.others(pid);
                if let Some(me) = room.members.get(&pid) {
                    all.push(me.info.clone());
                }
                all
            })
            .unwrap_or_default();
        link.send(encode(super::room::update(everyone))).await;
        if let Some(jr) = r.opts.initial {
            self.initial_requests(jr, link).await;
        }
        tracing::info!("signalling resumed");
        None
    }

    /// Auto-subscribes to tracks already live in the room.
    fn subscribe_existing(&mut self) {
        if !(self.opts.auto_subscribe && self.perms.can_subscribe) {
            return;
        }
        let pid = self.pid;
        let live: Vec<(TrackId, String, String)> = self
            .state
            .registry
            .with_room(&self.room, |room| {
                room.members
                    .iter()
                    .filter(|(p, m)| **p != pid && !m.hidden)
                    .flat_map(|(_, m)| {
                        m.track_ids
                            .iter()
                            .map(|(tsid, t)| (*t, m.info.sid.clone(), tsid.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (track, psid, tsid) in live {
            self.subscribe(track, &psid, &tsid);
        }
    }

    fn subscribe(&self, track: TrackId, publisher_sid: &str, track_sid: &str) {
        let _ = self.sfu().subscribe(
            self.pid,
            track,
            format!("{publisher_sid}|{track_sid}"),
            track_sid.to_string(),
        );
    }

    /// Handles one client request; `Some` ends the session.
    async fn request(&mut self, req: proto::SignalRequest, ws: &mut SignalLink) -> Option<End> {
        let msg = req.message?;
        match msg {
            Req::Offer(sd) => {
                self.offer_ids.push_back(sd.id);
                let pending = self
                    .tracks
                    .values()
                    .filter(|t| !t.live)
                    .map(|t| PendingTrack {
                        track: t.id,
                        cid: t
                            .info
                            .codecs
                            .first()
                            .map(|c| c.cid.clone())
                            .unwrap_or_default(),
                        kind: t.kind,
                        rids: t.rids.clone(),
                    })
                    .collect();
                let _ = self.sfu().offer(self.pid, sd.sdp, pending);
            }
            Req::Answer(sd) => {
                let _ = self.sfu().answer(self.pid, sd.sdp);
            }
            Req::Trickle(t) => {
                let role = if t.target == proto::SignalTarget::Subscriber as i32 {
                    PeerRole::Subscriber
                } else {
                    PeerRole::Publisher
                };
                #[derive(serde::Deserialize)]
                struct Init {
                    #[serde(default)]
                    candidate: String,
                }
                if let Ok(init) = serde_json::from_str::<Init>(&t.candidate_init) {
                    if !init.candidate.is_empty() {
                        let _ = self.sfu().candidate(self.pid, role, init.candidate);
                    }
                }
            }
            Req::AddTrack(add) => return self.add_track(add, ws).await,
            Req::Mute(m) => self.set_muted(&m.sid, m.muted),
            Req::Subscription(sub) => self.update_subscription(sub),
            Req::TrackSetting(ts) => {
                for tsid in &ts.track_sids {
                    let found = self
                        .state
                        .registry
                        .with_room(&self.room, |room| room.track_layers(tsid))
                        .flatten();
                    if let Some((track, layers)) = found {
                        let off = ts.quality == proto::VideoQuality::Off as i32;
                        let _ = self.sfu().set_paused(self.pid, track, ts.disabled || off);
                        if let Some(layer) = max_layer(&layers, &ts) {
                            let layer = switchboard_sfu::Layer::from_index(usize::from(layer));
                            let _ = self.sfu().set_max_layer(self.pid, track, layer);
                        }
                    }
                }
            }
            Req::Leave(_) => return Some(End::Client),
            Req::Ping(ts) => {
                let _ = ws.send(encode(Resp::Pong(now_ms()))).await;
                let _ = ts;
            }
            Req::PingReq(p) => {
                let pong = proto::Pong {
                    last_ping_timestamp: p.timestamp,
                    timestamp: now_ms(),
                };
                let _ = ws.send(encode(Resp::PongResp(pong))).await;
            }
            Req::UpdateMetadata(u) => {
                if !self.perms.can_update_metadata {
                    let rr = proto::RequestResponse {
                        request_id: u.request_id,
                        reason: proto::request_response::Reason::NotAllowed as i32,
                        message: "no canUpdateOwnMetadata grant".into(),
                        ..Default::default()
                    };
                    let _ = ws.send(encode(Resp::RequestResponse(rr))).await;
                } else {
                    let pid = self.pid;
                    self.state.registry.with_room(&self.room, |room| {
                        if let Some(m) = room.members.get_mut(&pid) {
                            if !u.metadata.is_empty() {
                                m.info.metadata = u.metadata.clone();
                            }
                            if !u.name.is_empty() {
                                m.info.name = u.name.clone();
                            }
                            for (k, v) in &u.attributes {
                                if v.is_empty() {
                                    m.info.attributes.remove(k);
                                } else {
                                    m.info.attributes.insert(k.clone(), v.clone());
                                }
                            }
                            m.info.version += 1;
                        }
                        room.announce(pid, true);
                    });
                }
            }
            _ => {}
        }
        None
    }

    async fn add_track(&mut self, add: proto::AddTrackRequest, ws: &mut SignalLink) -> Option<End> {
        let kind = match proto::TrackType::try_from(add.r#type) {
            Ok(proto::TrackType::Audio) => TrackKind::Audio,
            Ok(proto::TrackType::Video) => TrackKind::Video,
            _ => {
                let rr = refusal(
                    &add,
                    proto::request_response::Reason::UnsupportedType,
                    "only audio and video tracks",
                );
                let _ = ws.send(encode(Resp::RequestResponse(rr))).await;
                return None;
            }
        };
        let source_ok = self.perms.can_publish_sources.is_empty()
            || self.perms.can_publish_sources.contains(&add.source);
        if !self.perms.can_publish || !source_ok {
            let rr = refusal(
                &add,
                proto::request_response::Reason::NotAllowed,
                "not allowed to publish",
            );
            let _ = ws.send(encode(Resp::RequestResponse(rr))).await;
            return None;
        }
        if let Some(t) = self.tracks.get(&add.cid) {
            let resp = proto::TrackPublishedResponse {
                cid: add.cid.clone(),
                track: Some(t.info.clone()),
            };
            let _ = ws.send(encode(Resp::TrackPublished(resp))).await;
            return None;
        }
        let mut layers = add.layers.clone();
        layers.sort_by_key(|l| l.quality);
        let rids: Vec<String> = if kind == TrackKind::Video && layers.len() > 1 {
            layers
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
        let mime = match kind {
            TrackKind::Audio => "audio/opus".to_string(),
            TrackKind::Video => add
                .simulcast_codecs
                .first()
                .map(|c| video_mime(&c.codec))
                .unwrap_or_else(|| "video/VP8".into()),
        };
        let sid = crate::ids::track_sid();
        // `simulcast` and `layers` are deprecated but clients before 2.x and the Rust SDK
        // read them.
        #[allow(deprecated)]
        let info = proto::TrackInfo {
            sid: sid.clone(),
            r#type: add.r#type,
            name: add.name.clone(),
            muted: add.muted,
            width: add.width,
            height: add.height,
            simulcast: layers.len() > 1,
            source: add.source,
            layers: layers.clone(),
            mime_type: mime.clone(),
            codecs: vec![proto::SimulcastCodecInfo {
                mime_type: mime,
                cid: add.cid.clone(),
                layers,
                ..Default::default()
            }],
            disable_red: add.disable_red,
            encryption: add.encryption,
            stream: add.stream.clone(),
            audio_features: add.audio_features.clone(),
            backup_codec_policy: add.backup_codec_policy,
            ..Default::default()
        };
        self.tracks.insert(
            add.cid.clone(),
            OwnTrack {
                id: TrackId::next(),
                info: info.clone(),
                kind,
                rids,
                live: false,
            },
        );
        let resp = proto::TrackPublishedResponse {
            cid: add.cid,
            track: Some(info),
        };
        let _ = ws.send(encode(Resp::TrackPublished(resp))).await;
        None
    }

    fn set_muted(&mut self, track_sid: &str, muted: bool) {
        let Some(t) = self.tracks.values_mut().find(|t| t.info.sid == track_sid) else {
            return;
        };
        t.info.muted = muted;
        let pid = self.pid;
        self.state.registry.with_room(&self.room, |room| {
            if let Some(m) = room.members.get_mut(&pid) {
                for ti in m.info.tracks.iter_mut().filter(|ti| ti.sid == track_sid) {
                    ti.muted = muted;
                }
                m.info.version += 1;
            }
            room.announce(pid, true);
        });
    }

    fn update_subscription(&mut self, sub: proto::UpdateSubscription) {
        if !self.perms.can_subscribe {
            return;
        }
        let mut sids: Vec<String> = sub.track_sids.clone();
        for pt in &sub.participant_tracks {
            sids.extend(pt.track_sids.iter().cloned());
        }
        for tsid in sids {
            let found = self
                .state
                .registry
                .with_room(&self.room, |room| room.find_track(&tsid))
                .flatten();
            let Some((publisher, psid, track)) = found else {
                continue;
            };
            if publisher == self.pid {
                continue;
            }
            if sub.subscribe {
                self.subscribe(track, &psid, &tsid);
            } else {
                let _ = self.sfu().unsubscribe(self.pid, track);
            }
        }
    }

    /// Handles one media-plane event; `Some` ends the session.
    async fn sfu_event(&mut self, ev: SfuEvent, ws: &mut SignalLink) -> Option<End> {
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
                let _ = ws.send(encode(Resp::Answer(sd))).await;
            }
            SfuEvent::Offer { sdp, mid_to_track } => {
                let id = self.next_offer_id;
                self.next_offer_id += 1;
                let sd = proto::SessionDescription {
                    r#type: "offer".into(),
                    sdp,
                    id,
                    mid_to_track_id: self.track_sids(&mid_to_track),
                };
                let _ = ws.send(encode(Resp::Offer(sd))).await;
            }
            SfuEvent::NeedOffer { audio, video } => {
                let req = proto::MediaSectionsRequirement {
                    num_audios: audio,
                    num_videos: video,
                };
                let _ = ws.send(encode(Resp::MediaSectionsRequirement(req))).await;
            }
            SfuEvent::NegotiationFailed { role, reason } => {
                tracing::warn!(?role, %reason, "negotiation failed");
                if role == PeerRole::Publisher {
                    self.offer_ids.pop_front();
                }
            }
            SfuEvent::TrackLive { track, mime } => self.track_live(track, mime),
            SfuEvent::TrackEnded { track } => self.track_ended(track),
            SfuEvent::Connected { role } => {
                let primary = if self.perms.can_subscribe && !self.opts.single_pc {
                    PeerRole::Subscriber
                } else {
                    PeerRole::Publisher
                };
                if role == primary && !self.active {
                    self.active = true;
                    let pid = self.pid;
                    self.state.registry.with_room(&self.room, |room| {
                        if let Some(m) = room.members.get_mut(&pid) {
                            m.info.state = proto::participant_info::State::Active as i32;
                            m.info.version += 1;
                        }
                        room.announce(pid, false);
                    });
                }
            }
            SfuEvent::Failed {
                reason, by_peer, ..
            } => {
                if by_peer {
                    tracing::info!(%reason, "client closed its peer connection");
                    return Some(End::Client);
                }
                tracing::info!(%reason, "media failed");
                return Some(End::Server(proto::DisconnectReason::MediaFailure));
            }
        }
        None
    }

    /// `mid → TR_ sid` for `SessionDescription.mid_to_track_id`.
    fn track_sids(&self, mid_to_track: &[(String, TrackId)]) -> HashMap<String, String> {
        if mid_to_track.is_empty() {
            return HashMap::new();
        }
        self.state
            .registry
            .with_room(&self.room, |room| {
                mid_to_track
                    .iter()
                    .filter_map(|(mid, t)| {
                        room.members.values().find_map(|m| {
                            m.track_ids
                                .iter()
                                .find(|(_, id)| *id == t)
                                .map(|(sid, _)| (mid.clone(), sid.clone()))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A published track's first packet arrived: announce it, then let everyone subscribe.
    fn track_live(&mut self, track: TrackId, mime: String) {
        let Some(t) = self.tracks.values_mut().find(|t| t.id == track) else {
            return;
        };
        t.live = true;
        t.info.mime_type = mime.clone();
        if let Some(c) = t.info.codecs.first_mut() {
            c.mime_type = mime;
        }
        let info = t.info.clone();
        let pid = self.pid;
        let psid = self.sid.clone();
        let hidden = self.hidden;
        self.state.registry.with_room(&self.room, |room| {
            if let Some(m) = room.members.get_mut(&pid) {
                m.info.tracks.retain(|x| x.sid != info.sid);
                m.info.tracks.push(info.clone());
                m.info.is_publisher = true;
                m.info.version += 1;
                m.track_ids.insert(info.sid.clone(), track);
            }
            room.announce(pid, true);
            // A hidden participant's tracks are not offered: nobody knows its participant.
            if !hidden {
                room.broadcast(Some(pid), || Inbox::TrackLive {
                    track,
                    publisher_sid: psid.clone(),
                    track_sid: info.sid.clone(),
                });
            }
        });
        tracing::info!(track = %info.sid, mime = %info.mime_type, "track published");
    }

    fn track_ended(&mut self, track: TrackId) {
        let Some(cid) = self
            .tracks
            .iter()
            .find(|(_, t)| t.id == track)
            .map(|(c, _)| c.clone())
        else {
            return;
        };
        let Some(t) = self.tracks.remove(&cid) else {
            return;
        };
        let pid = self.pid;
        self.state.registry.with_room(&self.room, |room| {
            if let Some(m) = room.members.get_mut(&pid) {
                m.info.tracks.retain(|x| x.sid != t.info.sid);
                m.track_ids.remove(&t.info.sid);
                m.info.version += 1;
            }
            room.announce(pid, true);
        });
        tracing::info!(track = %t.info.sid, "track unpublished");
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

fn video_mime(codec: &str) -> String {
    match codec.to_ascii_lowercase().as_str() {
        "h264" => "video/H264".into(),
        "vp9" => "video/VP9".into(),
        "av1" => "video/AV1".into(),
        "h265" => "video/H265".into(),
        _ => "video/VP8".into(),
    }
}

fn source_from_name(name: &str) -> Option<proto::TrackSource> {
    match name {
        "camera" => Some(proto::TrackSource::Camera),
        "microphone" => Some(proto::TrackSource::Microphone),
        "screen_share" => Some(proto::TrackSource::ScreenShare),
        "screen_share_audio" => Some(proto::TrackSource::ScreenShareAudio),
        _ => None,
    }
}

fn kind_from_name(name: &str) -> proto::participant_info::Kind {
    use proto::participant_info::Kind;
    match name {
        "ingress" => Kind::Ingress,
        "egress" => Kind::Egress,
        "sip" => Kind::Sip,
        "agent" => Kind::Agent,
        _ => Kind::Standard,
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

/// The simulcast layer cap an `UpdateTrackSettings` asks for, as an index into the track's
/// layers sorted by quality (the media plane's layer numbering). Dimensions win over
/// `quality`: the smallest layer at least `width` × `height`, else the largest (LiveKit
/// `UpdateTrackSettings`; livekit-client sends its video element's size with adaptive
/// stream). `None` for a track without simulcast layers.
fn max_layer(layers: &[proto::VideoLayer], ts: &proto::UpdateTrackSettings) -> Option<u8> {
    if layers.len() < 2 {
        return None;
    }
    let mut sorted: Vec<&proto::VideoLayer> = layers.iter().collect();
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
    Some(index.min(2) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<proto::VideoLayer> {
        [(2, 1280, 720), (0, 320, 180), (1, 640, 360)]
            .iter()
            .map(|&(quality, width, height)| proto::VideoLayer {
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
        assert_eq!(max_layer(&layers(), &settings(Low, 0, 0)), Some(0));
        assert_eq!(max_layer(&layers(), &settings(Medium, 0, 0)), Some(1));
        assert_eq!(max_layer(&layers(), &settings(High, 0, 0)), Some(2));
    }

    #[test]
    fn dimensions_pick_the_smallest_layer_that_covers_them() {
        use proto::VideoQuality::*;
        assert_eq!(max_layer(&layers(), &settings(High, 300, 170)), Some(0));
        assert_eq!(max_layer(&layers(), &settings(Low, 321, 180)), Some(1));
        assert_eq!(max_layer(&layers(), &settings(Low, 1920, 1080)), Some(2));
    }

    #[test]
    fn a_track_without_simulcast_is_not_capped() {
        let one = vec![proto::VideoLayer::default()];
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
