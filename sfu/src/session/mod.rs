//! The seam to the WebRTC library: one [`Session`] is one peer connection of a participant (a
//! str0m `Rtc`: ICE-lite, DTLS-SRTP, RTP mode, SCTP data channels). Every str0m type stays in
//! this file; the rest of the crate sees [`Section`], [`Codec`], [`SessionEvent`] and methods.
//! Every call into str0m is guarded: a panic (str0m panics on broken internal invariants by
//! design) becomes [`SessionPanicked`] and the caller ends the participant.
//!
//! Time is an argument everywhere (`now`); nothing here reads the clock. SDP and candidates
//! are in `negotiation.rs`.

mod negotiation;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::codec::MediaCodec;
use crate::datagram::Datagram;
use crate::layer::Layer;
use crate::speakers::AudioLevel;
use crate::{DataKind, TrackId};

/// Where a downstream session's bandwidth estimate starts (bits/s): enough for a 720p
/// simulcast layer with audio, so a subscriber asking for HIGH gets it at once while the
/// estimator confirms or corrects it within its first feedback rounds.
pub const INITIAL_BANDWIDTH_BPS: u64 = 2_000_000;

/// Largest data-channel message accepted and sent (bytes). livekit-client caps a single
/// `DataPacket` well below this; data streams chunk larger payloads.
const SCTP_MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// SCTP send buffer per session (bytes written but not yet acknowledged by the peer).
const SCTP_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// Reliable data queued per session beyond the SCTP buffer before messages are dropped (bytes).
const MAX_DATA_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// A media section of a peer connection (its SDP `mid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Section(Mid);

impl Section {
    /// The section named `mid` in an SDP the client sent.
    pub fn parse(mid: &str) -> Self {
        Self(Mid::from(mid))
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A codec negotiated on a publisher's peer connection (payload type and parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Codec(PayloadParams);

impl Codec {
    /// Which codec it is, for keyframe detection and `TrackInfo.mime_type`.
    pub fn media_codec(&self) -> MediaCodec {
        MediaCodec::from_str0m(self.0.spec().codec)
    }

    /// The publisher's payload type (RTP header `PT`).
    pub fn payload_type(&self) -> u8 {
        *self.0.pt()
    }
}

/// The subscriber payload type a publisher payload type maps to, kept by each subscription so
/// the lookup happens once per change of publisher PT, not per packet.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PtMapping(Option<(Pt, Pt)>);

/// Kind of keyframe request (RFC 4585 §6.3.1 PLI, RFC 5104 §3.5.1 FIR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyframeKind {
    /// Picture Loss Indication.
    Pli,
    /// Full Intra Request.
    Fir,
}

/// One publisher RTP packet, decrypted, with the track and layer it belongs to.
#[derive(Debug)]
pub(crate) struct RtpIn {
    pub track: TrackId,
    pub layer: Layer,
    /// RTP payload type (look the codec up with [`Session::codec_of`]).
    pub pt: u8,
    /// Extended (rollover-free) sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    pub marker: bool,
    /// The RFC 6464 audio level the sender put in the header extension
    /// (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`), if negotiated and present.
    pub audio_level: Option<AudioLevel>,
    /// The payload, shared with every forwarded copy (never copied, never changed).
    pub payload: Arc<[u8]>,
}

/// What a session reports when polled, besides datagrams to send.
#[derive(Debug)]
pub(crate) enum SessionEvent {
    /// An RTP packet of a bound section.
    Rtp(RtpIn),
    /// ICE and DTLS completed.
    Connected,
    /// ICE lost every candidate pair (consent lost, or an ICE restart under way).
    IceDisconnected,
    /// ICE has a working pair again.
    IceRestored,
    /// The remote offered a new section it sends on (`video` or audio).
    MediaAdded { section: Section, video: bool },
    /// A section the remote sent on no longer sends (renegotiated inactive or removed).
    MediaStopped { section: Section },
    /// The remote asks for a keyframe on a section we send on.
    KeyframeRequest {
        section: Section,
        kind: KeyframeKind,
    },
    /// A data-channel message on one of LiveKit's channels.
    Data { kind: DataKind, payload: Vec<u8> },
    /// The peer connection closed (DTLS close_notify or SCTP shutdown).
    Closed,
    /// A new estimate of the bandwidth towards the peer, bits/s: send-side, from its TWCC
    /// feedback (str0m's GoogCC), or the peer's REMB where it sends only that.
    Bandwidth { bps: u64 },
}

/// What [`Session::poll`] gives.
#[derive(Debug)]
pub(crate) enum Polled {
    Transmit(Datagram),
    Event(SessionEvent),
    /// Nothing more until this time (or new input).
    Timeout(Instant),
}

/// The str0m panic that ended a session.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("webrtc session panicked")]
pub(crate) struct SessionPanicked;

/// Why SDP, a candidate or polling failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The SDP text does not parse.
    #[error("bad {what} SDP: {reason}")]
    BadSdp { what: &'static str, reason: String },
    /// The SDP parses but cannot be applied.
    #[error("{what} rejected: {reason}")]
    Rejected { what: &'static str, reason: String },
    /// An answer arrived with no offer outstanding.
    #[error("answer without an outstanding offer")]
    NoOffer,
    /// The ICE candidate does not parse.
    #[error("bad ICE candidate: {0}")]
    BadCandidate(String),
    /// The WebRTC state reported an error while being polled.
    #[error("webrtc error: {0}")]
    Webrtc(String),
    /// See [`SessionPanicked`].
    #[error(transparent)]
    Panicked(#[from] SessionPanicked),
}

/// A change to a server-offered peer connection (the `/rtc` subscriber PC).
#[derive(Debug)]
pub(crate) enum SectionChange {
    /// A new `sendonly` section carrying `track`, msid `stream_id track_label`.
    Add {
        track: TrackId,
        video: bool,
        stream_id: String,
        track_label: String,
    },
    /// A section goes `inactive`.
    Remove { section: Section },
}

/// A server offer: its SDP and the section each added track got.
pub(crate) type ServerOffer = (String, Vec<(Section, TrackId)>);

/// What a publisher section is bound to.
#[derive(Debug)]
struct Binding {
    track: TrackId,
    /// Simulcast rids, lowest quality first.
    rids: Vec<String>,
}

/// One peer connection. See the module docs.
pub(crate) struct Session {
    rtc: Rtc,
    ufrag: String,
    /// Remote addresses learnt from STUN (for the demultiplexer's cleanup).
    addrs: Vec<SocketAddr>,
    /// When str0m next wants `handle_timeout`.
    next_timeout: Instant,
    /// When ICE last reported `Disconnected` without having recovered since.
    ice_lost_at: Option<Instant>,
    /// Queued for the core's next poll round (written to since it was last polled).
    dirty: bool,
    /// The next poll must run to `Timeout` (input, timers, commands, data); otherwise it may
    /// stop once the forwarded packets written since are out (see [`Session::egress_done`]).
    full_poll: bool,
    /// Forwarded RTP packets written and not yet seen leave as datagrams.
    written: u32,
    /// Publisher sections bound to tracks, and incoming SSRC → (track, layer) (cached).
    bound: FxHashMap<Mid, Binding>,
    ssrc_map: FxHashMap<Ssrc, (TrackId, Layer)>,
    /// Offer sent and waiting for the client's answer (server-offered PCs).
    pending_offer: Option<SdpPendingOffer>,
    /// Data channels by id, and the open channel per kind.
    channels: HashMap<ChannelId, DataKind>,
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    /// Reliable data waiting for SCTP buffer space, oldest first, and its size in bytes.
    data_backlog: VecDeque<(ChannelId, Vec<u8>)>,
    data_backlog_bytes: usize,
}

impl Session {
    /// A peer connection with host candidates on the shared media port: ICE-lite, RTP
    /// mode, Opus + VP8 + H.264 (Constrained Baseline first). `downstream`: it carries
    /// subscribed media, so it estimates the bandwidth towards the peer (send-side BWE from
    /// TWCC feedback, starting at [`INITIAL_BANDWIDTH_BPS`]) and paces what it sends.
    pub fn new(candidates: &[SocketAddr], now: Instant, downstream: bool) -> Self {
        let mut cfg: RtcConfig = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_sctp_max_message_size(SCTP_MAX_MESSAGE_BYTES)
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER_BYTES);
        if downstream {
            cfg = cfg.enable_bwe(Some(Bitrate::bps(INITIAL_BANDWIDTH_BPS)));
        }
        {
            let codecs = cfg.codec_config();
            // Steer H.264 publishers to Constrained Baseline: every subscriber can decode it.
            codecs.add_h264(108.into(), Some(109.into()), true, 0x42e01f);
            codecs.add_h264(124.into(), Some(120.into()), false, 0x42e01f);
            codecs.add_h264(127.into(), Some(121.into()), true, 0x42001f);
            codecs.add_h264(125.into(), Some(107.into()), false, 0x42001f);
            codecs.add_h264(123.into(), Some(119.into()), true, 0x4d001f);
            codecs.add_h264(114.into(), Some(115.into()), true, 0x64001f);
            // Constrained High: a publisher that offers only this still gets H.264.
            codecs.add_h264(112.into(), Some(113.into()), true, 0x640c1f);
        }
        let mut rtc = cfg.build(now);
        for addr in candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot use address as ICE candidate"),
            }
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Self {
            rtc,
            ufrag,
            addrs: Vec::new(),
            next_timeout: now,
            ice_lost_at: None,
            dirty: false,
            full_poll: false,
            written: 0,
            bound: FxHashMap::default(),
            ssrc_map: FxHashMap::default(),
            pending_offer: None,
            channels: HashMap::new(),
            reliable: None,
            lossy: None,
            data_backlog: VecDeque::new(),
            data_backlog_bytes: 0,
        }
    }

    /// The local ICE ufrag (STUN from the client carries it in USERNAME).
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// Remote addresses this session was reached from.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Notes a remote address (learnt from STUN).
    pub fn add_addr(&mut self, addr: SocketAddr) {
        if !self.addrs.contains(&addr) {
            self.addrs.push(addr);
        }
    }

    /// Marks the session for the next poll round; `full`: that poll must run until str0m
    /// reports its next timeout. Returns `true` when it was not marked yet (queue it).
    pub fn mark_dirty(&mut self, full: bool) -> bool {
        self.full_poll |= full;
        !std::mem::replace(&mut self.dirty, true)
    }

    /// Egress-only polling is done: every forwarded packet written since the last poll has
    /// left and nothing else asked for a full poll. The poll that would only return the next
    /// timeout is skipped (str0m walks every stream and timer to compute it, as much as a
    /// forwarded packet costs); the session's scheduled wake-up stands, and whatever else str0m
    /// has queued goes out on the next poll. Clears the mark when it returns `true`.
    pub fn egress_done(&mut self) -> bool {
        let done = self.dirty && !self.full_poll && self.written == 0;
        if done {
            self.dirty = false;
        }
        done
    }

    /// When the session next needs [`Session::handle_timeout`].
    pub fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// Since when ICE has been disconnected without recovering, if it is.
    pub fn ice_lost_since(&self) -> Option<Instant> {
        self.ice_lost_at
    }

    /// Feeds one datagram (STUN, DTLS, SRTP/SRTCP). `Ok(false)`: not understood, dropped.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) -> Result<bool, SessionPanicked> {
        let Ok(contents) = DatagramRecv::try_from(data) else {
            return Ok(false);
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        match self.guard(|rtc| rtc.handle_input(input))? {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::trace!(error = %e, "datagram rejected by session");
                Ok(false)
            }
        }
    }

    /// Advances the session's timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionPanicked> {
        if let Err(e) = self.guard(|rtc| rtc.handle_input(Input::Timeout(now)))? {
            tracing::debug!(error = %e, "session timeout handling failed");
        }
        Ok(())
    }

    /// The next datagram, event or timeout. Call until it gives [`Polled::Timeout`]. Data
    /// channel bookkeeping (open, close, buffer low) is handled here and not reported.
    pub fn poll(&mut self, now: Instant) -> Result<Polled, SessionError> {
        loop {
            let out = match self.guard(|rtc| rtc.poll_output())? {
                Ok(out) => out,
                Err(e) => return Err(SessionError::Webrtc(e.to_string())),
            };
            let event = match out {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    self.dirty = false;
                    self.full_poll = false;
                    self.written = 0;
                    return Ok(Polled::Timeout(t));
                }
                Output::Transmit(t) => {
                    // RTCP (RFC 5761 §4: second byte 192..=223) does not count as a forwarded
                    // packet leaving.
                    let rtcp = t.contents.get(1).is_some_and(|b| (192..=223).contains(b));
                    if !rtcp {
                        self.written = self.written.saturating_sub(1);
                    }
                    return Ok(Polled::Transmit(Datagram {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    }));
                }
                Output::Event(e) => e,
            };
            if let Some(e) = self.translate(now, event)? {
                return Ok(Polled::Event(e));
            }
        }
    }

    /// What the bandwidth estimator should sustain and discover towards the peer (bits/s):
    /// `minimum` is filled with padding when media sends less (capped by the estimate),
    /// `desired` is probed for. Only downstream sessions estimate; elsewhere a no-op.
    pub fn set_bandwidth_target(
        &mut self,
        minimum: u64,
        desired: u64,
    ) -> Result<(), SessionPanicked> {
        self.guard(|rtc| {
            rtc.bwe()
                .set_bitrate(Bitrate::bps(minimum), Bitrate::bps(desired));
        })
    }

    /// Whether the peer connection is still usable (not closed, no fatal error).
    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Closes the peer connection (DTLS close_notify goes out on the next poll).
    pub fn disconnect(&mut self) {
        let _ = self.guard(|rtc| rtc.disconnect());
    }

    // ------------------------------------------------------------ private

    fn guard<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Result<R, SessionPanicked> {
        catch_unwind(AssertUnwindSafe(|| f(&mut self.rtc))).map_err(|_| SessionPanicked)
    }

    fn channel_for(&self, kind: DataKind) -> Option<ChannelId> {
        match kind {
            DataKind::Reliable => self.reliable,
            DataKind::Lossy => self.lossy,
        }
    }

    fn refresh_ufrag(&mut self) -> Result<(), SessionPanicked> {
        let ufrag = self.guard(|rtc| rtc.direct_api().local_ice_credentials().ufrag)?;
        self.ufrag = ufrag;
        Ok(())
    }

    /// Writes queued reliable data until SCTP's send buffer is full; the rest goes when str0m
    /// reports the buffer drained (`ChannelBufferedAmountLow`).
    fn flush_data(&mut self) -> Result<(), SessionPanicked> {
        while let Some((channel, payload)) = self.data_backlog.pop_front() {
            let outcome = self.guard(|rtc| match rtc.channel(channel) {
                Some(mut ch) => match ch.write(true, &payload) {
                    Ok(true) => Some(true),
                    Ok(false) => {
                        ch.set_buffered_amount_low_threshold(SCTP_SEND_BUFFER_BYTES / 2);
                        Some(false)
                    }
                    Err(_) => None,
                },
                None => None,
            })?;
            if outcome == Some(false) {
                // Buffer full: the message stays first in line until the buffer drains.
                self.data_backlog.push_front((channel, payload));
                break;
            }
            // Written, or the channel is gone / refused the message (dropped).
            self.data_backlog_bytes -= payload.len();
        }
        Ok(())
    }

    /// Maps a str0m event to ours; `None` for what is handled here or of no interest.
    fn translate(
        &mut self,
        now: Instant,
        event: Event,
    ) -> Result<Option<SessionEvent>, SessionPanicked> {
        Ok(Some(match event {
            Event::RtpPacket(pkt) => {
                let ssrc = pkt.header.ssrc;
                let (track, layer) = match self.ssrc_map.get(&ssrc) {
                    Some(v) => *v,
                    None => {
                        let Some(v) = self.resolve_ssrc(ssrc) else {
                            return Ok(None);
                        };
                        self.ssrc_map.insert(ssrc, v);
                        v
                    }
                };
                SessionEvent::Rtp(RtpIn {
                    track,
                    layer,
                    pt: *pkt.header.payload_type,
                    seq: *pkt.seq_no,
                    ts: pkt.header.timestamp,
                    marker: pkt.header.marker,
                    // str0m gives the level negated (−127..=0, 0 loudest).
                    audio_level: pkt
                        .header
                        .ext_vals
                        .audio_level
                        .map(|l| AudioLevel::from_minus_dbov(l.unsigned_abs())),
                    payload: pkt.payload,
                })
            }
            Event::Connected => SessionEvent::Connected,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.ice_lost_at.get_or_insert(now);
                SessionEvent::IceDisconnected
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                self.ice_lost_at = None;
                SessionEvent::IceRestored
            }
            Event::MediaAdded(added) => SessionEvent::MediaAdded {
                section: Section(added.mid),
                video: added.kind == MediaKind::Video,
            },
            Event::MediaChanged(changed) if !changed.direction.is_receiving() => {
                SessionEvent::MediaStopped {
                    section: Section(changed.mid),
                }
            }
            Event::KeyframeRequest(req) => SessionEvent::KeyframeRequest {
                section: Section(req.mid),
                kind: match req.kind {
                    KeyframeRequestKind::Fir => KeyframeKind::Fir,
                    _ => KeyframeKind::Pli,
                },
            },
            Event::ChannelOpen(id, label) => {
                let kind = match label.as_str() {
                    "_reliable" => DataKind::Reliable,
                    "_lossy" => DataKind::Lossy,
                    _ => return Ok(None),
                };
                self.channels.insert(id, kind);
                match kind {
                    DataKind::Reliable => self.reliable = Some(id),
                    DataKind::Lossy => self.lossy = Some(id),
                }
                return Ok(None);
            }
            Event::ChannelBufferedAmountLow(_) => {
                self.flush_data()?;
                return Ok(None);
            }
            Event::ChannelClose(id) => {
                if let Some(kind) = self.channels.remove(&id) {
                    if self.channel_for(kind) == Some(id) {
                        match kind {
                            DataKind::Reliable => self.reliable = None,
                            DataKind::Lossy => self.lossy = None,
                        }
                    }
                }
                return Ok(None);
            }
            Event::ChannelData(data) => match self.channels.get(&data.id) {
                Some(kind) => SessionEvent::Data {
                    kind: *kind,
                    payload: data.data,
                },
                None => return Ok(None),
            },
            Event::Closed => SessionEvent::Closed,
            Event::EgressBitrateEstimate(
                BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. },
            ) => SessionEvent::Bandwidth {
                bps: estimate.as_u64(),
            },
            _ => return Ok(None),
        }))
    }

    /// (track, layer) of an SSRC str0m has a receive stream for, through its section's binding.
    fn resolve_ssrc(&mut self, ssrc: Ssrc) -> Option<(TrackId, Layer)> {
        let (mid, rid) = {
            let mut api = self.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let binding = self.bound.get(&mid)?;
        let layer = rid
            .and_then(|rid| binding.rids.iter().position(|r| r.as_str() == &*rid))
            .map_or(Layer::Low, Layer::from_index);
        Some((binding.track, layer))
    }
}

/// Runs `f` on the local ufrag a STUN request is addressed to (the part of its USERNAME before
/// `:`, RFC 8445 §7.2.2); `None` when `data` is not a STUN message with a USERNAME.
pub(crate) fn with_stun_ufrag<R>(data: &[u8], f: impl FnOnce(&str) -> R) -> Option<R> {
    // RFC 7983 §7: STUN starts with 0 or 1 in its first byte; a header is 20 bytes.
    if data.len() < 20 || data[0] > 1 {
        return None;
    }
    let msg = str0m::ice::StunMessage::parse(data).ok()?;
    let (local, _remote) = msg.split_username()?;
    Some(f(local))
}
