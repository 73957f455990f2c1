//! The LiveKit view of rooms: who is in which room, with which `ParticipantInfo` and tracks, and
//! how to reach each participant's signalling session. Control plane only (one mutex, short
//! critical sections); media never passes here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use switchboard_sfu::{ParticipantId, TrackId};
use tokio::sync::mpsc;

/// Messages from the room (other sessions) to one participant's session task.
#[derive(Debug)]
pub enum Inbox {
    /// Send this to the client as is (boxed: the largest message is ~900 bytes).
    Signal(Box<proto::signal_response::Message>),
    /// A track of another participant went live; subscribe if auto-subscribe is on. Always sent
    /// after the `ParticipantUpdate` that carries the track.
    TrackLive {
        /// SFU track id.
        track: TrackId,
        /// Publisher's `PA_` sid.
        publisher_sid: String,
        /// The track's `TR_` sid.
        track_sid: String,
    },
    /// End the session with this `leave` reason (e.g. duplicate identity).
    Close(proto::DisconnectReason),
    /// The client resumed (`reconnect=1`) on a new WebSocket: continue on that one.
    Resume(Box<super::session::Resumption>),
}

/// One participant as the room sees it.
#[derive(Debug)]
pub struct Member {
    /// Full participant info; `tracks` holds only live tracks.
    pub info: proto::ParticipantInfo,
    /// SFU id of each live track, by `TR_` sid.
    pub track_ids: HashMap<String, TrackId>,
    /// Not announced to others (`video.hidden`).
    pub hidden: bool,
    /// The session task's inbox.
    pub inbox: mpsc::UnboundedSender<Inbox>,
}

/// One room.
#[derive(Debug)]
pub struct Room {
    /// Wire description (`RM_` sid, name, creation time).
    pub info: proto::Room,
    /// Members by SFU participant id.
    pub members: HashMap<ParticipantId, Member>,
    /// A room created ahead of its participants (MatrixRTC, for a full-access user) stays,
    /// while empty, until this time; `None`: removed as soon as it is empty.
    pub keep_until: Option<Instant>,
    /// How long a created room stays after its last participant left.
    pub departure_timeout: Duration,
}

impl Room {
    /// Sends `msg` to every member but `except`.
    pub fn broadcast(&self, except: Option<ParticipantId>, msg: impl Fn() -> Inbox) {
        for (pid, m) in &self.members {
            if Some(*pid) != except {
                let _ = m.inbox.send(msg());
            }
        }
    }

    /// Sends a `ParticipantUpdate` with `info` to everyone (to the participant itself too, when
    /// `include_self`); hidden participants are only told about themselves.
    pub fn announce(&self, who: ParticipantId, include_self: bool) {
        let Some(m) = self.members.get(&who) else {
            return;
        };
        let info = m.info.clone();
        let hidden = m.hidden;
        for (pid, other) in &self.members {
            let is_self = *pid == who;
            if (is_self && include_self) || (!is_self && !hidden) {
                let _ = other
                    .inbox
                    .send(Inbox::Signal(Box::new(update(vec![info.clone()]))));
            }
        }
    }

    /// Takes a member out and tells the others it left with `reason` (state `DISCONNECTED`).
    pub fn remove_member(
        &mut self,
        pid: ParticipantId,
        reason: proto::DisconnectReason,
    ) -> Option<Member> {
        let m = self.members.remove(&pid)?;
        if !m.hidden {
            let mut info = m.info.clone();
            info.state = proto::participant_info::State::Disconnected as i32;
            info.disconnect_reason = reason as i32;
            info.version += 1;
            info.tracks.clear();
            self.broadcast(None, || Inbox::Signal(Box::new(update(vec![info.clone()]))));
        }
        Some(m)
    }

    /// Infos of everyone visible to `viewer`.
    pub fn others(&self, viewer: ParticipantId) -> Vec<proto::ParticipantInfo> {
        self.members
            .iter()
            .filter(|(pid, m)| **pid != viewer && !m.hidden)
            .map(|(_, m)| m.info.clone())
            .collect()
    }

    /// Finds a live track of a visible participant by `TR_` sid: (publisher, publisher sid,
    /// SFU track id).
    /// A published track's media-plane id and its simulcast layers (as announced in
    /// `AddTrackRequest`, `TrackInfo.layers`).
    pub fn track_layers(&self, track_sid: &str) -> Option<(TrackId, Vec<proto::VideoLayer>)> {
        self.members.values().filter(|m| !m.hidden).find_map(|m| {
            let id = *m.track_ids.get(track_sid)?;
            let layers = m
                .info
                .tracks
                .iter()
                .find(|t| t.sid == track_sid)
                .and_then(|t| t.codecs.first())
                .map(|c| c.layers.clone())
                .unwrap_or_default();
            Some((id, layers))
        })
    }

    pub fn find_track(&self, track_sid: &str) -> Option<(ParticipantId, String, TrackId)> {
        self.members
            .iter()
            .filter(|(_, m)| !m.hidden)
            .find_map(|(pid, m)| {
                m.track_ids
                    .get(track_sid)
                    .map(|t| (*pid, m.info.sid.clone(), *t))
            })
    }
}

fn new_room(name: &str, keep_until: Option<Instant>, departure_timeout: Duration) -> Room {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    tracing::info!(room = name, "room created");
    Room {
        info: proto::Room {
            sid: crate::ids::room_sid(),
            name: name.to_string(),
            empty_timeout: 300,
            departure_timeout: departure_timeout.as_secs() as u32,
            creation_time: now.as_secs() as i64,
            creation_time_ms: now.as_millis() as i64,
            ..Default::default()
        },
        members: HashMap::new(),
        keep_until,
        departure_timeout,
    }
}

/// A `ParticipantUpdate` message.
pub fn update(participants: Vec<proto::ParticipantInfo>) -> proto::signal_response::Message {
    proto::signal_response::Message::Update(proto::ParticipantUpdate { participants })
}

/// All rooms of this node.
#[derive(Debug, Default)]
pub struct Registry {
    rooms: Mutex<HashMap<String, Room>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        // Created rooms whose keep time ran out while empty go now (lazily, on any access).
        let now = Instant::now();
        rooms.retain(|name, r| {
            let keep = !r.members.is_empty() || r.keep_until.is_some_and(|t| t > now);
            if !keep {
                tracing::info!(room = %name, "empty room expired");
            }
            keep
        });
        rooms
    }

    /// Runs `f` on the room named `name`, if it exists.
    pub fn with_room<R>(&self, name: &str, f: impl FnOnce(&mut Room) -> R) -> Option<R> {
        self.lock().get_mut(name).map(f)
    }

    /// Runs `f` on the room named `name`, creating it first if needed.
    pub fn with_room_or_create<R>(&self, name: &str, f: impl FnOnce(&mut Room) -> R) -> R {
        let mut rooms = self.lock();
        let room = rooms
            .entry(name.to_string())
            .or_insert_with(|| new_room(name, None, Duration::ZERO));
        f(room)
    }

    /// Creates a room ahead of its participants (LiveKit `CreateRoom` semantics: an existing
    /// room is left as it is). It stays `empty_timeout` while nobody is in it, and
    /// `departure_timeout` after its last participant left.
    pub fn create_room(&self, name: &str, empty_timeout: Duration, departure_timeout: Duration) {
        let mut rooms = self.lock();
        rooms.entry(name.to_string()).or_insert_with(|| {
            new_room(
                name,
                Some(Instant::now() + empty_timeout),
                departure_timeout,
            )
        });
    }

    /// Whether a room exists.
    pub fn exists(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Removes a member (if it is still `pid`), tells the others it left with `reason`, and
    /// drops the room when it is empty. Returns whether the member was there.
    pub fn remove(&self, name: &str, pid: ParticipantId, reason: proto::DisconnectReason) -> bool {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(name) else {
            return false;
        };
        if room.remove_member(pid, reason).is_none() {
            return false;
        }
        if room.members.is_empty() {
            if room.keep_until.is_some() {
                room.keep_until = Some(Instant::now() + room.departure_timeout);
            } else {
                rooms.remove(name);
                tracing::info!(room = name, "room closed");
            }
        }
        true
    }

    /// Whether a participant with this identity is in the room.
    pub fn has_identity(&self, name: &str, identity: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|r| r.members.values().any(|m| m.info.identity == identity))
    }

    /// (rooms, participants) now.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.lock();
        let participants = rooms.values().map(|r| r.members.len()).sum();
        (rooms.len(), participants)
    }
}
