//! Switchboard's media plane: rooms of participants whose WebRTC sessions (str0m, RTP mode,
//! ICE-lite, DTLS-SRTP) share one UDP port, and the forwarding of RTP and data among them.
//!
//! This crate knows nothing of HTTP, protobuf, JWT or Matrix. The signalling adapters drive it
//! through [`SfuHandle`] (commands, answered by [`SfuEvent`]s on a per-participant channel) and
//! hand it a [`DataRouter`] per participant for the one wire format that must be read on the
//! media thread (data-channel messages).
//!
//! Shape: rooms are the unit. Each of `media_threads` threads runs a sans-IO [`MediaCore`]
//! (`core/`: time is an argument, no socket) over its own rooms inside a thin driver
//! (`driver/`: tokio, `recvmmsg`/`sendmmsg`); a room lives on one thread, new rooms go to the
//! least-loaded one, and one UDP port serves them all (a dispatcher thread routes datagrams
//! when there are several). Within a room (`room.rs`): tracks (`track.rs`), subscriptions
//! (`subscription.rs`), the per-subscription RTP rewriter (`forwarder.rs`); the WebRTC library
//! stays behind `session.rs`. The packet path takes no lock, makes no channel hop and does not
//! allocate in our code (str0m hands payloads as shared buffers). Room-level events go to
//! every participant of a room on the core's own timers (`core/room_events.rs`): active
//! speakers from the publishers' audio levels (`speakers.rs`) and connection quality from
//! their packet loss (`quality.rs`).

mod allocator;
mod codec;
pub mod core;
mod datagram;
mod driver;
mod dynacast;
mod forwarder;
mod ids;
mod keyframe;
mod layer;
mod metrics;
mod placement;
mod quality;
mod room;
mod sdp_munge;
mod session;
mod speakers;
mod subscription;
mod track;
mod vp8;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;

pub use codec::{is_keyframe_start, MediaCodec};
pub use core::MediaCore;
pub use forwarder::{ForwardedHeader, ForwardedState, Forwarder, LayerPacket};
pub use ids::{ParticipantId, TrackId};
pub use layer::{Layer, PerLayer};
pub use metrics::{DispatchLoad, SfuMetrics, ThreadLoad};
pub use quality::{ConnectionQuality, QualityUpdate, QUALITY_INTERVAL};
pub use speakers::{Speaker, SpeakerSettings};
pub use vp8::{Vp8Descriptor, Vp8Fields, Vp8Munger};

/// Settings of the media plane, taken from the `[rtc]` configuration section.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Address the single media UDP socket binds to (e.g. `0.0.0.0:7882`).
    pub bind: SocketAddr,
    /// Addresses written into ICE host candidates. Each gets the socket's port.
    pub candidate_ips: Vec<IpAddr>,
    /// Media threads, each running its own core over its own rooms (at least 1).
    pub media_threads: usize,
    /// Estimate each subscriber's downlink and choose its layers by it (`rtc.bandwidth_estimation`).
    pub bandwidth_estimation: bool,
}

/// Errors of the media plane's public API.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The UDP socket could not be bound (address in use, permission, bad address).
    #[error("cannot bind media UDP socket {addr}: {source}")]
    Bind {
        /// The address that was tried.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A media thread (or its runtime, or the dispatcher) could not start.
    #[error("cannot start the media plane: {reason}")]
    Start {
        /// What failed.
        reason: String,
    },
    /// The media thread has stopped; no further commands are accepted.
    #[error("media thread is not running")]
    Stopped,
}

/// Which of a participant's peer connections a message concerns. With LiveKit's two-PC mode
/// (`/rtc`), the client offers on the publisher PC and the server offers on the subscriber PC.
/// In single-PC mode there is only `Publisher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerRole {
    /// The PC the client offers on (it publishes media and data on it).
    Publisher,
    /// The PC the server offers on (subscribed media and server data go down on it).
    Subscriber,
}

/// Media kind of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// Audio (Opus).
    Audio,
    /// Video (VP8, H.264).
    Video,
}

/// A track the client announced (LiveKit `AddTrackRequest`) and that the next publisher offer is
/// expected to carry. Media sections are matched by the msid track id (= `cid`), falling back to
/// the first unmatched pending track of the same kind.
#[derive(Debug, Clone)]
pub struct PendingTrack {
    /// The id the SFU will know the track by.
    pub track: TrackId,
    /// Client track id (`MediaStreamTrack.id`), the second token of `a=msid`.
    pub cid: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Simulcast rids the client declared, lowest quality first (e.g. `["q","h","f"]`); empty
    /// for a single-layer track.
    pub rids: Vec<String>,
    /// A screen share (LiveKit `TrackSource.SCREEN_SHARE`): its subscribers' bandwidth goes to
    /// it before cameras.
    pub screen_share: bool,
}

/// Data-channel delivery class (LiveKit's `_reliable` and `_lossy` channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// Ordered, reliable (`_reliable`).
    Reliable,
    /// Unordered, no retransmissions (`_lossy`).
    Lossy,
}

/// What a [`DataRouter`] decided for one data-channel message.
#[derive(Debug, Clone)]
pub struct RoutedData {
    /// The bytes to deliver (re-encoded by the adapter, e.g. with the sender's identity stamped).
    pub payload: Vec<u8>,
    /// Participant identities to deliver to; empty means everyone else in the room.
    pub destinations: Vec<String>,
}

/// Reads one data-channel message of a participant on the media thread and decides whether and
/// to whom it is relayed. The adapter owns the wire format (LiveKit `DataPacket`); the SFU only
/// moves bytes. Never called for messages the participant did not send itself.
pub trait DataRouter: Send {
    /// Returns `None` to drop the message (malformed, not permitted).
    fn route(&mut self, kind: DataKind, payload: &[u8]) -> Option<RoutedData>;
}

/// Events the media plane sends to a participant's signalling session.
#[derive(Debug, Clone)]
pub enum SfuEvent {
    /// The SDP answer to the client's offer on `role`'s PC.
    Answer {
        /// Which PC the answer is for.
        role: PeerRole,
        /// SDP text.
        sdp: String,
        /// `(mid, track)` for every section of this PC that carries a subscribed track
        /// (single-PC layout; empty otherwise).
        mid_to_track: Vec<(String, TrackId)>,
    },
    /// Single-PC layout: the client should send a new offer with at least this many more
    /// receive-only sections (LiveKit `MediaSectionsRequirement`; `0, 0` = just re-offer).
    NeedOffer {
        /// Additional receive-only audio sections wanted.
        audio: u32,
        /// Additional receive-only video sections wanted.
        video: u32,
    },
    /// A new server offer on the subscriber PC (subscriptions changed).
    Offer {
        /// SDP text.
        sdp: String,
        /// `(mid, track)` for every media section that currently carries a track.
        mid_to_track: Vec<(String, TrackId)>,
    },
    /// The client's SDP could not be applied; the session stays as it was.
    NegotiationFailed {
        /// Which PC.
        role: PeerRole,
        /// Human-readable reason.
        reason: String,
    },
    /// The first RTP packet of a published track arrived; it is now live.
    TrackLive {
        /// The track.
        track: TrackId,
        /// Negotiated codec as a MIME type, e.g. `video/VP8`, `audio/opus`.
        mime: String,
    },
    /// To the publisher of a video track: which of its simulcast layers subscribers need, so it
    /// can stop encoding the others (LiveKit `SubscribedQualityUpdate`, "dynacast"). Sent when
    /// that changes: upgrades at once, downgrades 5 s after they are wanted, and a first time
    /// 10 s after the track went live even if nothing changed (every layer off when nobody
    /// watches). A track without simulcast has only `Low`; all off means stop sending it.
    SubscribedLayers {
        /// The publisher's track.
        track: TrackId,
        /// Per layer (`Low` = rid `q`, `Medium` = `h`, `High` = `f`): whether it should be
        /// encoded.
        layers: PerLayer<bool>,
    },
    /// A published track's media section went away (renegotiated inactive or removed).
    TrackEnded {
        /// The track.
        track: TrackId,
    },
    /// A subscribed video track was paused because the bandwidth towards this participant
    /// cannot carry even its lowest layer (`paused`), or resumed (LiveKit `StreamStateUpdate`,
    /// `PAUSED`/`ACTIVE`). Audio is never paused.
    StreamPaused {
        /// The subscribed track.
        track: TrackId,
        /// Paused (`true`) or flowing again.
        paused: bool,
    },
    /// ICE and DTLS completed on a PC.
    Connected {
        /// Which PC.
        role: PeerRole,
    },
    /// A PC failed (ICE consent lost, DTLS closed, internal error). The participant's media is
    /// gone; the adapter should end the participant.
    Failed {
        /// Which PC.
        role: PeerRole,
        /// Human-readable reason.
        reason: String,
        /// The peer closed the connection itself (DTLS close_notify), as on a normal hang-up.
        by_peer: bool,
    },
    /// Room-level, to every participant of the room: who started or stopped speaking, or now
    /// speaks at another level, since the last such event (LiveKit `SpeakersChanged`, a
    /// delta). Speakers new or at a new level come first, loudest first; those that stopped
    /// follow with `active: false` and level 0. Evaluated every
    /// [`SpeakerSettings::update_interval`] from the RFC 6464 audio levels in the publishers'
    /// audio packets (LiveKit's algorithm, see [`SpeakerSettings`]); sent only on change. The
    /// list is shared by every participant's copy.
    SpeakersChanged {
        /// The changes; levels are linear 0..=1 in steps of 1/8 (see [`Speaker::level`]).
        speakers: Arc<[Speaker]>,
    },
    /// Room-level, to every participant of the room: the connection quality of every
    /// participant, sent every [`QUALITY_INTERVAL`] (5 s) when one of them changed or joined
    /// (LiveKit `ConnectionQualityUpdate`). Scored from the loss of each participant's
    /// published tracks as the server receives them (LiveKit's scoring, see
    /// [`ConnectionQuality`]); a participant publishing nothing is `Excellent`.
    ConnectionQuality {
        /// Every participant of the room, shared by every participant's copy.
        updates: Arc<[QualityUpdate]>,
    },
}

/// How a participant joins the media plane.
pub struct JoinParams {
    /// The participant's id (allocate with [`ParticipantId::next`]).
    pub participant: ParticipantId,
    /// Opaque room name; participants with equal names share data routing.
    pub room: Arc<str>,
    /// Participant identity (destinations in [`RoutedData`] name these).
    pub identity: Arc<str>,
    /// Where events for this participant go.
    pub events: mpsc::UnboundedSender<SfuEvent>,
    /// Reads this participant's data-channel messages.
    pub data_router: Box<dyn DataRouter>,
    /// How many peer connections the client uses, and for what.
    pub layout: PcLayout,
}

/// The peer connections of a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcLayout {
    /// LiveKit `/rtc`: the client offers on a publisher PC; the server offers on a subscriber
    /// PC, created at join with its first [`SfuEvent::Offer`] (data channels only).
    Dual,
    /// LiveKit `/rtc` without the subscribe permission: only the publisher PC; downstream data
    /// goes back on the client's own channels.
    PublishOnly,
    /// LiveKit `/rtc/v1`: one PC, the client always offers. Subscribed tracks ride on the
    /// client's receive-only sections; when there are not enough, [`SfuEvent::NeedOffer`] asks
    /// for more.
    Single,
}

impl std::fmt::Debug for JoinParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinParams")
            .field("participant", &self.participant)
            .field("room", &self.room)
            .field("identity", &self.identity)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Commands to a media core ([`SfuHandle`] sends them to the participant's media thread; a
/// core driven directly takes them in [`MediaCore::handle_command`]). Each is answered, if at
/// all, by [`SfuEvent`]s. Commands for a participant the core does not know are ignored.
#[derive(Debug)]
pub enum Command {
    /// See [`SfuHandle::join`].
    Join(JoinParams),
    /// See [`SfuHandle::offer`].
    Offer {
        /// Who offers.
        participant: ParticipantId,
        /// SDP text.
        sdp: String,
        /// Announced tracks the offer may carry.
        pending: Vec<PendingTrack>,
    },
    /// See [`SfuHandle::answer`].
    Answer {
        /// Who answers.
        participant: ParticipantId,
        /// SDP text.
        sdp: String,
    },
    /// See [`SfuHandle::candidate`].
    Candidate {
        /// Whose candidate.
        participant: ParticipantId,
        /// Which PC.
        role: PeerRole,
        /// `candidate:…` attribute value.
        candidate: String,
    },
    /// See [`SfuHandle::subscribe`].
    Subscribe {
        /// The subscriber.
        participant: ParticipantId,
        /// A track of the subscriber's room.
        track: TrackId,
        /// msid stream id.
        stream_id: String,
        /// msid track id.
        track_label: String,
    },
    /// See [`SfuHandle::unsubscribe`].
    Unsubscribe {
        /// The subscriber.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
    },
    /// See [`SfuHandle::set_paused`].
    SetPaused {
        /// The subscriber.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
        /// Paused or not.
        paused: bool,
    },
    /// See [`SfuHandle::set_max_layer`].
    SetMaxLayer {
        /// The subscriber.
        participant: ParticipantId,
        /// The track.
        track: TrackId,
        /// The highest layer wanted.
        layer: Layer,
    },
    /// See [`SfuHandle::leave`].
    Leave {
        /// Who leaves.
        participant: ParticipantId,
    },
}

/// Cheap, cloneable handle to the media threads: routes each command to the thread whose core
/// holds the participant's room.
#[derive(Clone, Debug)]
pub struct SfuHandle {
    placement: Arc<placement::Placement>,
    metrics: Arc<SfuMetrics>,
    local_addr: SocketAddr,
}

/// Binds the media UDP socket and starts the media threads (and, with more than one, the
/// dispatcher that serves them all from the one port). Returns once every thread runs.
///
/// Errors: [`SfuError::Bind`] when the UDP socket cannot be bound; [`SfuError::Start`] when a
/// media thread cannot start.
pub fn start(config: SfuConfig) -> Result<SfuHandle, SfuError> {
    let socket = std::net::UdpSocket::bind(config.bind).map_err(|source| SfuError::Bind {
        addr: config.bind,
        source,
    })?;
    let local_addr = socket.local_addr().map_err(|source| SfuError::Bind {
        addr: config.bind,
        source,
    })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| SfuError::Bind {
            addr: config.bind,
            source,
        })?;
    let threads = config.media_threads.max(1);
    let metrics = Arc::new(SfuMetrics::new(threads));
    let candidates = config
        .candidate_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, local_addr.port()))
        .collect();
    let setup = driver::CoreSetup {
        candidates,
        bandwidth_estimation: config.bandwidth_estimation,
    };
    let senders = driver::start(socket, setup, threads, metrics.clone())?;
    Ok(SfuHandle {
        placement: Arc::new(placement::Placement::new(senders)),
        metrics,
        local_addr,
    })
}

impl SfuHandle {
    fn send(&self, participant: ParticipantId, cmd: Command) -> Result<(), SfuError> {
        self.placement.send(participant, cmd)
    }

    /// Counters and gauges of the media plane.
    pub fn metrics(&self) -> &Arc<SfuMetrics> {
        &self.metrics
    }

    /// The address the media socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of media threads.
    pub fn media_threads(&self) -> usize {
        self.placement.threads()
    }

    /// The media thread a room lives on, if it has participants.
    pub fn thread_of_room(&self, room: &str) -> Option<usize> {
        self.placement.thread_of_room(room)
    }

    /// Adds a participant to a room (on the room's media thread; a new room goes to the
    /// least-loaded thread). With [`PcLayout::Dual`], an [`SfuEvent::Offer`] follows.
    pub fn join(&self, params: JoinParams) -> Result<(), SfuError> {
        self.placement.join(params)
    }

    /// Applies a client offer on the publisher PC; answered by [`SfuEvent::Answer`] or
    /// [`SfuEvent::NegotiationFailed`]. `pending` lists announced tracks not yet bound.
    pub fn offer(
        &self,
        participant: ParticipantId,
        sdp: String,
        pending: Vec<PendingTrack>,
    ) -> Result<(), SfuError> {
        self.send(
            participant,
            Command::Offer {
                participant,
                sdp,
                pending,
            },
        )
    }

    /// Applies the client's answer to the last subscriber offer.
    pub fn answer(&self, participant: ParticipantId, sdp: String) -> Result<(), SfuError> {
        self.send(participant, Command::Answer { participant, sdp })
    }

    /// Adds a trickled remote ICE candidate (`candidate:…` SDP attribute value).
    pub fn candidate(
        &self,
        participant: ParticipantId,
        role: PeerRole,
        candidate: String,
    ) -> Result<(), SfuError> {
        self.send(
            participant,
            Command::Candidate {
                participant,
                role,
                candidate,
            },
        )
    }

    /// Subscribes a participant to a track of its own room (a track of another room is
    /// refused and counted); its downstream PC gets a media section whose msid is
    /// `stream_id track_label`, and a new [`SfuEvent::Offer`] (or, on a single PC,
    /// [`SfuEvent::NeedOffer`]) follows.
    pub fn subscribe(
        &self,
        participant: ParticipantId,
        track: TrackId,
        stream_id: String,
        track_label: String,
    ) -> Result<(), SfuError> {
        self.send(
            participant,
            Command::Subscribe {
                participant,
                track,
                stream_id,
                track_label,
            },
        )
    }

    /// Ends a subscription (its media section goes inactive after the next offer).
    pub fn unsubscribe(&self, participant: ParticipantId, track: TrackId) -> Result<(), SfuError> {
        self.send(participant, Command::Unsubscribe { participant, track })
    }

    /// Pauses or resumes forwarding of one subscription (LiveKit `UpdateTrackSettings.disabled`).
    /// Resuming waits for a keyframe (a PLI is sent to the publisher).
    pub fn set_paused(
        &self,
        participant: ParticipantId,
        track: TrackId,
        paused: bool,
    ) -> Result<(), SfuError> {
        self.send(
            participant,
            Command::SetPaused {
                participant,
                track,
                paused,
            },
        )
    }

    /// Caps the simulcast layer one subscription receives (LiveKit `UpdateTrackSettings.quality`
    /// / `width` × `height`). The subscriber gets the highest layer the publisher sends that is
    /// at or below the cap, or the lowest sent above it; a switch waits for a keyframe of the
    /// new layer (a PLI asks for one).
    pub fn set_max_layer(
        &self,
        participant: ParticipantId,
        track: TrackId,
        layer: Layer,
    ) -> Result<(), SfuError> {
        self.send(
            participant,
            Command::SetMaxLayer {
                participant,
                track,
                layer,
            },
        )
    }

    /// Removes a participant: its sessions close, its tracks end for every subscriber.
    pub fn leave(&self, participant: ParticipantId) -> Result<(), SfuError> {
        self.placement.leave(participant)
    }
}
