//! The seam to the WebRTC library: one [`Session`] is one str0m `Rtc` (one peer connection of a
//! participant) plus what the engine keeps beside it. Every call into str0m goes through
//! [`Session::guard`], which contains a panic to this session (str0m panics on broken internal
//! invariants by design).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::media::Mid;
use str0m::rtp::Ssrc;
use str0m::{Candidate, Rtc, RtcConfig};

use crate::forwarder::ForwardedState;
use crate::sdp_munge::RecvSlot;
use crate::{DataKind, ParticipantId, PeerRole, PendingTrack, TrackId};

/// Largest data-channel message accepted and sent (bytes). livekit-client caps a single
/// `DataPacket` well below this; data streams chunk larger payloads.
pub(crate) const SCTP_MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// SCTP send buffer per session (bytes written but not yet acknowledged by the peer).
pub(crate) const SCTP_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// Reliable data queued per session beyond the SCTP buffer before messages are dropped (bytes).
pub(crate) const MAX_DATA_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// Process-unique key of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SessionKey(pub u64);

/// A change to the subscriber PC waiting for the current offer/answer round to end.
#[derive(Debug)]
pub(crate) enum QueuedChange {
    Add {
        track: TrackId,
        video: bool,
        stream_id: String,
        track_label: String,
    },
    Remove {
        mid: Mid,
    },
}

/// The str0m panic that ended a session.
#[derive(Debug)]
pub(crate) struct SessionPanicked;

pub(crate) struct Session {
    pub rtc: Rtc,
    pub participant: ParticipantId,
    pub role: PeerRole,
    pub ufrag: String,
    pub addrs: Vec<SocketAddr>,
    pub next_timeout: Instant,
    pub connected: bool,
    /// When ICE last reported `Disconnected` without having recovered since (an ICE restart
    /// passes through it; see `ICE_RECOVERY_GRACE`).
    pub ice_lost_at: Option<Instant>,
    /// Publisher side: incoming SSRC → (track, simulcast layer).
    pub ssrc_map: HashMap<Ssrc, (TrackId, u8)>,
    /// Publisher side: media section → track.
    pub mid_tracks: HashMap<Mid, TrackId>,
    /// Publisher side: tracks announced but not yet bound to a media section.
    pub pending: Vec<PendingTrack>,
    /// Subscriber side: the offer waiting for the client's answer.
    pub pending_offer: Option<SdpPendingOffer>,
    pub queued: Vec<QueuedChange>,
    /// Subscriber side: media section → subscribed track.
    pub mid_subs: HashMap<Mid, TrackId>,
    /// Data channels by id, and the open channel per kind.
    pub channels: HashMap<ChannelId, DataKind>,
    pub reliable: Option<ChannelId>,
    pub lossy: Option<ChannelId>,
    /// Single-PC layout: the client's receive-only sections in its last offer.
    pub recv_slots: Vec<RecvSlot>,
    /// Single-PC layout: receive-only sections asked for and not yet seen, (audio, video).
    pub requested: (u32, u32),
    /// Single-PC layout: a re-offer was asked for and has not arrived yet.
    pub reoffer_requested: bool,
    /// This session carries both directions (single-PC layout).
    pub single: bool,
    /// Reliable data waiting for SCTP buffer space, oldest first, and its size in bytes.
    pub data_backlog: VecDeque<(ChannelId, Vec<u8>)>,
    pub data_backlog_bytes: usize,
    /// Single-PC layout: where the outgoing stream of a section stopped when its subscription
    /// ended, so a later track on the same section (same SSRC) continues it.
    pub mid_state: HashMap<Mid, ForwardedState>,
}

impl Session {
    /// Builds the `Rtc` for one peer connection: ICE-lite, RTP mode, Opus + VP8 + H.264
    /// (Constrained Baseline first), host candidates on the shared media port.
    pub fn new(
        participant: ParticipantId,
        role: PeerRole,
        candidates: &[SocketAddr],
        now: Instant,
    ) -> Self {
        let mut cfg: RtcConfig = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_sctp_max_message_size(SCTP_MAX_MESSAGE_BYTES)
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER_BYTES);
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
            participant,
            role,
            ufrag,
            addrs: Vec::new(),
            next_timeout: now,
            connected: false,
            ice_lost_at: None,
            ssrc_map: HashMap::new(),
            mid_tracks: HashMap::new(),
            pending: Vec::new(),
            pending_offer: None,
            queued: Vec::new(),
            mid_subs: HashMap::new(),
            channels: HashMap::new(),
            reliable: None,
            lossy: None,
            recv_slots: Vec::new(),
            requested: (0, 0),
            reoffer_requested: false,
            single: false,
            mid_state: HashMap::new(),
            data_backlog: VecDeque::new(),
            data_backlog_bytes: 0,
        }
    }

    /// Runs `f` on the `Rtc`, turning a panic into [`SessionPanicked`]. After a panic the `Rtc`
    /// must not be used again; the engine drops the session.
    pub fn guard<R>(&mut self, f: impl FnOnce(&mut Rtc) -> R) -> Result<R, SessionPanicked> {
        catch_unwind(AssertUnwindSafe(|| f(&mut self.rtc))).map_err(|_| SessionPanicked)
    }

    /// The downstream channel of a kind, if open.
    pub fn channel_for(&self, kind: DataKind) -> Option<ChannelId> {
        match kind {
            DataKind::Reliable => self.reliable,
            DataKind::Lossy => self.lossy,
        }
    }
}
