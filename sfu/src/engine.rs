//! The media thread: owns the UDP socket, every session, track and subscription. Datagrams are
//! routed to their session by ICE ufrag (STUN) and then by source address; RTP from publishers
//! is rewritten by each subscription's [`Forwarder`] and written to the subscriber's session.
//! Commands arrive from the signalling adapters over one channel; events go back per participant.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
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
use crate::session::{QueuedChange, Session, SessionKey};
use crate::{
    Command, DataKind, DataRouter, JoinParams, ParticipantId, PeerRole, SfuEvent, TrackId,
    TrackKind,
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
        (0..3u8)
            .rev()
            .find(|&l| {
                self.layer_seen[usize::from(l)]
                    .is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
            })
            .unwrap_or(0)
    }
}

struct Subscription {
    session: SessionKey,
    mid: Option<Mid>,
    ready: bool,
    paused: bool,
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
    dirty: Vec<SessionKey>,
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
            dirty: Vec::with_capacity(64),
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
        self.dirty.push(key);
        self.drain_dirty();
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

    fn drain_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            self.drain(key);
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
                    let transmit = UdpTransmit {
                        destination: t.destination,
                        ecn: None,
                        contents: &t.contents,
                        segment_size: None,
                        src_ip: Some(t.source.ip()),
                    };
                    if self.udp.try_send((&self.socket).into(), &transmit).is_err() {
                        SfuMetrics::inc(&self.metrics.dropped_datagrams);
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
                self.fail_participant(participant, role, "ice consent lost".into());
            }
            Event::MediaAdded(added) if role == PeerRole::Publisher => {
                self.bind_media(key, added.mid, added.kind);
            }
            Event::MediaChanged(changed) if role == PeerRole::Publisher => {
                if !changed.direction.is_receiving() {
                    if let Some(track) = session.mid_tracks.get(&changed.mid).copied() {
                        self.end_track(track);
                    }
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
                self.fail_participant(participant, role, "peer connection closed".into());
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- media

    /// Binds a media section the client offers for sending to one of its pending tracks: by
    /// msid track id (= `AddTrackRequest.cid`), else the first pending track of the same kind.
    fn bind_media(&mut self, key: SessionKey, mid: Mid, kind: MediaKind) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        if session.mid_tracks.contains_key(&mid) {
            return;
        }
        let Some(media) = session.rtc.media(mid) else {
            return;
        };
        if !media.direction().is_receiving() {
            return;
        }
        let msid_track = media.track_id().to_string();
        let want = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let idx = session
            .pending
            .iter()
            .position(|p| p.cid == msid_track && p.kind == want)
            .or_else(|| session.pending.iter().position(|p| p.kind == want));
        let Some(idx) = idx else {
            tracing::debug!(%mid, "offered media section matches no announced track");
            return;
        };
        let pending = session.pending.remove(idx);
        session.mid_tracks.insert(mid, pending.track);
        let participant = session.participant;
        self.tracks.insert(
            pending.track,
            Track {
                publisher: participant,
                session: key,
                mid,
                kind: pending.kind,
                rids: pending.rids,
                layer_seen: [None; 3],
                last_pli: [None; 3],
                params: None,
                codec: MediaCodec::Other,
                subscribers: Vec::new(),
            },
        );
        if let Some(p) = self.participants.get_mut(&participant) {
            p.published.push(pending.track);
        }
        SfuMetrics::add(&self.metrics.published_tracks, 1);
    }

    /// The packet path: one publisher packet, fanned out to every subscription of its track.
    fn rtp(&mut self, key: SessionKey, pkt: RtpPacket) {
        SfuMetrics::inc(&self.metrics.rtp_in);
        let now = pkt.timestamp;
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let (track_id, layer) = match session.ssrc_map.get(&ssrc) {
            Some(v) => *v,
            None => {
                let (mid, rid) = {
                    let mut api = session.rtc.direct_api();
                    let Some(rx) = api.stream_rx(&ssrc) else {
                        return;
                    };
                    (rx.mid(), rx.rid())
                };
                let Some(track_id) = session.mid_tracks.get(&mid).copied() else {
                    return;
                };
                let layer = match (rid, self.tracks.get(&track_id)) {
                    (Some(rid), Some(t)) => t
                        .rids
                        .iter()
                        .position(|r| r.as_str() == &*rid)
                        .unwrap_or(0)
                        .min(2) as u8,
                    _ => 0,
                };
                session.ssrc_map.insert(ssrc, (track_id, layer));
                (track_id, layer)
            }
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        track.layer_seen[usize::from(layer)] = Some(now);
        let pt = pkt.header.payload_type;
        if track.params.is_none_or(|p| p.pt() != pt) {
            let Some(params) = session.rtc.codec_config().find(|p| p.pt() == pt).copied() else {
                return;
            };
            let first = track.params.is_none();
            track.params = Some(params);
            track.codec = MediaCodec::from_str0m(params.spec().codec);
            if first {
                let mime = track.codec.mime(track.kind == TrackKind::Video).to_string();
                if let Some(p) = self.participants.get(&track.publisher) {
                    let _ = p.events.send(SfuEvent::TrackLive {
                        track: track_id,
                        mime,
                    });
                }
            }
        }
        let Some(params) = track.params else {
            return;
        };
        let video = track.kind == TrackKind::Video;
        let target = track.target_layer(now);
        let keyframe = video && is_keyframe_start(track.codec, &pkt.payload);
        let lp = LayerPacket {
            layer,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            keyframe,
            now,
        };
        for sub_pid in &track.subscribers {
            let Some(sub) = self.subs.get_mut(&(*sub_pid, track_id)) else {
                continue;
            };
            if !sub.ready || sub.paused {
                continue;
            }
            let Some(mid) = sub.mid else { continue };
            let Some(h) = sub.forwarder.forward(lp, target) else {
                continue;
            };
            let Some(out) = self.sessions.get_mut(&sub.session) else {
                continue;
            };
            let out_pt = match sub.pt_cache {
                Some((from, to)) if from == pt => to,
                _ => match out.rtc.codec_config().match_params(params) {
                    Some(p) => {
                        sub.pt_cache = Some((pt, p.pt()));
                        p.pt()
                    }
                    None => continue,
                },
            };
            let payload = pkt.payload.clone();
            let marker = pkt.header.marker;
            let written = out.guard(|rtc| {
                let mut api = rtc.direct_api();
                match api.stream_tx_by_mid(mid, None) {
                    Some(tx) => {
                        tx.write_rtp(
                            RtpWrite::new(out_pt, h.seq.into(), h.ts, now, payload)
                                .marker(marker)
                                .nackable(video),
                        );
                        true
                    }
                    None => false,
                }
            });
            match written {
                Ok(true) => {
                    SfuMetrics::inc(&self.metrics.rtp_forwarded);
                    self.dirty.push(sub.session);
                }
                Ok(false) => {}
                Err(_) => {
                    // Contained below, once the borrow of the track ends.
                    self.dirty.push(sub.session);
                }
            }
        }
        // A keyframe was missed for a waiting video subscription: ask for one (throttled).
        if video
            && track.subscribers.iter().any(|pid| {
                self.subs.get(&(*pid, track_id)).is_some_and(|s| {
                    s.ready && !s.paused && s.forwarder.current_layer() != Some(target)
                })
            })
        {
            self.request_keyframe(track_id, Some(target), KeyframeRequestKind::Pli);
        }
    }

    fn request_keyframe(
        &mut self,
        track_id: TrackId,
        layer: Option<u8>,
        kind: KeyframeRequestKind,
    ) {
        let now = Instant::now();
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let layer = layer.unwrap_or_else(|| track.target_layer(now));
        let slot = &mut track.last_pli[usize::from(layer.min(2))];
        if slot.is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL) {
            return;
        }
        *slot = Some(now);
        let rid = track
            .rids
            .get(usize::from(layer))
            .map(|r| r.as_str().into());
        let mid = track.mid;
        let key = track.session;
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let _ = session.guard(|rtc| {
            let mut api = rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(kind);
            } else if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(kind);
            }
        });
        self.dirty.push(key);
    }

    // ---------------------------------------------------------------- data

    fn data(&mut self, from: ParticipantId, kind: DataKind, payload: &[u8]) {
        let Some(sender) = self.participants.get_mut(&from) else {
            return;
        };
        let Some(routed) = sender.router.route(kind, payload) else {
            return;
        };
        let room = sender.room.clone();
        let Some(members) = self.rooms.get(&room) else {
            return;
        };
        for pid in members {
            if *pid == from {
                continue;
            }
            let Some(p) = self.participants.get(pid) else {
                continue;
            };
            if !routed.destinations.is_empty()
                && !routed.destinations.iter().any(|d| **d == *p.identity)
            {
                continue;
            }
            // Downstream data goes on the subscriber PC when there is one, else back on the
            // client's own channels.
            let target = p
                .subscriber
                .and_then(|k| {
                    self.sessions
                        .get(&k)
                        .and_then(|s| s.channel_for(kind).map(|c| (k, c)))
                })
                .or_else(|| {
                    self.sessions
                        .get(&p.publisher)
                        .and_then(|s| s.channel_for(kind).map(|c| (p.publisher, c)))
                });
            let Some((key, channel)) = target else {
                continue;
            };
            if let Some(s) = self.sessions.get_mut(&key) {
                let _ = s.guard(|rtc| {
                    if let Some(mut ch) = rtc.channel(channel) {
                        if !matches!(ch.write(true, &routed.payload), Ok(true)) {
                            tracing::debug!("data message dropped: channel buffer full");
                        }
                    }
                });
                self.dirty.push(key);
            }
        }
    }

    // ---------------------------------------------------------------- commands

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(params) => self.join(params),
            Command::Offer {
                participant,
                sdp,
                pending,
            } => self.offer(participant, sdp, pending),
            Command::Answer { participant, sdp } => self.answer(participant, sdp),
            Command::Candidate {
                participant,
                role,
                candidate,
            } => {
                let Some(key) = self.session_of(participant, role) else {
                    return;
                };
                match Candidate::from_sdp_string(&candidate) {
                    Ok(c) => {
                        if let Some(s) = self.sessions.get_mut(&key) {
                            let _ = s.guard(|rtc| rtc.add_remote_candidate(c));
                            self.dirty.push(key);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring unparseable ICE candidate"),
                }
            }
            Command::Subscribe {
                participant,
                track,
                stream_id,
                track_label,
            } => self.subscribe(participant, track, stream_id, track_label),
            Command::Unsubscribe { participant, track } => self.unsubscribe(participant, track),
            Command::SetPaused {
                participant,
                track,
                paused,
            } => {
                if let Some(sub) = self.subs.get_mut(&(participant, track)) {
                    if sub.paused != paused {
                        sub.paused = paused;
                        if !paused {
                            sub.forwarder.reset();
                            self.request_keyframe(track, None, KeyframeRequestKind::Pli);
                        }
                    }
                }
            }
            Command::Leave { participant } => self.remove_participant(participant),
        }
        self.drain_dirty();
    }

    fn session_of(&self, participant: ParticipantId, role: PeerRole) -> Option<SessionKey> {
        let p = self.participants.get(&participant)?;
        match role {
            PeerRole::Publisher => Some(p.publisher),
            PeerRole::Subscriber => p.subscriber,
        }
    }

    fn new_session(&mut self, participant: ParticipantId, role: PeerRole) -> SessionKey {
        let key = SessionKey(self.next_session);
        self.next_session += 1;
        let session = Session::new(participant, role, &self.candidates, Instant::now());
        self.by_ufrag.insert(session.ufrag.clone(), key);
        self.sessions.insert(key, session);
        SfuMetrics::add(&self.metrics.sessions, 1);
        key
    }

    fn join(&mut self, params: JoinParams) {
        let JoinParams {
            participant,
            room,
            identity,
            events,
            data_router,
            subscriber_pc,
        } = params;
        if self.participants.contains_key(&participant) {
            return;
        }
        let publisher = self.new_session(participant, PeerRole::Publisher);
        let subscriber = subscriber_pc.then(|| self.new_session(participant, PeerRole::Subscriber));
        self.rooms
            .entry(room.clone())
            .or_default()
            .push(participant);
        self.participants.insert(
            participant,
            Participant {
                room,
                identity,
                events,
                router: data_router,
                publisher,
                subscriber,
                published: Vec::new(),
                subscribed: Vec::new(),
            },
        );
        SfuMetrics::add(&self.metrics.participants, 1);
        if let Some(key) = subscriber {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            let offered = session.guard(|rtc| {
                let mut api = rtc.sdp_api();
                api.add_channel("_reliable".into());
                api.add_channel_with_config(ChannelConfig {
                    label: "_lossy".into(),
                    ordered: false,
                    reliability: Reliability::MaxRetransmits { retransmits: 0 },
                    ..Default::default()
                });
                api.apply()
            });
            match offered {
                Ok(Some((offer, pending))) => {
                    session.pending_offer = Some(pending);
                    self.emit(
                        participant,
                        SfuEvent::Offer {
                            sdp: offer.to_sdp_string(),
                            mid_to_track: Vec::new(),
                        },
                    );
                }
                Ok(None) => {}
                Err(_) => self.session_panicked(participant),
            }
        }
    }

    fn offer(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        pending: Vec<crate::PendingTrack>,
    ) {
        let Some(key) = self.session_of(participant, PeerRole::Publisher) else {
            return;
        };
        let offer = match SdpOffer::from_sdp_string(&sdp) {
            Ok(o) => o,
            Err(e) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Publisher,
                        reason: format!("bad offer SDP: {e}"),
                    },
                );
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        // Keep pending tracks of earlier offers that are still unbound, add the new ones.
        for p in pending {
            if !session.pending.iter().any(|q| q.track == p.track)
                && !session.mid_tracks.values().any(|t| *t == p.track)
            {
                session.pending.push(p);
            }
        }
        match session.guard(|rtc| rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => {
                self.emit(
                    participant,
                    SfuEvent::Answer {
                        role: PeerRole::Publisher,
                        sdp: answer.to_sdp_string(),
                    },
                );
                self.dirty.push(key);
            }
            Ok(Err(e)) => self.emit(
                participant,
                SfuEvent::NegotiationFailed {
                    role: PeerRole::Publisher,
                    reason: format!("offer rejected: {e}"),
                },
            ),
            Err(_) => self.session_panicked(participant),
        }
    }

    fn answer(&mut self, participant: ParticipantId, sdp: String) {
        let Some(key) = self.session_of(participant, PeerRole::Subscriber) else {
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(&sdp) {
            Ok(a) => a,
            Err(e) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Subscriber,
                        reason: format!("bad answer SDP: {e}"),
                    },
                );
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(pending) = session.pending_offer.take() else {
            tracing::debug!("answer without an outstanding offer ignored");
            return;
        };
        match session.guard(|rtc| rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Subscriber,
                        reason: format!("answer rejected: {e}"),
                    },
                );
                return;
            }
            Err(_) => {
                self.session_panicked(participant);
                return;
            }
        }
        self.dirty.push(key);
        // Every subscription with a negotiated media section is ready to receive.
        let mut woken = Vec::new();
        for (mid, track) in &session.mid_subs {
            if let Some(sub) = self.subs.get_mut(&(participant, *track)) {
                if !sub.ready && sub.mid == Some(*mid) {
                    sub.ready = true;
                    woken.push(*track);
                }
            }
        }
        for track in woken {
            self.request_keyframe(track, None, KeyframeRequestKind::Pli);
        }
        self.renegotiate(key);
    }

    fn subscribe(
        &mut self,
        participant: ParticipantId,
        track_id: TrackId,
        stream_id: String,
        track_label: String,
    ) {
        if self.subs.contains_key(&(participant, track_id)) {
            return;
        }
        let Some(key) = self.session_of(participant, PeerRole::Subscriber) else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.publisher == participant {
            return;
        }
        let video = track.kind == TrackKind::Video;
        let clock = if video { 90_000 } else { 48_000 };
        track.subscribers.push(participant);
        let first_seq = rand::random::<u16>() & 0x3fff;
        self.subs.insert(
            (participant, track_id),
            Subscription {
                session: key,
                mid: None,
                ready: false,
                paused: false,
                forwarder: Forwarder::new(video, clock, first_seq),
                pt_cache: None,
            },
        );
        if let Some(p) = self.participants.get_mut(&participant) {
            p.subscribed.push(track_id);
        }
        SfuMetrics::add(&self.metrics.subscriptions, 1);
        if let Some(s) = self.sessions.get_mut(&key) {
            s.queued.push(QueuedChange::Add {
                track: track_id,
                video,
                stream_id,
                track_label,
            });
        }
        self.renegotiate(key);
    }

    fn unsubscribe(&mut self, participant: ParticipantId, track_id: TrackId) {
        let Some(sub) = self.subs.remove(&(participant, track_id)) else {
            return;
        };
        SfuMetrics::add(&self.metrics.subscriptions, -1);
        if let Some(t) = self.tracks.get_mut(&track_id) {
            t.subscribers.retain(|p| *p != participant);
        }
        if let Some(p) = self.participants.get_mut(&participant) {
            p.subscribed.retain(|t| *t != track_id);
        }
        if let Some(s) = self.sessions.get_mut(&sub.session) {
            s.queued
                .retain(|c| !matches!(c, QueuedChange::Add { track, .. } if *track == track_id));
            if let Some(mid) = sub.mid {
                s.mid_subs.remove(&mid);
                s.queued.push(QueuedChange::Remove { mid });
            }
        }
        self.renegotiate(sub.session);
    }

    /// Starts a new subscriber offer with the queued changes, unless one is outstanding.
    fn renegotiate(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        if session.pending_offer.is_some() || session.queued.is_empty() {
            return;
        }
        let participant = session.participant;
        let queued = std::mem::take(&mut session.queued);
        let mut added: Vec<(Mid, TrackId)> = Vec::new();
        let result = session.guard(|rtc| {
            let mut api = rtc.sdp_api();
            for change in queued {
                match change {
                    QueuedChange::Add {
                        track,
                        video,
                        stream_id,
                        track_label,
                    } => {
                        let kind = if video {
                            MediaKind::Video
                        } else {
                            MediaKind::Audio
                        };
                        let mid = api.add_media(
                            kind,
                            Direction::SendOnly,
                            Some(stream_id),
                            Some(track_label),
                            None,
                        );
                        added.push((mid, track));
                    }
                    QueuedChange::Remove { mid } => api.set_direction(mid, Direction::Inactive),
                }
            }
            api.apply()
        });
        match result {
            Ok(Some((offer, pending))) => {
                session.pending_offer = Some(pending);
                for (mid, track) in &added {
                    session.mid_subs.insert(*mid, *track);
                    if let Some(sub) = self.subs.get_mut(&(participant, *track)) {
                        sub.mid = Some(*mid);
                    }
                }
                let mid_to_track = session
                    .mid_subs
                    .iter()
                    .map(|(m, t)| (m.to_string(), *t))
                    .collect();
                self.emit(
                    participant,
                    SfuEvent::Offer {
                        sdp: offer.to_sdp_string(),
                        mid_to_track,
                    },
                );
                self.dirty.push(key);
            }
            Ok(None) => {}
            Err(_) => self.session_panicked(participant),
        }
    }

    /// A published track is gone: every subscription to it ends.
    fn end_track(&mut self, track_id: TrackId) {
        let Some(track) = self.tracks.remove(&track_id) else {
            return;
        };
        SfuMetrics::add(&self.metrics.published_tracks, -1);
        if let Some(s) = self.sessions.get_mut(&track.session) {
            s.mid_tracks.remove(&track.mid);
            s.ssrc_map.retain(|_, (t, _)| *t != track_id);
        }
        if let Some(p) = self.participants.get_mut(&track.publisher) {
            p.published.retain(|t| *t != track_id);
        }
        for sub in &track.subscribers {
            // Re-insert a placeholder so `unsubscribe` finds the track's subscriber list gone.
            self.unsubscribe(*sub, track_id);
        }
        self.emit(track.publisher, SfuEvent::TrackEnded { track: track_id });
    }

    fn session_panicked(&mut self, participant: ParticipantId) {
        SfuMetrics::inc(&self.metrics.session_panics);
        tracing::error!(
            participant = participant.0,
            "webrtc session panicked; participant removed"
        );
        self.fail_participant(participant, PeerRole::Publisher, "internal error".into());
    }

    fn fail_participant(&mut self, participant: ParticipantId, role: PeerRole, reason: String) {
        if !self.participants.contains_key(&participant) {
            return;
        }
        tracing::info!(participant = participant.0, ?role, %reason, "peer connection failed");
        self.emit(participant, SfuEvent::Failed { role, reason });
        self.remove_participant(participant);
    }

    fn remove_participant(&mut self, participant: ParticipantId) {
        let Some(p) = self.participants.get(&participant) else {
            return;
        };
        let published = p.published.clone();
        let subscribed = p.subscribed.clone();
        for track in published {
            self.end_track(track);
        }
        for track in subscribed {
            self.unsubscribe(participant, track);
        }
        let Some(p) = self.participants.remove(&participant) else {
            return;
        };
        SfuMetrics::add(&self.metrics.participants, -1);
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|m| *m != participant);
            if members.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        for key in std::iter::once(p.publisher).chain(p.subscriber) {
            if let Some(mut s) = self.sessions.remove(&key) {
                let _ = s.guard(|rtc| rtc.disconnect());
                self.by_ufrag.remove(&s.ufrag);
                for addr in &s.addrs {
                    if self.by_addr.get(addr) == Some(&key) {
                        self.by_addr.remove(addr);
                    }
                }
                SfuMetrics::add(&self.metrics.sessions, -1);
            }
        }
    }
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
