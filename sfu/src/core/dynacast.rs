//! The core's side of dynacast (`crate::dynacast`): recomputing a video track's needed layers
//! when its subscriptions change, the timer queue of pending downgrades and initial pushes, and
//! telling the publisher ([`SfuEvent::SubscribedLayers`]). Nothing here runs per packet.

use std::cmp::Reverse;
use std::time::Instant;

use crate::dynacast::needed;
use crate::layer::PerLayer;
use crate::{SfuEvent, TrackId};

use super::{MediaCore, RoomKey};

impl MediaCore {
    /// Recomputes what `track`'s subscribers need and tells its publisher if that is due now
    /// (call after any change to the track's subscriptions or its going live).
    pub(super) fn update_dynacast(&mut self, room: RoomKey, track: TrackId) {
        let now = self.now;
        let Some(t) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.tracks.get_mut(&track))
        else {
            return;
        };
        if !t.is_video() {
            return;
        }
        let wanted = needed(&t.subscriptions, t.top_layer());
        let told = t.dynacast.update(wanted, now);
        self.dynacast_outcome(room, track, told);
    }

    /// Runs the dynacast deadlines due at `now`.
    pub(super) fn dynacast_timeouts(&mut self, now: Instant) {
        while let Some(Reverse((at, room, track))) = self.dynacast_timers.peek().copied() {
            if at > now {
                return;
            }
            self.dynacast_timers.pop();
            let Some(t) = self
                .rooms
                .get_mut(&room)
                .and_then(|r| r.tracks.get_mut(&track))
            else {
                continue;
            };
            if t.dynacast.scheduled != Some(at) {
                // Superseded by another deadline of the same track.
                continue;
            }
            t.dynacast.scheduled = None;
            let told = t.dynacast.poll(now);
            self.dynacast_outcome(room, track, told);
        }
    }

    /// The earliest dynacast deadline, if any (may be a superseded one: an early wake-up).
    pub(super) fn next_dynacast_deadline(&self) -> Option<Instant> {
        self.dynacast_timers.peek().map(|Reverse((t, ..))| *t)
    }

    /// Emits what is to be told and queues the track's next deadline.
    fn dynacast_outcome(&mut self, room: RoomKey, track: TrackId, told: Option<PerLayer<bool>>) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(t) = r.tracks.get_mut(&track) else {
            return;
        };
        if let Some(at) = t.dynacast.deadline() {
            if t.dynacast.scheduled != Some(at) {
                t.dynacast.scheduled = Some(at);
                self.dynacast_timers.push(Reverse((at, room, track)));
            }
        }
        let Some(layers) = told else {
            return;
        };
        tracing::debug!(track = track.0, ?layers, "subscribed layers changed");
        if let Some(p) = r.participants.get(&t.publisher) {
            p.emit(SfuEvent::SubscribedLayers { track, layers });
        }
    }
}
