//! A participant receiving a track (LiveKit's "downtrack"): the section it rides on, whether it
//! is ready and paused, the layer cap it asked for, its [`Forwarder`] and its payload-type
//! mapping. Always within one room: the room creates it only for a track of that room.

use crate::allocator::Grant;
use crate::forwarder::Forwarder;
use crate::layer::Layer;
use crate::session::{PtMapping, Section};
use crate::{ParticipantId, PeerRole};

/// One subscription. See the module docs.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub subscriber: ParticipantId,
    /// Which of the subscriber's PCs carries it (`Subscriber` on `/rtc`, `Publisher` on
    /// `/rtc/v1`'s single PC).
    pub role: PeerRole,
    /// msid stream id and track id the subscriber's section carries (`PA_…|TR_…`, `TR_…`).
    pub stream_id: String,
    pub track_label: String,
    /// The section it rides on, once one is allocated.
    pub section: Option<Section>,
    /// The section is negotiated: packets may flow.
    pub ready: bool,
    /// Forwarding paused by the subscriber (LiveKit `UpdateTrackSettings.disabled`).
    pub paused: bool,
    /// Highest simulcast layer the subscriber asked for.
    pub max_layer: Layer,
    /// What the subscriber's stream allocator grants it (video), from the bandwidth estimate.
    pub grant: Grant,
    pub forwarder: Forwarder,
    pub pt: PtMapping,
}

/// Settings of a subscription given before it existed (LiveKit clients send
/// `UpdateTrackSettings` as soon as they see a track, sometimes before the subscription is
/// made); applied when it is created.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct EarlySettings {
    pub paused: Option<bool>,
    pub max_layer: Option<Layer>,
}
