//! The str0m peer connection ([`super::peer::Stack::Str0m`]): a sans-IO `Rtc` and its UDP
//! socket, driven from the participant's task. The server is built on the same library, so this
//! is the fallback stack.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;

use super::participant::ParticipantError;
use super::peer::{PeerEvent, PublishSpec};
use super::tx::OutPacket;

/// Largest datagram we read.
const MAX_DATAGRAM: usize = 2048;

/// One str0m peer connection.
pub struct Str0mPeer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// Per stream index of the [`PublishSpec`]: where its packets go.
    routes: Vec<Option<(Mid, Option<Rid>, Pt)>>,
    buf: Vec<u8>,
}

impl Str0mPeer {
    /// A publisher offering `spec`'s tracks; returns it and the offer SDP.
    pub fn publisher(
        local_ip: IpAddr,
        spec: &PublishSpec,
    ) -> Result<(Self, String), ParticipantError> {
        let mut peer = Self::new(local_ip)?;
        let pt_of = |rtc: &Rtc, codec: Codec| {
            rtc.codec_config()
                .params()
                .iter()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
        };
        let opus = pt_of(&peer.rtc, Codec::Opus)
            .ok_or_else(|| ParticipantError::Rtc("no Opus payload type".into()))?;
        let vp8 = pt_of(&peer.rtc, Codec::Vp8)
            .ok_or_else(|| ParticipantError::Rtc("no VP8 payload type".into()))?;
        let mut routes = Vec::new();
        let mut route = |stream: usize, r: (Mid, Option<Rid>, Pt)| {
            if routes.len() <= stream {
                routes.resize(stream + 1, None);
            }
            routes[stream] = Some(r);
        };
        // One change set for all sections: each `sdp_api()` call starts a new one.
        let mut api = peer.rtc.sdp_api();
        if let Some((cid, stream)) = &spec.audio {
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(spec.stream_id.clone()),
                Some(cid.clone()),
                None,
            );
            route(*stream, (mid, None, opus));
        }
        if let Some((cid, layers)) = &spec.video {
            let mut sim = Simulcast::new();
            for (shape, _) in layers {
                sim.add_send_layer(SimulcastLayer::new(shape.rid));
            }
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(spec.stream_id.clone()),
                Some(cid.clone()),
                Some(sim),
            );
            for (shape, stream) in layers {
                route(*stream, (mid, Some(Rid::from(shape.rid)), vp8));
            }
        }
        // LiveKit clients open their data channels on this connection; it also gives a
        // `/rtc/v1` participant with nothing to publish something to offer.
        api.add_channel("_reliable".into());
        let Some((offer, pending)) = api.apply() else {
            return Err(ParticipantError::Rtc("nothing to offer".into()));
        };
        peer.pending = Some(pending);
        peer.routes = routes;
        Ok((peer, offer.to_sdp_string()))
    }

    /// True while an offer of ours waits for its answer.
    pub fn offer_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Adds receive-only sections and returns the offer carrying them.
    pub fn add_recv_sections(&mut self, audio: u32, video: u32) -> Option<String> {
        let mut api = self.rtc.sdp_api();
        for _ in 0..audio.min(64) {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        for _ in 0..video.min(64) {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        }
        let (offer, pending) = api.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// A subscriber, waiting for an offer.
    pub fn subscriber(local_ip: IpAddr) -> Result<Self, ParticipantError> {
        Self::new(local_ip)
    }

    fn new(local_ip: IpAddr) -> Result<Self, ParticipantError> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std_sock)?;
        let local = sock.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        let cand =
            Candidate::host(local, "udp").map_err(|e| ParticipantError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        Ok(Self {
            rtc,
            sock,
            local,
            pending: None,
            routes: Vec::new(),
            buf: vec![0u8; MAX_DATAGRAM],
        })
    }

    /// Applies the answer to our pending offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), ParticipantError> {
        let answer = SdpAnswer::from_sdp_string(sdp)
            .map_err(|e| ParticipantError::Rtc(format!("bad answer: {e}")))?;
        if let Some(pending) = self.pending.take() {
            self.rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
        }
        self.kick()
    }

    /// Runs the timers once now: str0m's ICE agent reports no timeout until its first
    /// `handle_timeout`, so a connection with no media scheduled (a data-channel-only
    /// subscriber in an empty room) would otherwise never start its checks.
    fn kick(&mut self) -> Result<(), ParticipantError> {
        self.rtc
            .handle_input(Input::Timeout(Instant::now()))
            .map_err(|e| ParticipantError::Rtc(e.to_string()))
    }

    /// Applies an offer; returns the answer SDP.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, ParticipantError> {
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| ParticipantError::Rtc(format!("bad offer: {e}")))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
        self.kick()?;
        Ok(answer.to_sdp_string())
    }

    /// Adds a trickled candidate; a malformed one is ignored.
    pub fn add_remote_candidate(&mut self, candidate: &str) {
        if let Ok(c) = Candidate::from_sdp_string(candidate) {
            self.rtc.add_remote_candidate(c);
        }
    }

    /// Waits for a datagram.
    pub async fn ready(&self) -> Result<(), ParticipantError> {
        Ok(self.sock.readable().await?)
    }

    /// Reads every waiting datagram into the `Rtc` and drives it until it only waits.
    pub fn poll(
        &mut self,
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<Option<Instant>, ParticipantError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.receive(&mut buf, sink);
        self.buf = buf;
        result?;
        self.drive(sink)
    }

    /// Writes packets; the next [`Str0mPeer::poll`] transmits them.
    pub fn send(&mut self, packets: &mut Vec<OutPacket>, now: Instant) {
        let mut api = self.rtc.direct_api();
        for p in packets.drain(..) {
            let Some(Some((mid, rid, pt))) = self.routes.get(p.stream) else {
                continue;
            };
            // Not negotiated: the packet is dropped.
            let Some(tx) = api.stream_tx_by_mid(*mid, *rid) else {
                continue;
            };
            let video = rid.is_some();
            tx.write_rtp(
                RtpWrite::new(*pt, p.seq.into(), p.rtp_ts, now, p.payload)
                    .marker(p.marker)
                    .nackable(video),
            );
        }
    }

    fn receive(
        &mut self,
        buf: &mut [u8],
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<(), ParticipantError> {
        loop {
            match self.sock.try_recv_from(buf) {
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
                            destination: self.local,
                            contents,
                        },
                    );
                    if self.rtc.accepts(&input) {
                        self.rtc
                            .handle_input(input)
                            .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                    }
                    // str0m keeps one input's output until polled: poll after each.
                    self.drive(sink)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Polls the `Rtc` until it waits: sends its datagrams, hands over its events. Returns
    /// when it next wants a timeout.
    fn drive(
        &mut self,
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<Option<Instant>, ParticipantError> {
        let now = Instant::now();
        loop {
            let out = self
                .rtc
                .poll_output()
                .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
            match out {
                Output::Timeout(t) => {
                    if t <= now {
                        self.rtc
                            .handle_input(Input::Timeout(now))
                            .map_err(|e| ParticipantError::Rtc(e.to_string()))?;
                        continue;
                    }
                    return Ok(Some(t));
                }
                Output::Transmit(t) => {
                    // A full send buffer drops the datagram, as a network would.
                    let _ = self.sock.try_send_to(&t.contents, t.destination);
                }
                Output::Event(ev) => self.event(ev, sink)?,
            }
        }
    }

    fn event(
        &mut self,
        ev: Event,
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<(), ParticipantError> {
        match ev {
            Event::Connected => sink(PeerEvent::Connected),
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                return Err(ParticipantError::Rtc("ICE disconnected".into()));
            }
            Event::RtpPacket(pkt) => sink(PeerEvent::Rtp {
                payload: &pkt.payload,
                at: Instant::now(),
            }),
            Event::KeyframeRequest(req) => {
                for (stream, r) in self.routes.iter().enumerate() {
                    if let Some((mid, rid, _)) = r {
                        if *mid == req.mid && *rid == req.rid {
                            sink(PeerEvent::KeyframeRequest { stream });
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
