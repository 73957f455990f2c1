//! An in-memory network on a virtual clock for component tests of the media core: str0m client
//! peers (full ICE, RTP mode) exchange datagrams with a [`MediaCore`] directly, no sockets, and
//! time advances only when the test says so. A minute of call takes milliseconds.
//!
//! Signalling is replaced by [`Command`]s given to the core and the [`SfuEvent`]s it sends on
//! each participant's channel.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpApi, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};
use switchboard_sfu::core::Output as CoreOutput;
use switchboard_sfu::{
    Command, JoinParams, MediaCore, ParticipantId, PcLayout, PeerRole, PendingTrack, SfuEvent,
    TrackId, TrackKind,
};
use tokio::sync::mpsc;

use crate::common::EchoRouter;

/// The core's media address.
pub const SERVER: &str = "10.0.0.1:7882";

/// One client peer connection.
pub struct Pc {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub received: Vec<RtpPacket>,
    /// Keyframe requests (PLI/FIR) the SFU sent this PC: when, and for which rid.
    pub keyframe_requests: Vec<(Instant, Option<String>)>,
    pub connected: bool,
    /// An offer/answer round completed on it (only those can connect).
    pub negotiated: bool,
    /// A bottleneck on the way from the SFU to this PC, if any.
    pub downlink: Option<Link>,
}

/// A bottleneck link: a rate in bits/s and a drop-tail queue of at most `max_delay` (what
/// `tc tbf rate … latency …` does).
#[derive(Debug)]
pub struct Link {
    pub rate_bps: u64,
    pub max_delay: Duration,
    busy_until: Option<Instant>,
    queue: std::collections::VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Datagrams dropped at the full queue.
    pub dropped: u64,
}

impl Link {
    /// A link of `rate_bps` with a queue of `max_delay_ms`.
    pub fn new(rate_bps: u64, max_delay_ms: u64) -> Self {
        Self {
            rate_bps,
            max_delay: Duration::from_millis(max_delay_ms),
            busy_until: None,
            queue: Default::default(),
            dropped: 0,
        }
    }

    fn push(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start - now > self.max_delay {
            self.dropped += 1;
            return;
        }
        let tx = Duration::from_nanos(data.len() as u64 * 8 * 1_000_000_000 / self.rate_bps);
        let done = start + tx;
        self.busy_until = Some(done);
        self.queue.push_back((done, src, dst, data));
    }

    fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if self.queue.front().is_some_and(|(at, ..)| *at <= now) {
            self.queue.pop_front().map(|(_, s, d, data)| (s, d, data))
        } else {
            None
        }
    }
}

/// One client: a participant with one PC (`/rtc/v1`, `PublishOnly`) or two (`/rtc`).
pub struct Client {
    pub id: ParticipantId,
    pub layout: PcLayout,
    /// `pcs[0]` publishes (the client offers); `pcs[1]`, on `/rtc`, subscribes.
    pub pcs: Vec<Pc>,
    pub events: mpsc::UnboundedReceiver<SfuEvent>,
    /// Every event seen, oldest first.
    pub seen: Vec<SfuEvent>,
    /// Stops sending and receiving (a peer that vanished without a word).
    pub silent: bool,
}

/// The network: one core, its clients, the virtual clock.
pub struct Net {
    pub core: MediaCore,
    pub now: Instant,
    pub clients: Vec<Client>,
    next_host: u8,
}

impl Net {
    /// A core at [`SERVER`] with no clients.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            core: MediaCore::new(vec![SERVER.parse().expect("address")], now),
            now,
            clients: Vec::new(),
            next_host: 2,
        }
    }

    fn new_pc(&mut self) -> Pc {
        let addr: SocketAddr = format!("10.0.0.{}:5000", self.next_host)
            .parse()
            .expect("address");
        self.next_host += 1;
        let mut rtc = Rtc::builder().set_rtp_mode(true).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        Pc {
            rtc,
            addr,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
            connected: false,
            negotiated: false,
            downlink: None,
        }
    }

    /// A client joins `room`; returns its index.
    pub fn join(&mut self, room: &str, identity: &str, layout: PcLayout) -> usize {
        let mut pcs = vec![self.new_pc()];
        if layout == PcLayout::Dual {
            pcs.push(self.new_pc());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = ParticipantId::next();
        self.core.handle_command(
            self.now,
            Command::Join(JoinParams {
                participant: id,
                room: Arc::from(room),
                identity: Arc::from(identity),
                events: tx,
                data_router: Box::new(EchoRouter),
                layout,
            }),
        );
        self.clients.push(Client {
            id,
            layout,
            pcs,
            events: rx,
            seen: Vec::new(),
            silent: false,
        });
        let i = self.clients.len() - 1;
        if layout == PcLayout::Dual {
            self.accept_next_offer(i);
        }
        i
    }

    /// Advances the clock by `ms` in 1 ms steps, moving every datagram both ways.
    pub fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step(Duration::from_millis(1));
        }
    }

    /// One step: clients transmit, the core runs, the core's datagrams are delivered.
    pub fn step(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        let server: SocketAddr = SERVER.parse().expect("address");
        for c in &mut self.clients {
            for pc in &mut c.pcs {
                let _ = pc.rtc.handle_input(Input::Timeout(now));
                loop {
                    match pc.rtc.poll_output() {
                        Ok(Output::Transmit(t)) => {
                            if !c.silent {
                                self.core
                                    .handle_datagram(now, pc.addr, t.destination, &t.contents);
                            }
                        }
                        Ok(Output::Event(e)) => match e {
                            Event::Connected => pc.connected = true,
                            Event::RtpPacket(p) => pc.received.push(p),
                            Event::KeyframeRequest(r) => pc
                                .keyframe_requests
                                .push((now, r.rid.map(|r| r.to_string()))),
                            _ => {}
                        },
                        Ok(Output::Timeout(_)) | Err(_) => break,
                    }
                }
            }
        }
        self.core.handle_timeout(now);
        while let CoreOutput::Transmit(d) = self.core.poll_output() {
            assert_eq!(d.source, server, "leaves from the candidate address");
            let Some(pc) = self
                .clients
                .iter_mut()
                .filter(|c| !c.silent)
                .flat_map(|c| c.pcs.iter_mut())
                .find(|pc| pc.addr == d.destination)
            else {
                continue;
            };
            if let Some(link) = &mut pc.downlink {
                link.push(now, d.source, d.destination, d.contents);
                continue;
            }
            if let Ok(r) = Receive::new(Protocol::Udp, d.source, d.destination, &d.contents) {
                let _ = pc.rtc.handle_input(Input::Receive(now, r));
            }
        }
        for pc in self.clients.iter_mut().flat_map(|c| c.pcs.iter_mut()) {
            while let Some((src, dst, data)) = pc.downlink.as_mut().and_then(|l| l.pop_due(now)) {
                if let Ok(r) = Receive::new(Protocol::Udp, src, dst, &data) {
                    let _ = pc.rtc.handle_input(Input::Receive(now, r));
                }
            }
        }
        for c in &mut self.clients {
            while let Ok(e) = c.events.try_recv() {
                c.seen.push(e);
            }
        }
    }

    /// Runs until client `i` has an event matching `pick` (taken out of `seen`), within 10 s of
    /// virtual time.
    pub fn wait_event<T>(&mut self, i: usize, mut pick: impl FnMut(&SfuEvent) -> Option<T>) -> T {
        for _ in 0..10_000 {
            if let Some(pos) = self.clients[i].seen.iter().position(|e| pick(e).is_some()) {
                let e = self.clients[i].seen.remove(pos);
                return pick(&e).expect("matched");
            }
            self.step(Duration::from_millis(1));
        }
        panic!("no such event for client {i} within 10 s");
    }

    /// Runs until `cond` holds, within `ms` of virtual time.
    pub fn run_until(&mut self, ms: u64, mut cond: impl FnMut(&Net) -> bool) {
        for _ in 0..ms {
            if cond(self) {
                return;
            }
            self.step(Duration::from_millis(1));
        }
        assert!(
            cond(self),
            "condition not met within {ms} ms of virtual time"
        );
    }

    /// Client `i` offers what `change` adds on its publisher PC (with `pending` announced
    /// tracks) and applies the answer. Returns the answer SDP.
    pub fn negotiate(
        &mut self,
        i: usize,
        change: impl FnOnce(&mut SdpApi),
        pending: Vec<PendingTrack>,
    ) -> String {
        let c = &mut self.clients[i];
        let mut api = c.pcs[0].rtc.sdp_api();
        change(&mut api);
        let (offer, pending_offer) = api.apply().expect("changes to offer");
        let id = c.id;
        self.core.handle_command(
            self.now,
            Command::Offer {
                participant: id,
                sdp: offer.to_sdp_string(),
                pending,
            },
        );
        let sdp = self.wait_event(i, |e| match e {
            SfuEvent::Answer { sdp, .. } => Some(Ok(sdp.clone())),
            SfuEvent::NegotiationFailed { reason, .. } => Some(Err(reason.clone())),
            _ => None,
        });
        let sdp = sdp.unwrap_or_else(|r| panic!("offer refused: {r}"));
        let answer = SdpAnswer::from_sdp_string(&sdp).expect("answer parses");
        self.clients[i].pcs[0]
            .rtc
            .sdp_api()
            .accept_answer(pending_offer, answer)
            .expect("answer applies");
        self.clients[i].pcs[0].negotiated = true;
        sdp
    }

    /// Client `i` publishes one track (`rids` for simulcast); returns the track and its mid.
    pub fn publish(&mut self, i: usize, kind: TrackKind, rids: &[&str]) -> (TrackId, Mid) {
        let track = TrackId::next();
        let cid = format!("cid-{}", track.0);
        let mut mid = None;
        let media_kind = match kind {
            TrackKind::Audio => MediaKind::Audio,
            TrackKind::Video => MediaKind::Video,
        };
        let simulcast = (!rids.is_empty()).then(|| str0m::media::Simulcast {
            send: rids
                .iter()
                .map(|r| str0m::media::SimulcastLayer::new(r))
                .collect(),
            recv: vec![],
        });
        let cid2 = cid.clone();
        self.negotiate(
            i,
            |api| {
                mid = Some(api.add_media(
                    media_kind,
                    Direction::SendOnly,
                    Some("stream".into()),
                    Some(cid2),
                    simulcast,
                ))
            },
            vec![PendingTrack {
                track,
                cid,
                kind,
                rids: rids.iter().map(|r| r.to_string()).collect(),
                screen_share: false,
            }],
        );
        (track, mid.expect("mid"))
    }

    /// Client `i` answers the next server offer on its subscriber PC (`/rtc`).
    pub fn accept_next_offer(&mut self, i: usize) {
        let sdp = self.wait_event(i, |e| match e {
            SfuEvent::Offer { sdp, .. } => Some(sdp.clone()),
            _ => None,
        });
        let offer = SdpOffer::from_sdp_string(&sdp).expect("offer parses");
        let answer = self.clients[i].pcs[1]
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("offer applies");
        self.clients[i].pcs[1].negotiated = true;
        let id = self.clients[i].id;
        self.core.handle_command(
            self.now,
            Command::Answer {
                participant: id,
                sdp: answer.to_sdp_string(),
            },
        );
    }

    /// On a single PC: answers the core's `NeedOffer` by offering that many more receive-only
    /// sections.
    pub fn answer_need_offer(&mut self, i: usize) {
        let (audio, video) = self.wait_event(i, |e| match e {
            SfuEvent::NeedOffer { audio, video } => Some((*audio, *video)),
            _ => None,
        });
        self.negotiate(
            i,
            |api| {
                for _ in 0..audio {
                    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
                }
                for _ in 0..video {
                    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
                }
            },
            Vec::new(),
        );
    }

    /// Client `i` subscribes to `track` and completes the negotiation its layout needs.
    pub fn subscribe(&mut self, i: usize, track: TrackId) {
        let id = self.clients[i].id;
        self.core.handle_command(
            self.now,
            Command::Subscribe {
                participant: id,
                track,
                stream_id: format!("PA_x|TR_{}", track.0),
                track_label: format!("TR_{}", track.0),
            },
        );
        match self.clients[i].layout {
            PcLayout::Dual => self.accept_next_offer(i),
            PcLayout::Single => self.answer_need_offer(i),
            PcLayout::PublishOnly => {}
        }
    }

    /// The client's payload type of a codec on its publisher PC.
    pub fn pt_of(&self, i: usize, codec: Codec) -> Pt {
        self.clients[i].pcs[0]
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .expect("codec configured")
            .pt()
    }

    /// Client `i` writes one RTP packet on its section `mid` (layer `rid`).
    pub fn write(
        &mut self,
        i: usize,
        mid: Mid,
        rid: Option<&str>,
        pt: Pt,
        seq: u64,
        payload: Vec<u8>,
    ) {
        let now = self.now;
        let mut api = self.clients[i].pcs[0].rtc.direct_api();
        let tx = api
            .stream_tx_by_mid(mid, rid.map(Rid::from))
            .expect("tx stream");
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), seq as u32 * 3000, now, payload)
                .marker(true)
                .nackable(true),
        );
    }

    /// Client `i` writes one 20 ms Opus packet on its section `mid` whose RFC 6464 audio level
    /// is `level` (0..=127 −dBov).
    pub fn write_audio(&mut self, i: usize, mid: Mid, pt: Pt, seq: u64, level: u8) {
        let now = self.now;
        let mut api = self.clients[i].pcs[0].rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("tx stream");
        let ext = ExtensionValues {
            // str0m takes the level negated (0 loudest, −127 silent).
            audio_level: Some(-(level.min(127) as i8)),
            voice_activity: Some(level < 127),
            ..Default::default()
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                seq.into(),
                seq as u32 * 960,
                now,
                vec![0xf8, 0xff, 0xfe],
            )
            .ext_vals(ext),
        );
    }

    /// Packets client `i` received on its downstream PC.
    pub fn received(&self, i: usize) -> &[RtpPacket] {
        let c = &self.clients[i];
        let pc = if c.layout == PcLayout::Dual { 1 } else { 0 };
        &c.pcs[pc].received
    }

    /// Whether every negotiated PC of client `i` connected.
    pub fn connected(&self, i: usize) -> bool {
        self.clients[i]
            .pcs
            .iter()
            .all(|pc| pc.connected || !pc.negotiated)
    }

    /// Role of the PC that carries client `i`'s subscriptions.
    pub fn downstream_role(&self, i: usize) -> PeerRole {
        match self.clients[i].layout {
            PcLayout::Dual => PeerRole::Subscriber,
            _ => PeerRole::Publisher,
        }
    }
}

/// A VP8 keyframe payload (descriptor S=1 PID=0, frame tag P=0) ending in `tag`.
pub fn vp8_keyframe(tag: u8) -> Vec<u8> {
    vec![
        0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0x00, tag,
    ]
}

/// A VP8 delta-frame payload ending in `tag`.
pub fn vp8_delta(tag: u8) -> Vec<u8> {
    vec![0x10, 0x01, 0x00, 0x00, tag]
}
