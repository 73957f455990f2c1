//! One simulated LiveKit participant: the client side of the signalling protocol (`/rtc`,
//! two peer connections, LiveKit `SignalRequest`/`SignalResponse` over a WebSocket) and a str0m
//! peer connection per role, sending synthetic media and measuring what arrives.
//!
//! Everything for one participant runs in one task on the tool's single-threaded runtime: the
//! WebSocket, the publisher and subscriber `Rtc`s and their UDP sockets. A participant is a
//! publisher (sends audio and/or simulcast video, subscribes to nothing), a subscriber, or both.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as proto;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::stats::{count_progress, JoinTimes, ParticipantReport, RxStats, Shared};
use super::synth::{self, LayerShape, VIDEO_LAYERS};

/// How long a participant waits for its join to complete (signalling, ICE, DTLS).
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest datagram we read.
const MAX_DATAGRAM: usize = 2048;

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

/// One outgoing stream: audio, or one simulcast layer.
struct TxStream {
    mid: Mid,
    rid: Option<Rid>,
    pt: str0m::media::Pt,
    id: u32,
    shape: Option<LayerShape>,
    next_due: Instant,
    seq: u64,
    trailer_seq: u32,
    rtp_ts: u32,
    frame: u64,
    next_keyframe: Instant,
    force_keyframe: bool,
}

/// A peer connection: the `Rtc` and its socket.
struct Pc {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    connected: bool,
}

impl Pc {
    fn new(local_ip: IpAddr, now: Instant) -> Result<Self, ParticipantError> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std_sock)?;
        let local = sock.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| ParticipantError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Self {
            rtc,
            sock,
            local,
            pending: None,
            connected: false,
        })
    }
}

/// The client's half of a session.
struct Client {
    spec: Spec,
    shared: Arc<Shared>,
    publisher: Option<Pc>,
    subscriber: Option<Pc>,
    tx: Vec<TxStream>,
    rx: RxStats,
    join: JoinTimes,
    started: Instant,
    out: Vec<Req>,
    ready: bool,
    video_sids: HashSet<String>,
    asked: HashSet<String>,
    buf: Vec<u8>,
    local_ip: IpAddr,
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
        spec,
        shared: shared.clone(),
        publisher: None,
        subscriber: None,
        tx: Vec::new(),
        rx: RxStats::new(),
        join: JoinTimes::default(),
        started: Instant::now(),
        out: Vec::new(),
        ready: false,
        video_sids: HashSet::new(),
        asked: HashSet::new(),
        buf: vec![0u8; MAX_DATAGRAM],
        local_ip: target.local_ip,
        ping_every: None,
        next_ping: Instant::now(),
    };
    let result = client.session(&target, &mut stop).await;
    let error = result.err().map(|e| e.to_string());
    if error.is_some() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    ParticipantReport {
        identity,
        join: client.join,
        rx: client.rx,
        error,
    }
}

fn encode(msg: Req) -> WsMessage {
    let req = proto::SignalRequest { message: Some(msg) };
    WsMessage::Binary(req.encode_to_vec().into())
}

async fn readable(pc: &Option<Pc>) -> std::io::Result<()> {
    match pc {
        Some(pc) => pc.sock.readable().await,
        None => std::future::pending().await,
    }
}

impl Client {
    async fn session(
        &mut self,
        target: &Target,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), ParticipantError> {
        let token = mint_token(target, &self.spec)?;
        let mut url = target.url.clone();
        url.set_path("/rtc");
        url.query_pairs_mut()
            .append_pair("access_token", &token)
            .append_pair("auto_subscribe", if self.spec.subscribe { "1" } else { "0" })
            .append_pair("protocol", "16")
            .append_pair("sdk", "rust")
            .append_pair("version", env!("CARGO_PKG_VERSION"));
        self.started = Instant::now();
        // A small read buffer: tungstenite zeroes it on every read attempt, and the loop
        // polls the WebSocket after every burst of media (128 KiB by default).
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        let (mut ws, _) = tokio::time::timeout(JOIN_TIMEOUT, connect)
            .await
            .map_err(|_| ParticipantError::JoinTimeout(JOIN_TIMEOUT))?
            .map_err(|e| ParticipantError::Connect {
                url: format!("{}{}", target.url.as_str().trim_end_matches('/'), "/rtc"),
                reason: e.to_string(),
            })?;
        let join_deadline = self.started + JOIN_TIMEOUT;
        let mut next_tick = Instant::now();
        loop {
            // Drive both peer connections until they only wait for time or input.
            let mut deadline = next_tick + Duration::from_millis(500);
            for role in [0, 1] {
                if let Some(t) = self.drive(role)? {
                    deadline = deadline.min(t);
                }
            }
            let now = Instant::now();
            if let Some(every) = self.ping_every {
                if now >= self.next_ping {
                    self.next_ping = now + every;
                    let ms = synth::ns_since(self.shared.epoch, now) / 1_000_000;
                    self.out.push(Req::Ping(ms as i64));
                }
                deadline = deadline.min(self.next_ping);
            }
            if self.publisher.as_ref().is_some_and(|p| p.connected) {
                next_tick = self.send_due(now);
                deadline = deadline.min(next_tick);
            }
            for m in self.out.drain(..) {
                ws.send(encode(m))
                    .await
                    .map_err(|e| ParticipantError::SignalEnded(e.to_string()))?;
            }
            if !self.ready && now > join_deadline {
                return Err(ParticipantError::JoinTimeout(JOIN_TIMEOUT));
            }
            let deadline = tokio::time::Instant::from_std(deadline.max(now));
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = readable(&self.subscriber) => { r?; self.receive(1)?; }
                r = readable(&self.publisher) => { r?; self.receive(0)?; }
                msg = ws.next() => match msg {
                    Some(Ok(WsMessage::Binary(b))) => self.signal(&b)?,
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

    fn pc(&mut self, role: usize) -> Option<&mut Pc> {
        if role == 0 {
            self.publisher.as_mut()
        } else {
            self.subscriber.as_mut()
        }
    }

    /// Reads every datagram waiting on a peer connection's socket into its `Rtc`.
    fn receive(&mut self, role: usize) -> Result<(), ParticipantError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            loop {
                let Some(pc) = self.pc(role) else {
                    return Ok(());
                };
                match pc.sock.try_recv_from(&mut buf) {
                    Ok((n, source)) => {
                        let now = Instant::now();
                        let Ok(contents) = buf[..n].try_into() else {
                            continue;
                        };
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination: pc.local,
                                contents,
                            },
                        );
                        if pc.rtc.accepts(&input) {
                            pc.rtc
                                .handle_input(input)
                                .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                        }
                        // str0m keeps one input's output until polled: poll after each.
                        self.drive(role)?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        })();
        self.buf = buf;
        result
    }

    /// Polls one `Rtc` until it waits: sends its datagrams, handles its events. Returns when
    /// it next wants a timeout.
    fn drive(&mut self, role: usize) -> Result<Option<Instant>, ParticipantError> {
        let now = Instant::now();
        loop {
            let Some(pc) = self.pc(role) else {
                return Ok(None);
            };
            let out = pc
                .rtc
                .poll_output()
                .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
            match out {
                Output::Timeout(t) => {
                    if t <= now {
                        pc.rtc
                            .handle_input(Input::Timeout(now))
                            .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                        continue;
                    }
                    return Ok(Some(t));
                }
                Output::Transmit(t) => {
                    // A full send buffer drops the datagram, as a network would.
                    let _ = pc.sock.try_send_to(&t.contents, t.destination);
                }
                Output::Event(ev) => self.event(role, ev, now)?,
            }
        }
    }

    fn event(&mut self, role: usize, ev: Event, now: Instant) -> Result<(), ParticipantError> {
        match ev {
            Event::Connected => {
                if let Some(pc) = self.pc(role) {
                    pc.connected = true;
                }
                let primary = if self.spec.subscribe { 1 } else { 0 };
                if role == primary && self.join.connected.is_none() {
                    self.join.connected = Some(now - self.started);
                }
                if role == 0 && !self.spec.expect_media {
                    self.mark_ready();
                }
                if role == 0 {
                    self.start_media(now);
                }
            }
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                return Err(ParticipantError::Rtc("ICE disconnected".into()));
            }
            Event::RtpPacket(pkt) => {
                let Some((stream, seq, sent_ns)) = synth::read_trailer(&pkt.payload) else {
                    return Ok(());
                };
                if self.join.first_media.is_none() {
                    self.join.first_media = Some(now - self.started);
                    self.mark_ready();
                }
                let at = synth::ns_since(self.shared.epoch, Instant::now());
                let latency = Duration::from_nanos(at.saturating_sub(sent_ns));
                if self.shared.measuring.load(Ordering::Relaxed) {
                    let added = self.rx.record(stream, seq, latency);
                    count_progress(&self.shared, added);
                } else {
                    count_progress(&self.shared, 0);
                }
            }
            Event::KeyframeRequest(req) => {
                for s in &mut self.tx {
                    if s.mid == req.mid && s.rid == req.rid {
                        s.force_keyframe = true;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn mark_ready(&mut self) {
        if !self.ready {
            self.ready = true;
            self.shared.ready.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn signal(&mut self, bytes: &[u8]) -> Result<(), ParticipantError> {
        let Ok(resp) = proto::SignalResponse::decode(bytes) else {
            return Ok(());
        };
        let Some(msg) = resp.message else {
            return Ok(());
        };
        match msg {
            Resp::Join(j) => {
                self.join.signal = Some(self.started.elapsed());
                if j.ping_interval > 0 {
                    let every = Duration::from_secs(u64::from(j.ping_interval as u32)).max(Duration::from_secs(1));
                    self.ping_every = Some(every);
                    self.next_ping = Instant::now() + every;
                }
                self.note_tracks(&j.other_participants);
                if self.spec.audio || self.spec.video {
                    self.publish()?;
                } else if !self.spec.expect_media {
                    self.mark_ready();
                }
            }
            Resp::Answer(sd) => {
                let answer = SdpAnswer::from_sdp_string(&sd.sdp)
                    .map_err(|e| ParticipantError::Rtc(format!("bad answer: {e}")))?;
                if let Some(pc) = self.publisher.as_mut() {
                    if let Some(pending) = pc.pending.take() {
                        pc.rtc
                            .sdp_api()
                            .accept_answer(pending, answer)
                            .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                    }
                }
            }
            Resp::Offer(sd) => {
                let offer = SdpOffer::from_sdp_string(&sd.sdp)
                    .map_err(|e| ParticipantError::Rtc(format!("bad offer: {e}")))?;
                if self.subscriber.is_none() {
                    self.subscriber = Some(Pc::new(self.local_ip()?, Instant::now())?);
                }
                if let Some(pc) = self.subscriber.as_mut() {
                    let answer = pc
                        .rtc
                        .sdp_api()
                        .accept_offer(offer)
                        .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                    self.out.push(Req::Answer(proto::SessionDescription {
                        r#type: "answer".into(),
                        sdp: answer.to_sdp_string(),
                        id: sd.id,
                        ..Default::default()
                    }));
                }
                self.ask_quality();
            }
            Resp::Trickle(t) => {
                #[derive(serde::Deserialize)]
                struct Init {
                    #[serde(default)]
                    candidate: String,
                }
                let role = if t.target == proto::SignalTarget::Subscriber as i32 { 1 } else { 0 };
                if let Ok(init) = serde_json::from_str::<Init>(&t.candidate_init) {
                    if let Ok(c) = Candidate::from_sdp_string(&init.candidate) {
                        if let Some(pc) = self.pc(role) {
                            pc.rtc.add_remote_candidate(c);
                        }
                    }
                }
            }
            Resp::Update(u) => {
                self.note_tracks(&u.participants);
                self.ask_quality();
            }
            Resp::Leave(l) => return Err(ParticipantError::Left(l.reason)),
            _ => {}
        }
        Ok(())
    }

    fn local_ip(&self) -> Result<IpAddr, ParticipantError> {
        Ok(self.local_ip)
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

    /// Creates the publisher peer connection, announces its tracks (`AddTrackRequest`) and
    /// offers them.
    fn publish(&mut self) -> Result<(), ParticipantError> {
        let now = Instant::now();
        let mut pc = Pc::new(self.local_ip, now)?;
        let stream_id = format!("{}-stream", self.spec.identity);
        let pt_of = |rtc: &Rtc, codec: Codec| {
            rtc.codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
        };
        let opus = pt_of(&pc.rtc, Codec::Opus)
            .ok_or_else(|| ParticipantError::Rtc("no Opus payload type".into()))?;
        let vp8 = pt_of(&pc.rtc, Codec::Vp8)
            .ok_or_else(|| ParticipantError::Rtc("no VP8 payload type".into()))?;
        // One change set for all sections: each `sdp_api()` call starts a new one.
        let mut api = pc.rtc.sdp_api();
        if self.spec.audio {
            let cid = format!("{}-mic", self.spec.identity);
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(stream_id.clone()),
                Some(cid.clone()),
                None,
            );
            self.tx.push(TxStream::new(mid, None, opus, self.spec.stream_base, None, now));
            self.out.push(Req::AddTrack(proto::AddTrackRequest {
                cid,
                name: "microphone".into(),
                r#type: proto::TrackType::Audio as i32,
                source: proto::TrackSource::Microphone as i32,
                ..Default::default()
            }));
        }
        if self.spec.video {
            let cid = format!("{}-camera", self.spec.identity);
            let mut sim = Simulcast::new();
            for l in &VIDEO_LAYERS {
                sim.add_send_layer(SimulcastLayer::new(l.rid));
            }
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(stream_id.clone()),
                Some(cid.clone()),
                Some(sim),
            );
            let qualities = [
                proto::VideoQuality::Low,
                proto::VideoQuality::Medium,
                proto::VideoQuality::High,
            ];
            let mut layers = Vec::new();
            for (i, l) in VIDEO_LAYERS.iter().enumerate() {
                self.tx.push(TxStream::new(
                    mid,
                    Some(Rid::from(l.rid)),
                    vp8,
                    self.spec.stream_base + 1 + i as u32,
                    Some(*l),
                    now,
                ));
                layers.push(proto::VideoLayer {
                    quality: qualities[i] as i32,
                    width: l.width,
                    height: l.height,
                    bitrate: (synth::layer_pps(l) * l.payload_bytes as f64 * 8.0) as u32,
                    rid: l.rid.into(),
                    ..Default::default()
                });
            }
            let top = VIDEO_LAYERS[2];
            self.out.push(Req::AddTrack(proto::AddTrackRequest {
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
        let Some((offer, pending)) = api.apply() else {
            return Err(ParticipantError::Rtc("nothing to offer".into()));
        };
        pc.pending = Some(pending);
        self.out.push(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: 1,
            ..Default::default()
        }));
        self.publisher = Some(pc);
        Ok(())
    }

    /// Starts the clocks of every outgoing stream (first video frame is a keyframe).
    fn start_media(&mut self, now: Instant) {
        for s in &mut self.tx {
            s.next_due = now;
            s.next_keyframe = now;
        }
    }

    /// Writes every packet that is due; returns when the next one is.
    fn send_due(&mut self, now: Instant) -> Instant {
        let epoch = self.shared.epoch;
        let mut next = now + Duration::from_secs(1);
        let mut wrote = 0u64;
        let Some(pc) = self.publisher.as_mut() else {
            return next;
        };
        for s in &mut self.tx {
            // Catch up at most a few intervals after a stall rather than bursting.
            let mut rounds = 0;
            while s.next_due <= now && rounds < 4 {
                rounds += 1;
                wrote += s.emit(&mut pc.rtc, now, epoch);
            }
            if s.next_due < now {
                s.next_due = now;
            }
            next = next.min(s.next_due);
        }
        if wrote > 0 {
            self.shared.tx_packets.fetch_add(wrote, Ordering::Relaxed);
            let _ = self.drive(0);
        }
        next
    }
}

impl TxStream {
    fn new(
        mid: Mid,
        rid: Option<Rid>,
        pt: str0m::media::Pt,
        id: u32,
        shape: Option<LayerShape>,
        now: Instant,
    ) -> Self {
        Self {
            mid,
            rid,
            pt,
            id,
            shape,
            next_due: now + Duration::from_secs(3600),
            seq: u64::from(rand_u16()),
            trailer_seq: 0,
            rtp_ts: u32::from(rand_u16()) << 8,
            frame: 0,
            next_keyframe: now,
            force_keyframe: false,
        }
    }

    /// Writes one audio packet or one video frame (its packets); returns packets written.
    fn emit(&mut self, rtc: &mut Rtc, now: Instant, epoch: Instant) -> u64 {
        let sent_ns = synth::ns_since(epoch, now);
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(self.mid, self.rid) else {
            // Not negotiated (yet): try again next interval.
            self.next_due += synth::AUDIO_PACKET_INTERVAL;
            return 0;
        };
        match self.shape {
            None => {
                let mut payload = vec![0u8; synth::AUDIO_PAYLOAD_BYTES];
                synth::write_trailer(&mut payload, self.id, self.trailer_seq, sent_ns);
                tx.write_rtp(RtpWrite::new(self.pt, self.seq.into(), self.rtp_ts, now, payload));
                self.seq += 1;
                self.trailer_seq += 1;
                self.rtp_ts = self.rtp_ts.wrapping_add(960);
                self.next_due += synth::AUDIO_PACKET_INTERVAL;
                1
            }
            Some(shape) => {
                let n = shape.packets_per_frame[(self.frame % shape.packets_per_frame.len() as u64) as usize];
                let key = self.force_keyframe || now >= self.next_keyframe;
                for i in 0..n {
                    let mut payload = vec![0u8; shape.payload_bytes];
                    synth::write_vp8_head(&mut payload, i == 0, key, shape.width, shape.height);
                    synth::write_trailer(&mut payload, self.id, self.trailer_seq, sent_ns);
                    tx.write_rtp(
                        RtpWrite::new(self.pt, self.seq.into(), self.rtp_ts, now, payload)
                            .marker(i + 1 == n)
                            .nackable(true),
                    );
                    self.seq += 1;
                    self.trailer_seq += 1;
                }
                if key {
                    self.force_keyframe = false;
                    self.next_keyframe = now + synth::KEYFRAME_INTERVAL;
                }
                self.frame += 1;
                self.rtp_ts = self.rtp_ts.wrapping_add(90_000 / shape.fps);
                self.next_due += Duration::from_secs(1) / shape.fps;
                u64::from(n)
            }
        }
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16
}
