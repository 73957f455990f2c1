//! One room's members and the rules of who is told what: announcements (hidden participants
//! are shown only to themselves), versions, auto-subscribe decisions, and the indexes that
//! keep lookups inside the room (by identity, by track). Runs under the roster's lock; knows
//! nothing of other rooms, timers or wire formats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use switchboard_sfu::{ParticipantId, TrackId};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use super::events::{MemberEvent, MemberInbox, PublishedTrack, RoomEvent, RosterEvent};
use super::model::{LeaveReason, Participant, ParticipantState, RoomInfo, Track};
use crate::ids::{ParticipantIdentity, ParticipantSid, TrackSid};

/// One member: its participant as everyone sees it, and how to reach its session.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) participant: Arc<Participant>,
    /// Subscribes to every visible track that goes live.
    pub(super) auto_subscribe: bool,
    pub(super) inbox: Box<dyn MemberInbox>,
}

impl Member {
    fn hidden(&self) -> bool {
        self.participant.permissions.hidden
    }
}

/// Observers of every room (the roster's broadcast), with the room's name to stamp events.
pub(super) struct Observers<'a> {
    pub(super) tx: &'a broadcast::Sender<RosterEvent>,
}

impl Observers<'_> {
    /// Sends the event built by `event`, built only when someone listens.
    pub(super) fn emit(&self, room: &Room, event: impl FnOnce() -> RoomEvent) {
        if self.tx.receiver_count() > 0 {
            // no receiver left in the meantime: nobody to tell
            let _ = self.tx.send(RosterEvent {
                room: room.info.name.clone(),
                event: event(),
            });
        }
    }
}

/// One room.
#[derive(Debug)]
pub(super) struct Room {
    pub(super) info: RoomInfo,
    members: HashMap<ParticipantId, Member>,
    by_identity: HashMap<ParticipantIdentity, ParticipantId>,
    /// Live tracks: publisher and media id by sid, and sid by media id.
    by_track_sid: HashMap<TrackSid, (ParticipantId, TrackId)>,
    by_media_id: HashMap<TrackId, TrackSid>,
    /// While empty: when the room closes (`None` while someone is in it).
    pub(super) expires_at: Option<Instant>,
    /// The timer that closes the room at `expires_at`.
    pub(super) expiry_timer: Option<AbortHandle>,
}

impl Room {
    pub(super) fn new(info: RoomInfo) -> Self {
        Room {
            info,
            members: HashMap::new(),
            by_identity: HashMap::new(),
            by_track_sid: HashMap::new(),
            by_media_id: HashMap::new(),
            expires_at: None,
            expiry_timer: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Empty and past its deadline.
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.members.is_empty() && self.expires_at.is_some_and(|t| t <= now)
    }

    pub(super) fn member_id(&self, identity: &ParticipantIdentity) -> Option<ParticipantId> {
        self.by_identity.get(identity).copied()
    }

    pub(super) fn participant(&self, pid: ParticipantId) -> Option<&Arc<Participant>> {
        self.members.get(&pid).map(|m| &m.participant)
    }

    /// The sid of `pid` if `viewer` may see it (itself, or a participant that is not hidden).
    pub(super) fn sid_visible_to(
        &self,
        pid: ParticipantId,
        viewer: ParticipantId,
    ) -> Option<&ParticipantSid> {
        let m = self.members.get(&pid)?;
        (pid == viewer || !m.hidden()).then_some(&m.participant.sid)
    }

    pub(super) fn participants(&self) -> impl Iterator<Item = &Arc<Participant>> {
        self.members.values().map(|m| &m.participant)
    }

    /// Everyone `viewer` may see, itself excluded.
    pub(super) fn visible_to(&self, viewer: ParticipantId) -> Vec<Arc<Participant>> {
        self.members
            .iter()
            .filter(|(pid, m)| **pid != viewer && !m.hidden())
            .map(|(_, m)| m.participant.clone())
            .collect()
    }

    /// Live tracks of everyone `viewer` may see, itself excluded.
    pub(super) fn tracks_visible_to(&self, viewer: ParticipantId) -> Vec<PublishedTrack> {
        self.members
            .iter()
            .filter(|(pid, m)| **pid != viewer && !m.hidden())
            .flat_map(|(pid, m)| {
                m.participant.tracks.iter().map(|t| PublishedTrack {
                    publisher: *pid,
                    publisher_sid: m.participant.sid.clone(),
                    track: t.clone(),
                })
            })
            .collect()
    }

    /// A live track of a visible participant.
    pub(super) fn find_track(&self, sid: &TrackSid) -> Option<PublishedTrack> {
        let (pid, _) = self.by_track_sid.get(sid)?;
        let m = self.members.get(pid).filter(|m| !m.hidden())?;
        let track = m.participant.tracks.iter().find(|t| t.sid == *sid)?;
        Some(PublishedTrack {
            publisher: *pid,
            publisher_sid: m.participant.sid.clone(),
            track: track.clone(),
        })
    }

    /// The sid of a live track, by media id (any publisher, hidden ones too).
    pub(super) fn track_sid(&self, media: TrackId) -> Option<&TrackSid> {
        self.by_media_id.get(&media)
    }

    /// Adds a member, announcing it to everyone else. Its identity must not be in the room.
    pub(super) fn insert(&mut self, member: Member, obs: &Observers<'_>) {
        let p = member.participant.clone();
        if !member.hidden() {
            self.tell_others(p.id, || MemberEvent::Joined(p.clone()));
        }
        self.by_identity.insert(p.identity.clone(), p.id);
        for t in &p.tracks {
            self.index_track(p.id, t);
        }
        self.members.insert(p.id, member);
        obs.emit(self, || RoomEvent::ParticipantJoined(p));
    }

    /// Takes a member out and tells the others it left. Returns the member and its last
    /// snapshot (state `Disconnected`, no tracks, a new version).
    pub(super) fn remove(
        &mut self,
        pid: ParticipantId,
        reason: LeaveReason,
        obs: &Observers<'_>,
    ) -> Option<(Member, Arc<Participant>)> {
        let m = self.members.remove(&pid)?;
        self.by_identity.remove(&m.participant.identity);
        for t in &m.participant.tracks {
            self.by_track_sid.remove(&t.sid);
            self.by_media_id.remove(&t.media);
        }
        let mut last = (*m.participant).clone();
        last.state = ParticipantState::Disconnected;
        last.version += 1;
        last.tracks.clear();
        let last = Arc::new(last);
        if !m.hidden() {
            self.tell_others(pid, || MemberEvent::Left {
                participant: last.clone(),
                reason,
            });
        }
        let l = last.clone();
        obs.emit(self, || RoomEvent::ParticipantLeft {
            participant: l,
            reason,
        });
        Some((m, last))
    }

    /// Applies `change` to a member's participant, increments its version and announces the
    /// new snapshot (to the member itself too when `tell_self`). Returns the snapshot.
    pub(super) fn update(
        &mut self,
        pid: ParticipantId,
        tell_self: bool,
        obs: &Observers<'_>,
        change: impl FnOnce(&mut Participant),
    ) -> Option<Arc<Participant>> {
        let m = self.members.get_mut(&pid)?;
        let p = Arc::make_mut(&mut m.participant);
        change(p);
        p.version += 1;
        let snapshot = m.participant.clone();
        let hidden = m.hidden();
        if tell_self {
            m.inbox.deliver(MemberEvent::Updated(snapshot.clone()));
        }
        if !hidden {
            self.tell_others(pid, || MemberEvent::Updated(snapshot.clone()));
        }
        let s = snapshot.clone();
        obs.emit(self, || RoomEvent::ParticipantUpdated(s));
        Some(snapshot)
    }

    /// A member's track went live (replacing one with the same sid): announces the
    /// participant, then asks auto-subscribing members to subscribe.
    pub(super) fn publish(
        &mut self,
        pid: ParticipantId,
        track: Track,
        obs: &Observers<'_>,
    ) -> bool {
        let sid = track.sid.clone();
        let t = track.clone();
        let Some(p) = self.update(pid, true, obs, |p| {
            p.tracks.retain(|x| x.sid != t.sid);
            p.tracks.push(t);
            p.is_publisher = true;
        }) else {
            return false;
        };
        self.index_track(pid, &track);
        if !p.permissions.hidden {
            let published = PublishedTrack {
                publisher: pid,
                publisher_sid: p.sid.clone(),
                track,
            };
            for (other, m) in &self.members {
                if *other != pid && m.auto_subscribe {
                    m.inbox
                        .deliver(MemberEvent::Subscribe(Box::new(published.clone())));
                }
            }
        }
        obs.emit(self, || RoomEvent::TrackPublished {
            participant: p,
            track: sid,
        });
        true
    }

    /// A member's track ended: announces the participant without it.
    pub(super) fn unpublish(
        &mut self,
        pid: ParticipantId,
        sid: &TrackSid,
        obs: &Observers<'_>,
    ) -> Option<Track> {
        let mut ended = None;
        let p = self.update(pid, true, obs, |p| {
            if let Some(i) = p.tracks.iter().position(|t| t.sid == *sid) {
                ended = Some(p.tracks.remove(i));
            }
        })?;
        let track = ended?;
        self.by_track_sid.remove(&track.sid);
        self.by_media_id.remove(&track.media);
        let t = track.clone();
        obs.emit(self, || RoomEvent::TrackUnpublished {
            participant: p,
            track: t,
        });
        Some(track)
    }

    fn index_track(&mut self, pid: ParticipantId, t: &Track) {
        self.by_track_sid.insert(t.sid.clone(), (pid, t.media));
        self.by_media_id.insert(t.media, t.sid.clone());
    }

    /// Delivers `event()` to every member but `except`.
    fn tell_others(&self, except: ParticipantId, event: impl Fn() -> MemberEvent) {
        for (pid, m) in &self.members {
            if *pid != except {
                m.inbox.deliver(event());
            }
        }
    }
}
