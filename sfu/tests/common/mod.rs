//! Component-test peers: str0m clients (full ICE, RTP mode) on their own loopback UDP sockets,
//! talking to a real media plane started with `switchboard_sfu::start`. Signalling is replaced by
//! direct calls on the `SfuHandle`; everything else (ICE, DTLS, SRTP, RTP) crosses real sockets.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use switchboard_sfu::{
    DataKind, DataRouter, JoinParams, ParticipantId, PcLayout, RoutedData, SfuConfig, SfuEvent,
    SfuHandle,
};
use tokio::sync::mpsc;

/// Starts a media plane with one media thread on an ephemeral loopback port.
pub fn start_sfu() -> SfuHandle {
    start_sfu_threads(1)
}

/// Starts a media plane with `threads` media threads (one port) on an ephemeral loopback port.
pub fn start_sfu_threads(threads: usize) -> SfuHandle {
    switchboard_sfu::start(SfuConfig {
        bind: (Ipv4Addr::LOCALHOST, 0).into(),
        candidate_ips: vec![Ipv4Addr::LOCALHOST.into()],
        media_threads: threads,
        bandwidth_estimation: true,
    })
    .expect("media plane starts")
}

/// Relays data as is to everyone.
pub struct EchoRouter;

impl DataRouter for EchoRouter {
    fn route(&mut self, _kind: DataKind, payload: &[u8]) -> Option<RoutedData> {
        Some(RoutedData {
            payload: payload.to_vec(),
            destinations: Vec::new(),
        })
    }
}

/// A str0m client peer.
pub struct Peer {
    pub rtc: Rtc,
    pub sock: UdpSocket,
    pub addr: SocketAddr,
    pub id: ParticipantId,
    pub events: mpsc::UnboundedReceiver<SfuEvent>,
    pub received: Vec<RtpPacket>,
    pub connected: bool,
    pub pending: Option<SdpPendingOffer>,
    pub last_offer: String,
    pub last_answer: String,
    pub channels: Vec<(str0m::channel::ChannelId, String)>,
    pub data: Vec<Vec<u8>>,
}

impl Peer {
    /// A peer whose codecs are set by `codecs`, bound to `bind` (or an ephemeral port).
    pub fn new(
        sfu: &SfuHandle,
        room: &str,
        identity: &str,
        layout: PcLayout,
        codecs: impl FnOnce(RtcConfig) -> RtcConfig,
        bind: Option<SocketAddr>,
    ) -> Self {
        let sock = UdpSocket::bind(bind.unwrap_or((Ipv4Addr::LOCALHOST, 0).into())).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let mut rtc = codecs(Rtc::builder().set_rtp_mode(true)).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let id = ParticipantId::next();
        sfu.join(JoinParams {
            participant: id,
            room: Arc::from(room),
            identity: Arc::from(identity),
            events: tx,
            data_router: Box::new(EchoRouter),
            layout,
        })
        .unwrap();
        Self {
            rtc,
            sock,
            addr,
            id,
            events: rx,
            received: Vec::new(),
            connected: false,
            pending: None,
            last_offer: String::new(),
            last_answer: String::new(),
            channels: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Polls the client and its socket for about `d`.
    pub fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut buf = vec![0u8; 2000];
        loop {
            loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let _ = self.sock.send_to(&t.contents, t.destination);
                    }
                    Output::Event(e) => match e {
                        Event::Connected => self.connected = true,
                        Event::RtpPacket(p) => self.received.push(p),
                        Event::ChannelOpen(id, label) => self.channels.push((id, label)),
                        Event::ChannelData(d) => self.data.push(d.data),
                        _ => {}
                    },
                }
            }
            let now = Instant::now();
            if now >= end {
                return;
            }
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, &buf[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                    }
                }
                // Nothing to read within the socket's 2 ms timeout: let time advance.
                Err(_) => self
                    .rtc
                    .handle_input(Input::Timeout(Instant::now()))
                    .unwrap(),
            }
        }
    }

    /// Next media-plane event, pumping `others` meanwhile, within 5 s.
    pub fn next_event(&mut self, others: &mut [&mut Peer]) -> SfuEvent {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(e) = self.events.try_recv() {
                return e;
            }
            assert!(Instant::now() < deadline, "no media-plane event within 5 s");
            self.pump(Duration::from_millis(5));
            for o in others.iter_mut() {
                o.pump(Duration::from_millis(1));
            }
        }
    }

    /// Makes the changes `change` queues, offers them, and applies the SFU's answer; returns
    /// the answer.
    pub fn negotiate(
        &mut self,
        sfu: &SfuHandle,
        change: impl FnOnce(&mut str0m::change::SdpApi),
        pending: Vec<switchboard_sfu::PendingTrack>,
    ) -> String {
        let mut api = self.rtc.sdp_api();
        change(&mut api);
        let (offer, pending_offer) = api.apply().expect("changes to offer");
        sfu.offer(self.id, offer.to_sdp_string(), pending).unwrap();
        loop {
            match self.next_event(&mut []) {
                SfuEvent::Answer { sdp, .. } => {
                    self.last_answer = sdp.clone();
                    let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                    self.rtc
                        .sdp_api()
                        .accept_answer(pending_offer, answer)
                        .unwrap();
                    return sdp;
                }
                SfuEvent::NegotiationFailed { reason, .. } => panic!("offer refused: {reason}"),
                _ => {}
            }
        }
    }

    /// Offers sendonly media sections (kind, msid track id) and applies the SFU's answer.
    pub fn publish(
        &mut self,
        sfu: &SfuHandle,
        tracks: &[(MediaKind, &str, switchboard_sfu::PendingTrack)],
    ) -> Vec<Mid> {
        let mut api = self.rtc.sdp_api();
        let mids: Vec<Mid> = tracks
            .iter()
            .map(|(kind, cid, _)| {
                api.add_media(
                    *kind,
                    Direction::SendOnly,
                    Some("stream".into()),
                    Some(cid.to_string()),
                    None,
                )
            })
            .collect();
        let (offer, pending) = api.apply().expect("offer");
        sfu.offer(
            self.id,
            offer.to_sdp_string(),
            tracks.iter().map(|(_, _, p)| p.clone()).collect(),
        )
        .unwrap();
        loop {
            match self.next_event(&mut []) {
                SfuEvent::Answer { sdp, .. } => {
                    self.last_answer = sdp.clone();
                    let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                    self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
                    return mids;
                }
                SfuEvent::NegotiationFailed { reason, .. } => panic!("offer refused: {reason}"),
                _ => {}
            }
        }
    }

    /// Payload types in the last server offer (`a=rtpmap:<pt>` lines).
    pub fn offered_pts(&self) -> Vec<u8> {
        self.last_offer
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    }

    /// Answers a server offer.
    pub fn accept(&mut self, sfu: &SfuHandle, sdp: &str) {
        self.last_offer = sdp.to_string();
        let offer = SdpOffer::from_sdp_string(sdp).unwrap();
        let answer = self.rtc.sdp_api().accept_offer(offer).unwrap();
        sfu.answer(self.id, answer.to_sdp_string()).unwrap();
    }

    /// Waits for the next server offer and answers it.
    pub fn accept_next_offer(&mut self, sfu: &SfuHandle, others: &mut [&mut Peer]) {
        loop {
            if let SfuEvent::Offer { sdp, .. } = self.next_event(others) {
                self.accept(sfu, &sdp);
                return;
            }
        }
    }

    /// The local payload type of a codec.
    pub fn pt_of(&self, codec: Codec) -> Pt {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .expect("codec configured")
            .pt()
    }

    /// Writes one RTP packet on the sendonly media `mid`.
    pub fn write(&mut self, mid: Mid, pt: Pt, seq: u64, ts: u32, payload: &[u8], marker: bool) {
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("tx stream");
        tx.write_rtp(
            RtpWrite::new(pt, seq.into(), ts, Instant::now(), payload.to_vec())
                .marker(marker)
                .nackable(true),
        );
    }
}

/// Pumps all peers until `cond` holds, within `within`.
pub fn pump_until(
    peers: &mut [&mut Peer],
    within: Duration,
    mut cond: impl FnMut(&[&mut Peer]) -> bool,
) {
    let deadline = Instant::now() + within;
    while !cond(peers) {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        for p in peers.iter_mut() {
            p.pump(Duration::from_millis(2));
        }
    }
}

/// Firefox's payload-type numbers: Opus 109, VP8 120 with RTX 124.
pub fn firefox_pts(cfg: RtcConfig) -> RtcConfig {
    use str0m::format::FormatParams;
    use str0m::media::Frequency;
    let mut cfg = cfg.clear_codecs();
    let c = cfg.codec_config();
    c.add_config(
        109.into(),
        None,
        Codec::Opus,
        Frequency::FORTY_EIGHT_KHZ,
        Some(2),
        FormatParams {
            min_p_time: Some(10),
            use_inband_fec: Some(true),
            ..Default::default()
        },
    );
    c.add_config(
        120.into(),
        Some(124.into()),
        Codec::Vp8,
        Frequency::NINETY_KHZ,
        None,
        FormatParams::default(),
    );
    cfg
}

/// A VP8 keyframe payload: descriptor S=1 PID=0, frame tag with P=0.
pub const VP8_KEYFRAME: [u8; 12] = [
    0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0x00,
];
/// A VP8 delta-frame payload.
pub const VP8_DELTA: [u8; 4] = [0x10, 0x01, 0x00, 0x00];
