//! The timer queue: when each session next needs `handle_timeout`, in a binary heap keyed by
//! deadline, so a wake-up touches only the sessions that are due instead of scanning all.
//!
//! Each session has at most one live entry (its `scheduled` deadline); entries superseded by an
//! earlier deadline stay in the heap and are skipped when they surface. A session whose deadline
//! moved later keeps its earlier entry: it is woken early once and rescheduled then. A deadline
//! less than [`SLACK`] earlier than the scheduled one keeps the scheduled one (str0m moves its
//! deadline a little earlier on almost every write; without the slack the heap filled with
//! superseded entries: 70 000 for 220 sessions under load). When superseded entries still
//! outnumber live ones, the heap is rebuilt from the live ones (amortised O(1) per schedule).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::SessionRef;

/// How much earlier than its scheduled wake-up a new deadline must be to move it.
pub(crate) const SLACK: Duration = Duration::from_millis(1);

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SessionRef)>>,
    scheduled: FxHashMap<SessionRef, Instant>,
}

impl Timers {
    /// Makes sure `session` is woken no later than `at` (+ [`SLACK`]).
    pub fn schedule(&mut self, session: SessionRef, at: Instant) {
        match self.scheduled.get(&session) {
            Some(t) if *t <= at + SLACK => {}
            _ => {
                self.scheduled.insert(session, at);
                self.heap.push(Reverse((at, session)));
                if self.heap.len() > 2 * self.scheduled.len() + 64 {
                    self.compact();
                }
            }
        }
    }

    /// Rebuilds the heap from the live entries only, reusing its allocation.
    fn compact(&mut self) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.clear();
        entries.extend(self.scheduled.iter().map(|(s, t)| Reverse((*t, *s))));
        self.heap = BinaryHeap::from(entries);
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

    /// Entries in the heap, live or superseded.
    #[cfg(test)]
    pub fn heap_len(&self) -> usize {
        self.heap.len()
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
    fn a_deadline_moving_a_little_earlier_keeps_the_scheduled_wake() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        q.schedule(s(1), t0 + Duration::from_millis(100));
        q.schedule(s(1), t0 + Duration::from_micros(99_500));
        assert_eq!(q.heap_len(), 1);
        q.schedule(s(1), t0 + Duration::from_millis(50));
        assert_eq!(q.next(), Some(t0 + Duration::from_millis(50)));
    }

    #[test]
    fn superseded_entries_are_bounded_by_the_live_ones() {
        let t0 = Instant::now();
        let mut q = Timers::default();
        for n in 0..10 {
            q.schedule(s(n), t0 + Duration::from_secs(100));
        }
        // Every session's deadline keeps moving earlier, 2 ms at a time.
        for step in 1..5_000u64 {
            for n in 0..10 {
                q.schedule(
                    s(n),
                    t0 + Duration::from_secs(100) - Duration::from_millis(2 * step),
                );
            }
            assert!(
                q.heap_len() <= 2 * 10 + 64 + 1,
                "heap grew to {}",
                q.heap_len()
            );
        }
        let due = t0 + Duration::from_secs(100);
        let mut out: Vec<_> = std::iter::from_fn(|| q.pop_due(due)).collect();
        out.sort();
        assert_eq!(out, (0..10).map(s).collect::<Vec<_>>());
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
