//! The timer queue: when each session next needs `handle_timeout`, in a binary heap keyed by
//! deadline, so a wake-up touches only the sessions that are due instead of scanning all.
//!
//! Each session has at most one live entry (its `scheduled` deadline); entries superseded by an
//! earlier deadline stay in the heap and are skipped when they surface. A session whose deadline
//! moved later keeps its earlier entry: it is woken early once and rescheduled then.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::SessionRef;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SessionRef)>>,
    scheduled: FxHashMap<SessionRef, Instant>,
}

impl Timers {
    /// Makes sure `session` is woken no later than `at`.
    pub fn schedule(&mut self, session: SessionRef, at: Instant) {
        match self.scheduled.get(&session) {
            Some(t) if *t <= at => {}
            _ => {
                self.scheduled.insert(session, at);
                self.heap.push(Reverse((at, session)));
            }
        }
    }

    /// Forgets a session (its heap entries are skipped from now on).
    pub fn cancel(&mut self, session: SessionRef) {
        self.scheduled.remove(&session);
    }

    /// The earliest deadline, if any (may be a superseded entry: an early wake-up, harmless).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the next session due at or before `now`, if any; it is no longer scheduled.
    pub fn pop_due(&mut self, now: Instant) -> Option<SessionRef> {
        while let Some(Reverse((t, s))) = self.heap.peek().copied() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if self.scheduled.get(&s) == Some(&t) {
                self.scheduled.remove(&s);
                return Some(s);
            }
        }
        None
    }

    /// Sessions scheduled.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.scheduled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RoomKey;
    use crate::{ParticipantId, PeerRole};
    use std::time::Duration;

    fn s(n: u64) -> SessionRef {
        SessionRef {
            room: RoomKey(1),
            participant: ParticipantId(n),
            role: PeerRole::Publisher,
        }
    }

    #[test]
    fn only_due_sessions_come_out_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        q.schedule(s(1), t0 + Duration::from_millis(30));
        q.schedule(s(2), t0 + Duration::from_millis(10));
        q.schedule(s(3), t0 + Duration::from_millis(50));
        let now = t0 + Duration::from_millis(40);
        assert_eq!(q.pop_due(now), Some(s(2)));
        assert_eq!(q.pop_due(now), Some(s(1)));
        assert_eq!(q.pop_due(now), None);
        assert_eq!(q.next(), Some(t0 + Duration::from_millis(50)));
    }

    #[test]
    fn an_earlier_deadline_supersedes_and_a_later_one_keeps_the_early_wake() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        q.schedule(s(1), t0 + Duration::from_millis(30));
        q.schedule(s(1), t0 + Duration::from_millis(10));
        q.schedule(s(1), t0 + Duration::from_millis(90));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(10)), Some(s(1)));
        // The superseded 30 ms entry is skipped.
        assert_eq!(q.pop_due(t0 + Duration::from_millis(60)), None);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn cancelled_sessions_never_come_out() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        q.schedule(s(1), t0);
        q.cancel(s(1));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), None);
    }
}
