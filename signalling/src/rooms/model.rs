//! The roster's data, in no adapter's wire format: rooms, participants, their permissions and
//! published tracks. Adapters parse their wire messages into these at the edge and render
//! them back (LiveKit: `livekit/render.rs`); a participant who joined through one adapter is
//! rendered by every other. What only one adapter reads travels as [`AdapterData`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchboard_sfu::{ParticipantId, TrackId, TrackKind};

use crate::ids::{ParticipantIdentity, ParticipantSid, RoomName, RoomSid, TrackSid};

/// A room as described to clients.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// Server-assigned sid.
    pub sid: RoomSid,
    /// The room's name.
    pub name: RoomName,
    /// When the room was created.
    pub created_at: SystemTime,
    /// How long a room created ahead of its participants waits for the first one.
    pub empty_timeout: Duration,
    /// How long the room stays after its last participant left (zero: it closes at once).
    pub departure_timeout: Duration,
}

/// Where a participant is in its life (LiveKit's `ParticipantInfo.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantState {
    /// Signalling connected, not yet in the room.
    Joining,
    /// In the room; media not yet connected.
    Joined,
    /// Media connected.
    Active,
    /// Gone (only in the last snapshot, the one sent with [`super::MemberEvent::Left`]).
    Disconnected,
}

/// What kind of client a participant is (the token's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParticipantKind {
    /// A person's client.
    #[default]
    Standard,
    /// Media ingested from outside (RTMP, WHIP).
    Ingress,
    /// A recorder or streamer.
    Egress,
    /// A telephone call.
    Sip,
    /// A program taking part (an AI agent).
    Agent,
}

/// What a participant may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// May receive others' tracks.
    pub can_subscribe: bool,
    /// May publish tracks.
    pub can_publish: bool,
    /// May send data messages.
    pub can_publish_data: bool,
    /// The sources it may publish; empty: any.
    pub can_publish_sources: Vec<TrackSource>,
    /// May change its own name, metadata and attributes.
    pub can_update_metadata: bool,
    /// Not shown to others, its tracks not offered.
    pub hidden: bool,
    /// A recorder (shown to others as such).
    pub recorder: bool,
    /// An agent (shown to others as such).
    pub agent: bool,
}

/// A participant as everyone in the room sees it. The roster owns `version` and `state`;
/// every change it announces increments `version`.
#[derive(Debug, Clone)]
pub struct Participant {
    /// The media plane's id of this participant.
    pub id: ParticipantId,
    /// Server-assigned sid.
    pub sid: ParticipantSid,
    /// Identity, unique in the room.
    pub identity: ParticipantIdentity,
    /// Display name.
    pub name: String,
    /// Application metadata (opaque text).
    pub metadata: String,
    /// Application attributes.
    pub attributes: HashMap<String, String>,
    /// Where it is in its life.
    pub state: ParticipantState,
    /// When it joined.
    pub joined_at: SystemTime,
    /// Increments with every announced change (starts at 1).
    pub version: u32,
    /// What it may do.
    pub permissions: Permissions,
    /// What kind of client it is.
    pub kind: ParticipantKind,
    /// Live tracks (first media arrived), in the order they went live.
    pub tracks: Vec<Track>,
    /// It has published a track at least once.
    pub is_publisher: bool,
    /// What only the adapter it joined through reads (LiveKit: the client protocol version).
    pub adapter: AdapterData,
}

/// One published media source.
#[derive(Debug, Clone)]
pub struct Track {
    /// Server-assigned sid.
    pub sid: TrackSid,
    /// The media plane's id of this track.
    pub media: TrackId,
    /// Audio or video.
    pub kind: TrackKind,
    /// What it captures.
    pub source: TrackSource,
    /// The publisher's name for it.
    pub name: String,
    /// The publisher muted it.
    pub muted: bool,
    /// Video size announced by the publisher (0 when unknown or audio).
    pub width: u32,
    /// Video height announced by the publisher.
    pub height: u32,
    /// Codec as a MIME type (`audio/opus`, `video/VP8`): announced, then negotiated.
    pub mime: String,
    /// The publisher's own id of the track (WebRTC `MediaStreamTrack.id`).
    pub cid: String,
    /// Simulcast layers, lowest quality first; at most one for a single-layer track.
    pub layers: Vec<VideoLayer>,
    /// End-to-end encryption of its frames.
    pub encryption: Encryption,
    /// The publisher's stream name, grouping tracks (e.g. camera and microphone).
    pub stream: String,
    /// What only the adapter it was published through reads.
    pub adapter: AdapterData,
}

/// What a track captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrackSource {
    /// Not said.
    #[default]
    Unknown,
    /// A camera.
    Camera,
    /// A microphone.
    Microphone,
    /// A screen share's video.
    ScreenShare,
    /// A screen share's audio.
    ScreenShareAudio,
}

/// End-to-end encryption of a track's frames (the server forwards them untouched either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Not encrypted.
    #[default]
    None,
    /// AES-GCM frame encryption (the SDKs' built-in scheme).
    Gcm,
    /// An application's own scheme.
    Custom,
}

/// One simulcast layer as the publisher announced it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VideoLayer {
    /// Quality rank: 0 low, 1 medium, 2 high (LiveKit's `VideoQuality`).
    pub quality: i32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Target bitrate, bits per second.
    pub bitrate: u32,
    /// SSRC, when the publisher announced one.
    pub ssrc: u32,
    /// Spatial layer index (SVC).
    pub spatial_layer: i32,
    /// RTP stream id (`q`, `h`, `f`).
    pub rid: String,
    /// RTX SSRC, when announced.
    pub repair_ssrc: u32,
}

/// Why a participant left (LiveKit's `DisconnectReason` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client said goodbye (or closed its peer connection).
    ClientInitiated,
    /// Another session with the same identity joined.
    DuplicateIdentity,
    /// The server is stopping, or its media plane stopped.
    ServerShutdown,
    /// Removed by the server API.
    ParticipantRemoved,
    /// The room was deleted.
    RoomDeleted,
    /// Joining failed (the media plane refused the participant).
    JoinFailure,
    /// The signalling connection ended (timeout, bad input, not resumed).
    SignalClose,
    /// Its media connection failed.
    MediaFailure,
}

/// A change to a participant's own description; `None` / absent keys leave a field as it is.
#[derive(Debug, Clone, Default)]
pub struct MetadataUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New metadata.
    pub metadata: Option<String>,
    /// Attributes to set; an empty value removes the attribute.
    pub attributes: HashMap<String, String>,
}

/// Data only the adapter that made a record reads (LiveKit: a track's RED and audio-feature
/// flags, a client's protocol version); other adapters render their own defaults. Cheap to
/// clone.
#[derive(Clone, Default)]
pub struct AdapterData(Option<Arc<dyn Any + Send + Sync>>);

impl AdapterData {
    /// Wraps an adapter's value.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Some(Arc::new(value)))
    }

    /// The value, if it is a `T` (it was made by the adapter that owns `T`).
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|v| v.downcast_ref())
    }
}

impl fmt::Debug for AdapterData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AdapterData(..)"
        } else {
            "AdapterData(none)"
        })
    }
}
