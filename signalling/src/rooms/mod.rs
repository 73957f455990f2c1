//! The room roster, beside the wire adapters: who is in which room, with which participant
//! description and live tracks, and who is told what when that changes. Every adapter (LiveKit
//! now; a server API and the Matrix call-event gateway later) joins its participants here, so
//! each sees the others; MatrixRTC asks it whether an identity is in a room and waits for it
//! to leave ([`Rooms::presence`]).
//!
//! Control plane only: one mutex, short critical sections, lookups by room name (no operation
//! looks at other rooms). An empty room closes at its deadline, by a timer of its own, or
//! when it is next looked up, whichever comes first. Media never passes here; the roster
//! knows no wire format.
//!
//! Operations: [`Rooms::create`], [`Rooms::join`], [`Rooms::leave`], [`Rooms::mark_active`],
//! [`Rooms::publish_track`], [`Rooms::unpublish_track`], [`Rooms::set_track_muted`],
//! [`Rooms::update_metadata`]; lookups: [`Rooms::exists`], [`Rooms::room`],
//! [`Rooms::participant`], [`Rooms::find_identity`], [`Rooms::has_identity`],
//! [`Rooms::participants`], [`Rooms::view`], [`Rooms::find_track`], [`Rooms::track_sids`],
//! [`Rooms::participant_sids`], [`Rooms::counts`]; events: [`MemberEvent`] per member, [`Rooms::events`] for observers,
//! [`Rooms::presence`] for one identity.

mod events;
mod model;
mod presence;
mod room;
#[cfg(test)]
mod tests;

pub use events::{MemberEvent, MemberInbox, PublishedTrack, RoomEvent, RosterEvent};
pub use model::{
    AdapterData, Encryption, LeaveReason, MetadataUpdate, Participant, ParticipantKind,
    ParticipantState, Permissions, RoomInfo, Track, TrackSource, VideoLayer,
};
pub use presence::Presence;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use switchboard_sfu::{ParticipantId, TrackId};
use tokio::sync::broadcast;

use crate::ids::{ParticipantIdentity, ParticipantSid, RoomName, RoomSid, TrackSid};
use room::{Member, Observers, Room};

/// The `empty_timeout` a room created by its first join reports (LiveKit's default); such a
/// room closes as soon as its last participant leaves.
pub const DEFAULT_EMPTY_TIMEOUT: Duration = Duration::from_secs(300);
/// Roster events an observer may fall behind by before it misses some (and is told so by
/// `broadcast::error::RecvError::Lagged`).
pub const OBSERVER_BACKLOG: usize = 1024;

/// The roster of every room of this node. Cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    observers: broadcast::Sender<RosterEvent>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomName, Room>,
    participants: usize,
    watches: presence::Watches,
}

/// A participant about to join, and how to reach its session.
#[derive(Debug)]
pub struct NewMember {
    /// Its description; the roster sets `state` (joined) and `version` (1).
    pub participant: Participant,
    /// Subscribe it to every visible track that is or goes live ([`Joined::subscribe`],
    /// [`MemberEvent::Subscribe`]).
    pub auto_subscribe: bool,
    /// Where its events go.
    pub inbox: Box<dyn MemberInbox>,
}

/// What a participant finds when it joins.
#[derive(Debug)]
pub struct Joined {
    /// The room.
    pub room: RoomInfo,
    /// The participant as the roster keeps it.
    pub participant: Arc<Participant>,
    /// Everyone else it may see.
    pub others: Vec<Arc<Participant>>,
    /// An older session with the same identity was removed (and told so).
    pub replaced: bool,
    /// With auto-subscribe: the live tracks to subscribe to now (later ones come as
    /// [`MemberEvent::Subscribe`]).
    pub subscribe: Vec<PublishedTrack>,
}

/// A room as one participant sees it.
#[derive(Debug)]
pub struct RoomView {
    /// The participant itself, if it is in the room.
    pub me: Option<Arc<Participant>>,
    /// Everyone else it may see.
    pub others: Vec<Arc<Participant>>,
}

/// How many rooms and participants this node has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rooms, empty ones still waiting for their deadline included.
    pub rooms: usize,
    /// Participants in all rooms.
    pub participants: usize,
}

impl Default for Rooms {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves the maps consistent (every change is one insert or
        // remove), so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observers(&self) -> Observers<'_> {
        Observers {
            tx: &self.observers,
        }
    }
}

impl Rooms {
    /// An empty roster.
    pub fn new() -> Self {
        let (observers, _) = broadcast::channel(OBSERVER_BACKLOG);
        Rooms {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                observers,
            }),
        }
    }

    /// Creates a room ahead of its participants (LiveKit `CreateRoom`: an existing room is
    /// left as it is). It stays `empty_timeout` while nobody is in it, and
    /// `departure_timeout` after its last participant left.
    pub fn create(
        &self,
        name: &RoomName,
        empty_timeout: Duration,
        departure_timeout: Duration,
    ) -> RoomInfo {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let obs = self.inner.observers();
        if let Some(room) = st.room_mut(name, now, &obs) {
            return room.info.clone();
        }
        let mut room = Room::new(new_info(name, empty_timeout, departure_timeout));
        self.set_deadline(&mut room, now + empty_timeout);
        let info = room.info.clone();
        st.open(room, &obs);
        info
    }

    /// Puts a participant in its room (creating the room if needed), replacing an older
    /// session with the same identity: that one leaves first (`DuplicateIdentity`, and its
    /// inbox gets [`MemberEvent::Removed`]), so everyone sees the old participant go before
    /// the new one arrives.
    pub fn join(&self, name: &RoomName, new: NewMember) -> Joined {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let obs = self.inner.observers();
        let room = st.room_or_open(name, now, &obs);
        let mut p = new.participant;
        p.state = ParticipantState::Joined;
        p.version = 1;
        let pid = p.id;
        let identity = p.identity.clone();
        let replaced = room
            .member_id(&identity)
            .and_then(|old| room.remove(old, LeaveReason::DuplicateIdentity, &obs))
            .inspect(|(m, _)| {
                m.inbox
                    .deliver(MemberEvent::Removed(LeaveReason::DuplicateIdentity))
            })
            .is_some();
        let others = room.visible_to(pid);
        let subscribe = if new.auto_subscribe {
            room.tracks_visible_to(pid)
        } else {
            Vec::new()
        };
        let participant = Arc::new(p);
        room.insert(
            Member {
                participant: participant.clone(),
                auto_subscribe: new.auto_subscribe,
                inbox: new.inbox,
            },
            &obs,
        );
        room.expires_at = None;
        if let Some(t) = room.expiry_timer.take() {
            t.abort();
        }
        let joined = Joined {
            room: room.info.clone(),
            participant,
            others,
            replaced,
            subscribe,
        };
        st.participants = st.participants + 1 - usize::from(replaced);
        st.watches.arrived(&(name.clone(), identity));
        joined
    }

    /// Takes a participant out (if it is still `pid`: a replaced session finds itself gone)
    /// and tells the others it left with `reason`. The last one out starts the room's
    /// departure timeout (zero: it closes now). Returns the participant's last snapshot.
    pub fn leave(
        &self,
        name: &RoomName,
        pid: ParticipantId,
        reason: LeaveReason,
    ) -> Option<Arc<Participant>> {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let obs = self.inner.observers();
        let room = st.room_mut(name, now, &obs)?;
        let (_, last) = room.remove(pid, reason, &obs)?;
        let identity = last.identity.clone();
        if room.is_empty() {
            let departure = room.info.departure_timeout;
            if departure.is_zero() {
                st.close(name, &obs);
            } else if let Some(room) = st.rooms.get_mut(name) {
                self.set_deadline(room, now + departure);
            }
        }
        st.participants -= 1;
        st.watches.departed(&(name.clone(), identity));
        Some(last)
    }

    /// The participant's media connected: state `Active`, announced to the others.
    pub fn mark_active(&self, name: &RoomName, pid: ParticipantId) {
        self.with_room(name, |room, obs| {
            room.update(pid, false, obs, |p| p.state = ParticipantState::Active);
        });
    }

    /// A participant's track went live: announced to everyone, then offered to auto-subscribing
    /// members (not for hidden publishers). Returns whether the participant is in the room.
    pub fn publish_track(&self, name: &RoomName, pid: ParticipantId, track: Track) -> bool {
        self.with_room(name, |room, obs| room.publish(pid, track, obs))
            .unwrap_or(false)
    }

    /// A participant's track ended: announced to everyone. Returns the track, if it was live.
    pub fn unpublish_track(
        &self,
        name: &RoomName,
        pid: ParticipantId,
        sid: &TrackSid,
    ) -> Option<Track> {
        self.with_room(name, |room, obs| room.unpublish(pid, sid, obs))
            .flatten()
    }

    /// A participant (un)muted a track: announced to everyone (a new version even when the
    /// track is not live yet).
    pub fn set_track_muted(
        &self,
        name: &RoomName,
        pid: ParticipantId,
        sid: &TrackSid,
        muted: bool,
    ) {
        self.with_room(name, |room, obs| {
            room.update(pid, true, obs, |p| {
                for t in p.tracks.iter_mut().filter(|t| t.sid == *sid) {
                    t.muted = muted;
                }
            });
        });
    }

    /// A participant changed its name, metadata or attributes: announced to everyone.
    pub fn update_metadata(&self, name: &RoomName, pid: ParticipantId, update: MetadataUpdate) {
        self.with_room(name, |room, obs| {
            room.update(pid, true, obs, |p| {
                if let Some(m) = update.metadata {
                    p.metadata = m;
                }
                if let Some(n) = update.name {
                    p.name = n;
                }
                for (k, v) in update.attributes {
                    if v.is_empty() {
                        p.attributes.remove(&k);
                    } else {
                        p.attributes.insert(k, v);
                    }
                }
            });
        });
    }

    /// Whether the room exists.
    pub fn exists(&self, name: &RoomName) -> bool {
        self.with_room(name, |_, _| ()).is_some()
    }

    /// The room's description.
    pub fn room(&self, name: &RoomName) -> Option<RoomInfo> {
        self.with_room(name, |room, _| room.info.clone())
    }

    /// One participant, by media-plane id.
    pub fn participant(&self, name: &RoomName, pid: ParticipantId) -> Option<Arc<Participant>> {
        self.with_room(name, |room, _| room.participant(pid).cloned())
            .flatten()
    }

    /// The participant with this identity.
    pub fn find_identity(
        &self,
        name: &RoomName,
        identity: &ParticipantIdentity,
    ) -> Option<Arc<Participant>> {
        self.with_room(name, |room, _| {
            room.member_id(identity)
                .and_then(|pid| room.participant(pid).cloned())
        })
        .flatten()
    }

    /// Whether a participant with this identity is in the room.
    pub fn has_identity(&self, name: &RoomName, identity: &ParticipantIdentity) -> bool {
        self.with_room(name, |room, _| room.member_id(identity).is_some())
            .unwrap_or(false)
    }

    /// Everyone in the room, hidden participants included (for the server API).
    pub fn participants(&self, name: &RoomName) -> Vec<Arc<Participant>> {
        self.with_room(name, |room, _| room.participants().cloned().collect())
            .unwrap_or_default()
    }

    /// The room as `viewer` sees it.
    pub fn view(&self, name: &RoomName, viewer: ParticipantId) -> Option<RoomView> {
        self.with_room(name, |room, _| RoomView {
            me: room.participant(viewer).cloned(),
            others: room.visible_to(viewer),
        })
    }

    /// A live track of a visible participant, by sid.
    pub fn find_track(&self, name: &RoomName, sid: &TrackSid) -> Option<PublishedTrack> {
        self.with_room(name, |room, _| room.find_track(sid))
            .flatten()
    }

    /// The sids of live tracks by media id (those not live are left out).
    pub fn track_sids(&self, name: &RoomName, media: &[TrackId]) -> HashMap<TrackId, TrackSid> {
        if media.is_empty() {
            return HashMap::new();
        }
        self.with_room(name, |room, _| {
            media
                .iter()
                .filter_map(|id| room.track_sid(*id).map(|sid| (*id, sid.clone())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The sids of participants by media id, for `viewer`: itself and those it may see (the
    /// others and those gone are left out).
    pub fn participant_sids(
        &self,
        name: &RoomName,
        viewer: ParticipantId,
        pids: &[ParticipantId],
    ) -> HashMap<ParticipantId, ParticipantSid> {
        if pids.is_empty() {
            return HashMap::new();
        }
        self.with_room(name, |room, _| {
            pids.iter()
                .filter_map(|p| room.sid_visible_to(*p, viewer).map(|s| (*p, s.clone())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Rooms and participants now.
    pub fn counts(&self) -> Counts {
        let st = self.inner.lock();
        Counts {
            rooms: st.rooms.len(),
            participants: st.participants,
        }
    }

    /// Every change in every room, from now on. A receiver that falls more than
    /// [`OBSERVER_BACKLOG`] events behind misses the oldest (`RecvError::Lagged`).
    pub fn events(&self) -> broadcast::Receiver<RosterEvent> {
        self.inner.observers.subscribe()
    }

    /// Watches whether `identity` is in room `name` (which need not exist yet): resolves
    /// [`Presence::arrived`] and [`Presence::departed`] on that identity's joins and leaves,
    /// without polling.
    pub fn presence(&self, name: &RoomName, identity: &ParticipantIdentity) -> Presence {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let obs = self.inner.observers();
        let present = st
            .room_mut(name, now, &obs)
            .is_some_and(|room| room.member_id(identity).is_some());
        let key = (name.clone(), identity.clone());
        let rx = st.watches.watch(key.clone(), present);
        Presence::new(rx, Arc::downgrade(&self.inner), key)
    }

    /// Runs `f` on the room, if it exists (and has not expired).
    fn with_room<R>(
        &self,
        name: &RoomName,
        f: impl FnOnce(&mut Room, &Observers<'_>) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let mut st = self.inner.lock();
        let obs = self.inner.observers();
        st.room_mut(name, now, &obs).map(|room| f(room, &obs))
    }

    /// Sets an empty room's deadline and starts the timer that closes it then. Without a
    /// tokio runtime (unit tests) the room closes when it is next looked up after the deadline.
    fn set_deadline(&self, room: &mut Room, at: Instant) {
        room.expires_at = Some(at);
        if let Some(t) = room.expiry_timer.take() {
            t.abort();
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rooms = Arc::downgrade(&self.inner);
        let name = room.info.name.clone();
        let task = rt.spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            if let Some(inner) = rooms.upgrade() {
                let mut st = inner.lock();
                // closes it if it is still empty and past its (possibly newer) deadline
                st.room_mut(&name, Instant::now(), &inner.observers());
            }
        });
        room.expiry_timer = Some(task.abort_handle());
    }
}

impl State {
    /// The room, closing it first if it is empty past its deadline.
    fn room_mut(
        &mut self,
        name: &RoomName,
        now: Instant,
        obs: &Observers<'_>,
    ) -> Option<&mut Room> {
        self.expire_if_due(name, now, obs);
        self.rooms.get_mut(name)
    }

    /// The room, created (by its first join) if there is none.
    fn room_or_open(&mut self, name: &RoomName, now: Instant, obs: &Observers<'_>) -> &mut Room {
        self.expire_if_due(name, now, obs);
        match self.rooms.entry(name.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let room = Room::new(new_info(name, DEFAULT_EMPTY_TIMEOUT, Duration::ZERO));
                announce_open(&room, obs);
                e.insert(room)
            }
        }
    }

    fn open(&mut self, room: Room, obs: &Observers<'_>) {
        announce_open(&room, obs);
        self.rooms.insert(room.info.name.clone(), room);
    }

    fn expire_if_due(&mut self, name: &RoomName, now: Instant, obs: &Observers<'_>) {
        if self.rooms.get(name).is_some_and(|r| r.expired(now)) {
            tracing::info!(room = %name, "empty room expired");
            self.close(name, obs);
        }
    }

    /// Removes an empty room.
    fn close(&mut self, name: &RoomName, obs: &Observers<'_>) {
        if let Some(room) = self.rooms.remove(name) {
            debug_assert!(room.is_empty());
            if let Some(t) = &room.expiry_timer {
                t.abort();
            }
            tracing::info!(room = %name, "room closed");
            obs.emit(&room, || RoomEvent::RoomClosed);
        }
    }
}

fn announce_open(room: &Room, obs: &Observers<'_>) {
    tracing::info!(room = %room.info.name, "room created");
    obs.emit(room, || RoomEvent::RoomCreated(room.info.clone()));
}

fn new_info(name: &RoomName, empty_timeout: Duration, departure_timeout: Duration) -> RoomInfo {
    RoomInfo {
        sid: RoomSid::generate(),
        name: name.clone(),
        created_at: SystemTime::now(),
        empty_timeout,
        departure_timeout,
    }
}
