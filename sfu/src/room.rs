//! A room: the unit of media routing. It owns its participants (each with its peer-connection
//! sessions), their published tracks and every subscription among them; nothing crosses rooms.
//! A room lives on one media thread. What happens inside (forwarding, negotiation) is in
//! `core/`; this file is the data and the lookups.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::forwarder::ForwardedState;
use crate::quality::ConnectionQuality;
use crate::sdp_munge::RecvSlot;
use crate::session::{Section, SectionChange, Session};
use crate::speakers::SpeakerDetector;
use crate::subscription::EarlySettings;
use crate::track::Track;
use crate::{DataRouter, ParticipantId, PcLayout, PeerRole, PendingTrack, SfuEvent, TrackId};

/// One room. See the module docs.
pub(crate) struct Room {
    pub name: Arc<str>,
    pub participants: FxHashMap<ParticipantId, Participant>,
    pub tracks: FxHashMap<TrackId, Track>,
    /// Who was last announced speaking.
    pub speakers: SpeakerDetector,
    /// The connection quality last announced per participant.
    pub qualities: FxHashMap<ParticipantId, ConnectionQuality>,
}

impl Room {
    /// An empty room.
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            participants: FxHashMap::default(),
            tracks: FxHashMap::default(),
            speakers: SpeakerDetector::default(),
            qualities: FxHashMap::default(),
        }
    }

    /// The session `role` of `participant`, if both exist.
    pub fn session_mut(
        &mut self,
        participant: ParticipantId,
        role: PeerRole,
    ) -> Option<&mut Session> {
        self.participants.get_mut(&participant)?.session_mut(role)
    }
}

/// One participant of a room: its sessions, its tracks and what its subscriptions ride on.
pub(crate) struct Participant {
    pub identity: Arc<str>,
    events: mpsc::UnboundedSender<SfuEvent>,
    pub router: Box<dyn DataRouter>,
    pub layout: PcLayout,
    /// The PC the client offers on (the only one on `/rtc/v1`).
    pub publisher: Session,
    /// The PC the server offers on (`/rtc` with subscribe permission).
    pub subscriber: Option<Session>,
    /// Tracks announced (`AddTrackRequest`) and not yet bound to a section.
    pub pending: Vec<PendingTrack>,
    pub published: Vec<TrackId>,
    pub subscribed: Vec<TrackId>,
    /// Settings for subscriptions not made yet.
    pub early: FxHashMap<TrackId, EarlySettings>,
    /// Sections of the downstream PC and the tracks they carry.
    pub plan: SectionPlan,
    /// The bandwidth estimated towards it and what its allocator last did with it.
    pub bandwidth: crate::allocator::Bandwidth,
}

impl Participant {
    /// A participant with fresh sessions for its layout.
    pub fn new(
        identity: Arc<str>,
        events: mpsc::UnboundedSender<SfuEvent>,
        router: Box<dyn DataRouter>,
        layout: PcLayout,
        publisher: Session,
        subscriber: Option<Session>,
    ) -> Self {
        Self {
            identity,
            events,
            router,
            layout,
            publisher,
            subscriber,
            pending: Vec::new(),
            published: Vec::new(),
            subscribed: Vec::new(),
            early: FxHashMap::default(),
            plan: SectionPlan::default(),
            bandwidth: Default::default(),
        }
    }

    /// Sends an event to the participant's signalling session. The receiver is gone only while
    /// the participant is being removed, so a failed send is of no consequence.
    pub fn emit(&self, event: SfuEvent) {
        let _ = self.events.send(event);
    }

    /// The session that plays `role`: on the single PC of `/rtc/v1` both roles are one session.
    pub fn session_mut(&mut self, role: PeerRole) -> Option<&mut Session> {
        match (role, self.layout) {
            (PeerRole::Publisher, _) | (PeerRole::Subscriber, PcLayout::Single) => {
                Some(&mut self.publisher)
            }
            (PeerRole::Subscriber, _) => self.subscriber.as_mut(),
        }
    }

    /// The role of the session that carries subscribed tracks down, if any.
    pub fn downstream(&self) -> Option<PeerRole> {
        match self.layout {
            PcLayout::Dual => Some(PeerRole::Subscriber),
            PcLayout::Single => Some(PeerRole::Publisher),
            PcLayout::PublishOnly => None,
        }
    }

    /// The role of the session data for this participant goes down on: the subscriber PC when
    /// it has an open channel of `kind`, else the client's own.
    pub fn data_role(&self, kind: crate::DataKind) -> Option<PeerRole> {
        if self
            .subscriber
            .as_ref()
            .is_some_and(|s| s.has_channel(kind))
        {
            Some(PeerRole::Subscriber)
        } else if self.publisher.has_channel(kind) {
            Some(PeerRole::Publisher)
        } else {
            None
        }
    }
}

/// The downstream sections of a participant: which subscribed track each carries, the
/// changes waiting for the next server offer (`/rtc`), and the client's receive-only sections
/// (`/rtc/v1`).
#[derive(Debug, Default)]
pub(crate) struct SectionPlan {
    pub carried: HashMap<Section, TrackId>,
    /// `/rtc`: changes for the next subscriber offer, made when the current round ends.
    pub queued: Vec<SectionChange>,
    /// `/rtc/v1`: the client's receive-only sections in its last offer.
    pub recv_slots: Vec<RecvSlot>,
    /// `/rtc/v1`: receive-only sections asked for and not yet seen, (audio, video).
    pub requested: (u32, u32),
    /// `/rtc/v1`: a re-offer was asked for and has not arrived yet.
    pub reoffer_requested: bool,
    /// `/rtc/v1`: where the outgoing stream of a section stopped when its subscription ended,
    /// so a later track on the same section (same SSRC) continues it.
    pub last_state: HashMap<Section, ForwardedState>,
}
