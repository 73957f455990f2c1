//! One simulated LiveKit participant: the client side of the signalling protocol (`/rtc`,
//! two peer connections, LiveKit `SignalRequest`/`SignalResponse` over a WebSocket), sending
//! synthetic media ([`super::tx`]) and measuring what arrives ([`super::stats`]). The peer
//! connections are either WebRTC stack behind [`super::peer::Peer`]; everything LiveKit is here,
//! once, for both.
//!
//! The signalling, the send schedule and the statistics of one participant run in one task: the
//! WebSocket, the publisher and subscriber peers (str0m: their sockets too; webrtc: events from
//! the connections' own tasks). A participant is a publisher (sends audio and/or simulcast
//! video, subscribes to nothing), a subscriber, or both.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::peer::{Peer, PeerEvent, PublishSpec, Stack};
use super::stats::{count_progress, JoinTimes, ParticipantReport, RxStats, Shared};
use super::synth::{self, VIDEO_LAYERS};
use super::tx::Schedule;

/// How long a participant waits for its join to complete (signalling, ICE, DTLS).
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What one participant does.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Identity in the token (also the log name).
    pub identity: String,
    /// Room name in the token.
    pub room: String,
    /// Publish one Opus stream.
    pub audio: bool,
    /// Publish one VP8 simulcast track (q/h/f).
    pub video: bool,
    /// Subscribe to everything in the room (`auto_subscribe`).
    pub subscribe: bool,
    /// Ready means media arrived (else: joined, and for a publisher, its ICE+DTLS up).
    pub expect_media: bool,
    /// The simulcast layer it asks for on video it receives.
    pub quality: proto::VideoQuality,
    /// Index of this participant's first stream id (unique per publisher: 4 ids each).
    pub stream_base: u32,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port` (no path).
    pub url: url::Url,
    /// API key the tokens name.
    pub api_key: String,
    /// Secret that signs them.
    pub api_secret: String,
    /// Address our UDP sockets bind to (the one that routes to the server).
    pub local_ip: IpAddr,
    /// The WebRTC implementation the participants use.
    pub stack: Stack,
    /// Signal on `/rtc/v1` with one peer connection (else `/rtc` with two).
    pub single_pc: bool,
}

/// Errors that end a participant.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// The token could not be made (bad key or secret).
    #[error("cannot mint a token: {0}")]
    Token(String),
    /// The WebSocket did not open.
    #[error("signalling connect to {url} failed: {reason}")]
    Connect {
        /// The URL tried (token elided).
        url: String,
        /// Why.
        reason: String,
    },
    /// The server closed or broke the WebSocket.
    #[error("signalling ended: {0}")]
    SignalEnded(String),
    /// The server sent `LeaveRequest`.
    #[error("the server asked us to leave (reason {0})")]
    Left(i32),
    /// Not joined (ICE/DTLS/first media) within the deadline.
    #[error("join did not complete within {0:?}")]
    JoinTimeout(Duration),
    /// The peer connection failed (SDP, ICE, DTLS).
    #[error("peer connection: {0}")]
    Rtc(String),
    /// A local socket error.
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
}

/// Mints a LiveKit access token for `spec` (HS256, 1 h).
///
/// # Errors
/// [`ParticipantError::Token`] when the key or secret is empty or signing fails.
pub fn mint_token(target: &Target, spec: &Spec) -> Result<String, ParticipantError> {
    let publish = spec.audio || spec.video;
    AccessToken::with_api_key(&target.api_key, &target.api_secret)
        .with_identity(&spec.identity)
        .with_name(&spec.identity)
        .with_ttl(Duration::from_secs(3600))
        .with_grants(VideoGrants {
            room_join: true,
            room: spec.room.clone(),
            can_publish: Some(publish),
            can_subscribe: Some(spec.subscribe),
            can_publish_data: Some(false),
            ..Default::default()
        })
        .to_jwt()
        .map_err(|e| ParticipantError::Token(e.to_string()))
}

/// The client's half of a session: its peer connections (publisher, subscriber) beside the
/// state the signalling and the media events share.
struct Client {
    /// `[publisher, subscriber]`.
    peers: [Option<Peer>; 2],
    state: State,
}

/// Everything but the peer connections.
struct State {
    spec: Spec,
    shared: Arc<Shared>,
    stack: Stack,
    local_ip: IpAddr,
    /// `/rtc/v1`: one peer connection (slot 0) that sends and receives; we always offer.
    single_pc: bool,
    /// Id of our next offer (`SessionDescription.id`).
    next_offer_id: u32,
    /// `/rtc/v1`: receive sections the server asked for while an offer was outstanding.
    sections_wanted: Option<(u32, u32)>,
    tx: Schedule,
    publisher_connected: bool,
    rx: RxStats,
    join: JoinTimes,
    started: Instant,
    out: Vec<Req>,
    ready: bool,
    video_sids: HashSet<String>,
    asked: HashSet<String>,
    /// Keep-alive period from `JoinResponse.ping_interval` (the server drops a silent client).
    ping_every: Option<Duration>,
    next_ping: Instant,
}

/// Runs one participant until `stop` turns true, then leaves. Never panics on what the server
/// sends; a failure ends the task with [`ParticipantReport::error`] set.
pub async fn run(
    spec: Spec,
    target: Arc<Target>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> ParticipantReport {
    let identity = spec.identity.clone();
    let mut client = Client {
        peers: [None, None],
        state: State {
            spec,
            shared: shared.clone(),
            stack: target.stack,
            local_ip: target.local_ip,
            single_pc: target.single_pc,
            next_offer_id: 1,
            sections_wanted: None,
            tx: Schedule::default(),
            publisher_connected: false,
            rx: RxStats::new(),
            join: JoinTimes::default(),
            started: Instant::now(),
            out: Vec::new(),
            ready: false,
            video_sids: HashSet::new(),
            asked: HashSet::new(),
            ping_every: None,
            next_ping: Instant::now(),
        },
    };
    let result = client.session(&target, &mut stop).await;
    for peer in client.peers.iter_mut().filter_map(Option::take) {
        peer.close().await;
    }
    let error = result.err().map(|e| e.to_string());
    if error.is_some() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    ParticipantReport {
        identity,
        join: client.state.join,
        rx: client.state.rx,
        error,
    }
}

fn encode(msg: Req) -> WsMessage {
    let req = proto::SignalRequest { message: Some(msg) };
    WsMessage::Binary(req.encode_to_vec().into())
}

async fn ready(peer: &mut Option<Peer>) -> Result<(), ParticipantError> {
    match peer {
        Some(p) => p.ready().await,
        None => std::future::pending().await,
    }
}

impl Client {
    async fn session(
        &mut self,
        target: &Target,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ParticipantError> {
        let token = mint_token(target, &self.state.spec)?;
        let url = signal_url(target, &token, self.state.spec.subscribe);
        self.state.started = Instant::now();
        // A small read buffer: tungstenite zeroes it on every read attempt, and the loop
        // polls the WebSocket after every burst of media (128 KiB by default).
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let connect =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let (mut ws, _) = tokio::time::timeout(JOIN_TIMEOUT, connect)
            .await
            .map_err(|_| ParticipantError::JoinTimeout(JOIN_TIMEOUT))?
            .map_err(|e| ParticipantError::Connect {
                url: format!("{}{}", target.url.as_str().trim_end_matches('/'), "/rtc"),
                reason: e.to_string(),
            })?;
        let join_deadline = self.state.started + JOIN_TIMEOUT;
        let mut packets = Vec::new();
        loop {
            let now = Instant::now();
            let mut deadline = now + Duration::from_millis(500);
            if let Some(every) = self.state.ping_every {
                if now >= self.state.next_ping {
                    self.state.next_ping = now + every;
                    let ms = synth::ns_since(self.state.shared.epoch, now) / 1_000_000;
                    self.state.out.push(Req::Ping(ms as i64));
                }
                deadline = deadline.min(self.state.next_ping);
            }
            // Media due first, so the drive below transmits it at once.
            if self.state.publisher_connected {
                let next = self
                    .state
                    .tx
                    .due(now, self.state.shared.epoch, &mut packets);
                deadline = deadline.min(next);
                if !packets.is_empty() {
                    let n = packets.len() as u64;
                    if let Some(p) = self.peers[0].as_mut() {
                        p.send(&mut packets, now).await?;
                    }
                    packets.clear();
                    self.state.shared.tx_packets.fetch_add(n, Ordering::Relaxed);
                }
            }
            // Drive both peer connections until they only wait for time or input.
            for role in [0, 1] {
                let state = &mut self.state;
                if let Some(peer) = self.peers[role].as_mut() {
                    if let Some(t) = peer.poll(&mut |ev| state.media_event(role, ev))? {
                        deadline = deadline.min(t);
                    }
                }
            }
            for m in self.state.out.drain(..) {
                ws.send(encode(m))
                    .await
                    .map_err(|e| ParticipantError::SignalEnded(e.to_string()))?;
            }
            if !self.state.ready && now > join_deadline {
                return Err(ParticipantError::JoinTimeout(JOIN_TIMEOUT));
            }
            let deadline = tokio::time::Instant::from_std(deadline.max(now));
            let [publisher, subscriber] = &mut self.peers;
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = ready(subscriber) => r?,
                r = ready(publisher) => r?,
                msg = ws.next() => match msg {
                    Some(Ok(WsMessage::Binary(b))) => self.signal(&b).await?,
                    Some(Ok(WsMessage::Close(c))) => {
                        return Err(ParticipantError::SignalEnded(format!("closed: {c:?}")))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ParticipantError::SignalEnded(e.to_string())),
                    None => return Err(ParticipantError::SignalEnded("eof".into())),
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        let leave = proto::LeaveRequest {
            can_reconnect: false,
            reason: proto::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        };
        let _ = ws.send(encode(Req::Leave(leave))).await;
        let _ = ws.close(None).await;
        Ok(())
    }

    async fn signal(&mut self, bytes: &[u8]) -> Result<(), ParticipantError> {
        let Ok(resp) = proto::SignalResponse::decode(bytes) else {
            return Ok(());
        };
        let Some(msg) = resp.message else {
            return Ok(());
        };
        let st = &mut self.state;
        match msg {
            Resp::Join(j) => {
                st.join.signal = Some(st.started.elapsed());
                if j.ping_interval > 0 {
                    let every = Duration::from_secs(u64::from(j.ping_interval.unsigned_abs()))
                        .max(Duration::from_secs(1));
                    st.ping_every = Some(every);
                    st.next_ping = Instant::now() + every;
                }
                st.note_tracks(&j.other_participants);
                if st.spec.audio || st.spec.video || st.single_pc {
                    // On `/rtc/v1` the one connection is always ours to offer, tracks or not.
                    self.publish().await?;
                } else if !st.spec.expect_media && !st.spec.subscribe {
                    st.mark_ready();
                }
            }
            Resp::Answer(sd) => {
                if let Some(p) = self.peers[0].as_mut() {
                    p.accept_answer(&sd.sdp).await?;
                }
                if let Some((audio, video)) = st.sections_wanted.take() {
                    self.offer_sections(audio, video).await?;
                }
            }
            Resp::MediaSectionsRequirement(r) => {
                if self.peers[0].as_ref().is_some_and(Peer::offer_pending) {
                    let (a, v) = st.sections_wanted.unwrap_or((0, 0));
                    st.sections_wanted = Some((a + r.num_audios, v + r.num_videos));
                } else {
                    self.offer_sections(r.num_audios, r.num_videos).await?;
                }
            }
            Resp::Offer(sd) => {
                if self.peers[1].is_none() {
                    self.peers[1] = Some(Peer::subscriber(st.stack, st.local_ip).await?);
                }
                if let Some(p) = self.peers[1].as_mut() {
                    let answer = p.accept_offer(&sd.sdp).await?;
                    st.out.push(Req::Answer(proto::SessionDescription {
                        r#type: "answer".into(),
                        sdp: answer,
                        id: sd.id,
                        ..Default::default()
                    }));
                }
                st.ask_quality();
            }
            Resp::Trickle(t) => {
                #[derive(serde::Deserialize)]
                struct Init {
                    #[serde(default)]
                    candidate: String,
                }
                let role = if t.target == proto::SignalTarget::Subscriber as i32 {
                    1
                } else {
                    0
                };
                if let Ok(init) = serde_json::from_str::<Init>(&t.candidate_init) {
                    if let Some(p) = self.peers[role].as_mut() {
                        p.add_remote_candidate(&init.candidate).await;
                    }
                }
            }
            Resp::Update(u) => {
                st.note_tracks(&u.participants);
                st.ask_quality();
            }
            Resp::Leave(l) => return Err(ParticipantError::Left(l.reason)),
            _ => {}
        }
        Ok(())
    }

    /// Creates the publisher peer connection, announces its tracks (`AddTrackRequest`) and
    /// offers them.
    async fn publish(&mut self) -> Result<(), ParticipantError> {
        let now = Instant::now();
        let st = &mut self.state;
        let id = st.spec.identity.clone();
        let mut publish = PublishSpec {
            stream_id: format!("{id}-stream"),
            audio: None,
            video: None,
        };
        if st.spec.audio {
            let cid = format!("{id}-mic");
            let stream = st.tx.push(st.spec.stream_base, None, now);
            publish.audio = Some((cid.clone(), stream));
            st.out.push(Req::AddTrack(proto::AddTrackRequest {
                cid,
                name: "microphone".into(),
                r#type: proto::TrackType::Audio as i32,
                source: proto::TrackSource::Microphone as i32,
                ..Default::default()
            }));
        }
        if st.spec.video {
            let cid = format!("{id}-camera");
            let qualities = [
                proto::VideoQuality::Low,
                proto::VideoQuality::Medium,
                proto::VideoQuality::High,
            ];
            let mut layers = Vec::new();
            let mut streams = Vec::new();
            for (i, (l, quality)) in VIDEO_LAYERS.iter().zip(qualities).enumerate() {
                let stream = st
                    .tx
                    .push(st.spec.stream_base + 1 + i as u32, Some(*l), now);
                streams.push((*l, stream));
                layers.push(proto::VideoLayer {
                    quality: quality as i32,
                    width: l.width,
                    height: l.height,
                    bitrate: (synth::layer_pps(l) * l.payload_bytes as f64 * 8.0) as u32,
                    rid: l.rid.into(),
                    ..Default::default()
                });
            }
            publish.video = Some((cid.clone(), streams));
            let top = VIDEO_LAYERS[2];
            st.out.push(Req::AddTrack(proto::AddTrackRequest {
                cid,
                name: "camera".into(),
                r#type: proto::TrackType::Video as i32,
                source: proto::TrackSource::Camera as i32,
                width: top.width,
                height: top.height,
                layers,
                ..Default::default()
            }));
        }
        let (peer, offer) = Peer::publisher(st.stack, st.local_ip, &publish).await?;
        st.offer(offer);
        self.peers[0] = Some(peer);
        Ok(())
    }

    /// `/rtc/v1`: adds the receive sections the server asked for and offers them.
    async fn offer_sections(&mut self, audio: u32, video: u32) -> Result<(), ParticipantError> {
        let Some(peer) = self.peers[0].as_mut() else {
            return Ok(());
        };
        if let Some(sdp) = peer.add_recv_sections(audio, video)? {
            self.state.offer(sdp);
        }
        Ok(())
    }
}

/// The signalling URL: `/rtc` with query parameters, or `/rtc/v1` with a `join_request`
/// (base64url `WrappedJoinRequest`, uncompressed), as livekit-client builds them.
fn signal_url(target: &Target, token: &str, subscribe: bool) -> url::Url {
    let mut url = target.url.clone();
    if target.single_pc {
        let join = proto::JoinRequest {
            client_info: Some(proto::ClientInfo {
                sdk: proto::client_info::Sdk::Rust as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: 16,
                ..Default::default()
            }),
            connection_settings: Some(proto::ConnectionSettings {
                auto_subscribe: subscribe,
                ..Default::default()
            }),
            ..Default::default()
        };
        let wrapped = proto::WrappedJoinRequest {
            compression: proto::wrapped_join_request::Compression::None as i32,
            join_request: join.encode_to_vec(),
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrapped.encode_to_vec());
        url.set_path("/rtc/v1");
        url.query_pairs_mut()
            .append_pair("access_token", token)
            .append_pair("join_request", &b64);
    } else {
        url.set_path("/rtc");
        url.query_pairs_mut()
            .append_pair("access_token", token)
            .append_pair("auto_subscribe", if subscribe { "1" } else { "0" })
            .append_pair("protocol", "16")
            .append_pair("sdk", "rust")
            .append_pair("version", env!("CARGO_PKG_VERSION"));
    }
    url
}

impl State {
    /// Queues our offer (`SignalRequest.offer`) with the next id.
    fn offer(&mut self, sdp: String) {
        self.out.push(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id: self.next_offer_id,
            ..Default::default()
        }));
        self.next_offer_id += 1;
    }

    /// What a peer connection reports: `role` 0 is the publisher, 1 the subscriber.
    fn media_event(&mut self, role: usize, ev: PeerEvent<'_>) {
        match ev {
            PeerEvent::Connected => {
                let now = Instant::now();
                let primary = if self.spec.subscribe && !self.single_pc {
                    1
                } else {
                    0
                };
                if role == primary && self.join.connected.is_none() {
                    self.join.connected = Some(now - self.started);
                }
                // An idle subscriber (nothing to receive) is ready once its connection is up.
                if role == 1 && !self.spec.expect_media {
                    self.mark_ready();
                }
                if role == 0 {
                    if !self.spec.expect_media {
                        self.mark_ready();
                    }
                    self.publisher_connected = true;
                    self.tx.start(now);
                }
            }
            PeerEvent::Rtp { payload, at } => {
                let Some((stream, seq, sent_ns)) = synth::read_trailer(payload) else {
                    return;
                };
                if self.join.first_media.is_none() {
                    self.join.first_media = Some(at.saturating_duration_since(self.started));
                    self.mark_ready();
                }
                let at = synth::ns_since(self.shared.epoch, at);
                let latency = Duration::from_nanos(at.saturating_sub(sent_ns));
                if self.shared.measuring.load(Ordering::Relaxed) {
                    let added = self.rx.record(stream, seq, latency);
                    count_progress(&self.shared, added);
                } else {
                    count_progress(&self.shared, 0);
                }
            }
            PeerEvent::KeyframeRequest { stream } => self.tx.force_keyframe(stream),
        }
    }

    fn mark_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.shared.ready.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remembers the video tracks in the room (their sids), to ask for a simulcast layer.
    fn note_tracks(&mut self, participants: &[proto::ParticipantInfo]) {
        for p in participants {
            for t in &p.tracks {
                if t.r#type == proto::TrackType::Video as i32 {
                    self.video_sids.insert(t.sid.clone());
                }
            }
        }
    }

    /// Asks for [`Spec::quality`] on every video track not asked for yet
    /// (`UpdateTrackSettings`).
    fn ask_quality(&mut self) {
        if !self.spec.subscribe {
            return;
        }
        let new: Vec<String> = self
            .video_sids
            .iter()
            .filter(|s| !self.asked.contains(*s))
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        self.asked.extend(new.iter().cloned());
        self.out.push(Req::TrackSetting(proto::UpdateTrackSettings {
            track_sids: new,
            disabled: false,
            quality: self.spec.quality as i32,
            ..Default::default()
        }));
    }
}
