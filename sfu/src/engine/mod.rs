//! The media thread: owns the UDP socket, every session, track and subscription. Datagrams are
//! routed to their session by ICE ufrag (STUN) and then by source address; RTP from publishers
//! is rewritten by each subscription's [`Forwarder`] and written to the subscriber's session.
//! Commands arrive from the signalling adapters over one channel; events go back per participant.
//!
//! Split by concern: this file has the loop, network I/O, demultiplexing and session events;
//! `media.rs` the packet path (forwarding, keyframe requests, data); `negotiation.rs` the
//! commands (join, SDP offer/answer, subscriptions, leaving).

mod media;
mod negotiation;
mod outbox;

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, Reliability};
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output};
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::codec::{is_keyframe_start, MediaCodec};
use crate::forwarder::{Forwarder, LayerPacket};
use crate::metrics::SfuMetrics;
use crate::session::{Session, SessionKey};
use crate::{
    Command, DataKind, DataRouter, JoinParams, ParticipantId, PcLayout, PeerRole, SfuEvent,
    TrackId, TrackKind,
};

/// Datagrams read per `recvmmsg` batch.
const BATCH: usize = 16;
/// Bytes per receive buffer (room for a GRO-coalesced batch).
const RECV_BUF: usize = 64 * 1024;
/// Batches read before commands and timers get a turn.
const MAX_BATCHES_PER_WAKE: usize = 64;
/// A simulcast layer with no packet for this long is considered stopped.
const LAYER_STALE: Duration = Duration::from_millis(1500);
/// Minimum spacing of keyframe requests to a publisher, per layer.
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// Longest sleep when no session has an earlier timer.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// How long ICE may stay `Disconnected` (consent lost, or mid ICE restart) before the peer
/// connection counts as failed.
const ICE_RECOVERY_GRACE: Duration = Duration::from_secs(4);

pub(crate) fn spawn(
    socket: std::net::UdpSocket,
    candidates: Vec<SocketAddr>,
    rx: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<SfuMetrics>,
) {
    let spawned = std::thread::Builder::new()
        .name("switchboard-media".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start media runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match Engine::new(socket, candidates, metrics) {
                    Ok(engine) => engine.run(rx).await,
                    Err(e) => tracing::error!(error = %e, "cannot start media engine"),
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot spawn media thread");
    }
}

struct Participant {
    room: Arc<str>,
    identity: Arc<str>,
    events: mpsc::UnboundedSender<SfuEvent>,
    router: Box<dyn DataRouter>,
    publisher: SessionKey,
    subscriber: Option<SessionKey>,
    layout: PcLayout,
    published: Vec<TrackId>,
    subscribed: Vec<TrackId>,
}

struct Track {
    publisher: ParticipantId,
    session: SessionKey,
    mid: Mid,
    kind: TrackKind,
    rids: Vec<String>,
    layer_seen: [Option<Instant>; 3],
    last_pli: [Option<Instant>; 3],
    params: Option<PayloadParams>,
    codec: MediaCodec,
    subscribers: Vec<ParticipantId>,
}

impl Track {
    /// Highest simulcast layer that is flowing now (0 when none is).
    fn target_layer(&self, now: Instant) -> u8 {
        self.targets(now)[2]
    }

    /// The layer to forward for each cap 0..=2: the highest flowing layer at or below the
    /// cap, else the lowest flowing one above it (0 when none flows).
    fn targets(&self, now: Instant) -> [u8; 3] {
        let live = |l: u8| {
            self.layer_seen[usize::from(l)]
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
        };
        std::array::from_fn(|cap| {
            let cap = cap as u8;
            (0..=cap)
                .rev()
                .find(|&l| live(l))
                .or_else(|| (cap + 1..3).find(|&l| live(l)))
                .unwrap_or(0)
        })
    }
}

/// See [`Engine::early_settings`].
#[derive(Debug, Default, Clone, Copy)]
struct EarlySettings {
    paused: Option<bool>,
    max_layer: Option<u8>,
}

struct Subscription {
    session: SessionKey,
    /// msid stream id and track id the subscriber's section carries (`PA_…|TR_…`, `TR_…`).
    stream_id: String,
    track_label: String,
    mid: Option<Mid>,
    ready: bool,
    paused: bool,
    /// Highest simulcast layer this subscriber asked for (0..=2, clamped where it is set).
    max_layer: u8,
    forwarder: Forwarder,
    /// Last publisher PT and the subscriber PT it maps to.
    pt_cache: Option<(Pt, Pt)>,
}

struct Engine {
    socket: tokio::net::UdpSocket,
    udp: UdpSocketState,
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    metrics: Arc<SfuMetrics>,
    next_session: u64,
    sessions: HashMap<SessionKey, Session>,
    by_ufrag: HashMap<String, SessionKey>,
    by_addr: HashMap<SocketAddr, SessionKey>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<Arc<str>, Vec<ParticipantId>>,
    tracks: HashMap<TrackId, Track>,
    subs: HashMap<(ParticipantId, TrackId), Subscription>,
    /// Settings (`set_paused`, `set_max_layer`) that arrived before their subscription
    /// existed; applied when it is created.
    early_settings: HashMap<(ParticipantId, TrackId), EarlySettings>,
    dirty: Vec<SessionKey>,
    /// Scratch for [`Engine::drain_dirty`] (kept to reuse its allocation).
    drain_round: Vec<SessionKey>,
    /// Datagrams transmitted while draining, sent in batches (`sendmmsg`).
    outbox: outbox::Outbox,
    due: Vec<SessionKey>,
    bufs: Vec<Vec<u8>>,
}

impl Engine {
    fn new(
        socket: std::net::UdpSocket,
        candidates: Vec<SocketAddr>,
        metrics: Arc<SfuMetrics>,
    ) -> std::io::Result<Self> {
        let local = socket.local_addr()?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let udp = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket,
            udp,
            local,
            candidates,
            metrics,
            next_session: 1,
            sessions: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            subs: HashMap::new(),
            early_settings: HashMap::new(),
            dirty: Vec::with_capacity(64),
            drain_round: Vec::with_capacity(64),
            outbox: outbox::Outbox::new(local),
            due: Vec::with_capacity(64),
            bufs: vec![vec![0u8; RECV_BUF]; BATCH],
        })
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        tracing::info!(addr = %self.local, "media engine running");
        loop {
            let deadline = self.next_deadline(Instant::now());
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.read_datagrams();
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.handle_timeouts(Instant::now());
            self.drain_dirty();
        }
        tracing::info!("media engine stopped");
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        self.sessions
            .values()
            .map(|s| s.next_timeout)
            .min()
            .unwrap_or(now + IDLE_WAKE)
            .min(now + IDLE_WAKE)
    }

    // ---------------------------------------------------------------- network input

    fn read_datagrams(&mut self) {
        let mut bufs = std::mem::take(&mut self.bufs);
        let mut meta = [RecvMeta::default(); BATCH];
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let n = {
                let mut slices: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                for (slice, buf) in slices.iter_mut().zip(bufs.iter_mut()) {
                    *slice = IoSliceMut::new(buf.as_mut_slice());
                }
                let udp = &self.udp;
                let sock = &self.socket;
                match sock.try_io(Interest::READABLE, || {
                    udp.recv(sock.into(), &mut slices, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive failed");
                        break;
                    }
                }
            };
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = m.stride.max(1);
                let dst_ip = m.dst_ip.unwrap_or(self.local.ip());
                let destination = SocketAddr::new(dst_ip, self.local.port());
                for chunk in buf[..m.len.min(buf.len())].chunks(stride) {
                    self.datagram(m.addr, destination, chunk);
                }
            }
            // Send what this batch fanned out before reading more: bounds the packets queued
            // in subscriber sessions (and their delay) to one batch's worth.
            self.drain_dirty();
        }
        self.bufs = bufs;
    }

    fn datagram(&mut self, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let source = normalise(source);
        let destination = normalise(destination);
        let Some(key) = self.route(source, data) else {
            SfuMetrics::inc(&self.metrics.dropped_datagrams);
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(data) else {
            SfuMetrics::inc(&self.metrics.dropped_datagrams);
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        match session.guard(|rtc| rtc.handle_input(input)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                SfuMetrics::inc(&self.metrics.dropped_datagrams);
                tracing::trace!(error = %e, "datagram rejected by session");
            }
            Err(_) => {
                let participant = session.participant;
                self.session_panicked(participant);
                return;
            }
        }
        // Only this session now: its packets fan out into subscribers' queues, which are
        // drained once after the whole batch of datagrams (`run`).
        self.drain(key);
    }

    /// Finds the session a datagram belongs to: STUN by the USERNAME's local ufrag (so a client
    /// that restarts from the same address reaches its new session), everything else by source.
    fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<SessionKey> {
        let is_stun = data.len() >= 20 && data[0] < 2;
        if is_stun {
            let msg = str0m::ice::StunMessage::parse(data).ok()?;
            if let Some((local, _remote)) = msg.split_username() {
                let key = *self.by_ufrag.get(local)?;
                if self.by_addr.insert(source, key) != Some(key) {
                    if let Some(s) = self.sessions.get_mut(&key) {
                        if !s.addrs.contains(&source) {
                            s.addrs.push(source);
                        }
                    }
                }
                return Some(key);
            }
        }
        self.by_addr.get(&source).copied()
    }

    fn handle_timeouts(&mut self, now: Instant) {
        self.due.clear();
        self.due.extend(
            self.sessions
                .iter()
                .filter(|(_, s)| s.next_timeout <= now)
                .map(|(k, _)| *k),
        );
        for i in 0..self.due.len() {
            let key = self.due[i];
            let Some(session) = self.sessions.get_mut(&key) else {
                continue;
            };
            if session
                .ice_lost_at
                .is_some_and(|t| now.saturating_duration_since(t) > ICE_RECOVERY_GRACE)
            {
                let (participant, role) = (session.participant, session.role);
                self.fail_participant(participant, role, "ice consent lost".into());
                continue;
            }
            match session.guard(|rtc| rtc.handle_input(Input::Timeout(now))) {
                Ok(Ok(())) => self.dirty.push(key),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "session timeout handling failed");
                    self.dirty.push(key);
                }
                Err(_) => {
                    let participant = session.participant;
                    self.session_panicked(participant);
                }
            }
        }
    }

    // ---------------------------------------------------------------- output

    /// Drains every session marked dirty, each once per round however many packets were
    /// written to it: a subscriber's queued packets go out in one poll loop, with one timeout
    /// computation, instead of one per packet. Draining can mark more sessions (a publisher's
    /// packets fan out), hence the rounds.
    fn drain_dirty(&mut self) {
        let mut round = std::mem::take(&mut self.drain_round);
        while !self.dirty.is_empty() {
            std::mem::swap(&mut round, &mut self.dirty);
            round.sort_unstable();
            round.dedup();
            for key in round.drain(..) {
                self.drain(key);
            }
        }
        self.drain_round = round;
        self.flush_outbox();
    }

    /// Sends the datagrams queued by [`Engine::drain`].
    fn flush_outbox(&mut self) {
        let f = self.outbox.flush(&self.socket);
        if f.dropped > 0 {
            self.metrics
                .dropped_datagrams
                .fetch_add(f.dropped, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Polls one session until it reports its next timeout, sending what it transmits and
    /// handling its events.
    fn drain(&mut self, key: SessionKey) {
        loop {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            let out = match session.guard(|rtc| rtc.poll_output()) {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "session poll failed");
                    let participant = session.participant;
                    let role = session.role;
                    self.fail_participant(participant, role, format!("webrtc error: {e}"));
                    return;
                }
                Err(_) => {
                    let participant = session.participant;
                    self.session_panicked(participant);
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    session.next_timeout = t;
                    if !session.rtc.is_alive() {
                        let participant = session.participant;
                        let role = session.role;
                        self.fail_participant(participant, role, "peer connection closed".into());
                    }
                    return;
                }
                Output::Transmit(t) => {
                    self.outbox
                        .push(t.destination, t.source.ip(), t.contents.into());
                    if self.outbox.len() >= outbox::BATCH {
                        self.flush_outbox();
                    }
                }
                Output::Event(e) => self.event(key, e),
            }
        }
    }

    fn emit(&self, participant: ParticipantId, event: SfuEvent) {
        if let Some(p) = self.participants.get(&participant) {
            // The receiver is gone only while the participant is being removed.
            let _ = p.events.send(event);
        }
    }

    fn event(&mut self, key: SessionKey, event: Event) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let participant = session.participant;
        let role = session.role;
        match event {
            Event::RtpPacket(pkt) => self.rtp(key, pkt),
            Event::Connected => {
                session.connected = true;
                self.emit(participant, SfuEvent::Connected { role });
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // An ICE restart (new remote credentials) drops every pair first; the client's
                // checks with the new ufrag bring it back. Only a loss that lasts ends it.
                tracing::debug!(participant = participant.0, ?role, "ice disconnected");
                session.ice_lost_at.get_or_insert_with(Instant::now);
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => session.ice_lost_at = None,
            Event::MediaAdded(added) if role == PeerRole::Publisher => {
                self.bind_media(key, added.mid, added.kind);
            }
            Event::MediaChanged(changed)
                if role == PeerRole::Publisher && !changed.direction.is_receiving() =>
            {
                if let Some(track) = session.mid_tracks.get(&changed.mid).copied() {
                    self.end_track(track);
                }
            }
            Event::KeyframeRequest(req) => {
                if let Some(track) = session.mid_subs.get(&req.mid).copied() {
                    let layer = self
                        .subs
                        .get(&(participant, track))
                        .and_then(|s| s.forwarder.current_layer());
                    self.request_keyframe(track, layer, req.kind);
                }
            }
            Event::ChannelOpen(id, label) => {
                let kind = match label.as_str() {
                    "_reliable" => DataKind::Reliable,
                    "_lossy" => DataKind::Lossy,
                    _ => return,
                };
                session.channels.insert(id, kind);
                match kind {
                    DataKind::Reliable => session.reliable = Some(id),
                    DataKind::Lossy => session.lossy = Some(id),
                }
            }
            Event::ChannelBufferedAmountLow(_) => self.flush_data(key),
            Event::ChannelClose(id) => {
                if let Some(kind) = session.channels.remove(&id) {
                    if session.channel_for(kind) == Some(id) {
                        match kind {
                            DataKind::Reliable => session.reliable = None,
                            DataKind::Lossy => session.lossy = None,
                        }
                    }
                }
            }
            Event::ChannelData(data) => {
                if let Some(kind) = session.channels.get(&data.id).copied() {
                    self.data(participant, kind, &data.data);
                }
            }
            Event::Closed => {
                self.end_participant(participant, role, "closed by peer".into(), true);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- media
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4, so they match candidates.
fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
