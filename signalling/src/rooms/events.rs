//! What the roster tells: [`MemberEvent`]s to each member of a room (through the member's
//! [`MemberInbox`], in the order the changes happened), and [`RosterEvent`]s to observers of
//! every room (a `tokio::sync::broadcast`, for the server API, webhooks, a Matrix gateway).
//! Visibility rules (hidden participants) apply to members, not to observers.

use std::fmt;
use std::sync::Arc;

use switchboard_sfu::ParticipantId;
use tokio::sync::mpsc;

use super::model::{LeaveReason, Participant, RoomInfo, Track};
use crate::ids::{ParticipantSid, RoomName, TrackSid};

/// A live track of another participant, as a member needs it to subscribe.
#[derive(Debug, Clone)]
pub struct PublishedTrack {
    /// The publisher's media-plane id.
    pub publisher: ParticipantId,
    /// The publisher's sid.
    pub publisher_sid: ParticipantSid,
    /// The track.
    pub track: Track,
}

/// One change a member of a room is told about.
#[derive(Debug, Clone)]
pub enum MemberEvent {
    /// Another participant joined (not sent for hidden participants).
    Joined(Arc<Participant>),
    /// A participant changed: state, tracks, mute, name, metadata, attributes. Sent to the
    /// participant itself too when the change is its own doing (tracks, mute, metadata), so
    /// its client learns the new version.
    Updated(Arc<Participant>),
    /// Another participant left; `participant` is its last snapshot (state `Disconnected`,
    /// no tracks, version incremented).
    Left {
        /// The last snapshot.
        participant: Arc<Participant>,
        /// Why it left.
        reason: LeaveReason,
    },
    /// Auto-subscribe: a track went live that this member subscribes to (sent only to members
    /// that joined with auto-subscribe, after the [`MemberEvent::Updated`] that shows it).
    Subscribe(Box<PublishedTrack>),
    /// This member was taken out of the room (another session with its identity joined, or
    /// the server removed it); its session should end with this reason.
    Removed(LeaveReason),
}

/// Where the roster delivers one member's events. Delivery must not block (it runs under the
/// roster's lock); an inbox whose receiver is gone drops events (its session is ending and
/// leaves the room itself).
pub trait MemberInbox: Send + Sync + fmt::Debug {
    /// Delivers one event.
    fn deliver(&self, event: MemberEvent);
}

impl<T> MemberInbox for mpsc::UnboundedSender<T>
where
    T: From<MemberEvent> + Send + fmt::Debug,
{
    fn deliver(&self, event: MemberEvent) {
        // A closed channel: the session ended and is leaving the room (see the trait's doc).
        let _ = self.send(T::from(event));
    }
}

/// A change in one room, for observers.
#[derive(Debug, Clone)]
pub struct RosterEvent {
    /// The room.
    pub room: RoomName,
    /// What happened.
    pub event: RoomEvent,
}

/// What observers are told (everything, hidden participants included).
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// The room was created (ahead of its participants, or by its first join).
    RoomCreated(RoomInfo),
    /// The room closed (empty past its timeout).
    RoomClosed,
    /// A participant joined.
    ParticipantJoined(Arc<Participant>),
    /// A participant changed.
    ParticipantUpdated(Arc<Participant>),
    /// A participant left (last snapshot).
    ParticipantLeft {
        /// The last snapshot.
        participant: Arc<Participant>,
        /// Why it left.
        reason: LeaveReason,
    },
    /// A participant's track went live.
    TrackPublished {
        /// The publisher, with the track among its tracks.
        participant: Arc<Participant>,
        /// The track.
        track: TrackSid,
    },
    /// A participant's track ended.
    TrackUnpublished {
        /// The publisher, without the track.
        participant: Arc<Participant>,
        /// The track as it was.
        track: Track,
    },
}
