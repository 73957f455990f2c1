//! Presence of one identity in one room, for a watcher that must act when it arrives or
//! leaves (MatrixRTC's delegated leave) without polling: a `tokio::sync::watch` per watched
//! (room, identity), updated by the roster's join and leave of that identity only. The entry
//! goes when its last watcher does.

use std::collections::HashMap;
use std::sync::Weak;

use tokio::sync::watch;

use super::Inner;
use crate::ids::{ParticipantIdentity, RoomName};

/// (room, identity): the key of a watch.
pub(super) type Key = (RoomName, ParticipantIdentity);

/// What a watch holds: whether the identity is in the room, and how often it left so far
/// (so a watcher that looks late still sees a leave followed by a rejoin).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PresenceState {
    pub(super) present: bool,
    pub(super) departures: u64,
}

/// The watches, kept under the roster's lock.
#[derive(Debug, Default)]
pub(super) struct Watches {
    by_key: HashMap<Key, watch::Sender<PresenceState>>,
}

impl Watches {
    /// A receiver for `key`, starting from `present`.
    pub(super) fn watch(&mut self, key: Key, present: bool) -> watch::Receiver<PresenceState> {
        self.by_key
            .entry(key)
            .or_insert_with(|| {
                watch::Sender::new(PresenceState {
                    present,
                    departures: 0,
                })
            })
            .subscribe()
    }

    /// The identity is in the room now (joined, or replaced its own older session).
    pub(super) fn arrived(&self, key: &Key) {
        if let Some(tx) = self.by_key.get(key) {
            tx.send_if_modified(|s| !std::mem::replace(&mut s.present, true));
        }
    }

    /// The identity is no longer in the room.
    pub(super) fn departed(&self, key: &Key) {
        if let Some(tx) = self.by_key.get(key) {
            tx.send_modify(|s| {
                s.present = false;
                s.departures += 1;
            });
        }
    }

    /// Drops the watch of `key` if nobody receives it any more.
    fn release(&mut self, key: &Key) {
        if self
            .by_key
            .get(key)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            self.by_key.remove(key);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// Whether one identity is in one room, and a way to wait for it to arrive or leave. Made by
/// [`super::Rooms::presence`].
#[derive(Debug)]
pub struct Presence {
    // dropped before `_entry`, so the entry sees its receiver count without this one
    rx: watch::Receiver<PresenceState>,
    /// Held for its `Drop`, which releases the watch.
    _entry: Entry,
    /// Departures counted when the identity was last seen arriving.
    seen_departures: u64,
}

#[derive(Debug)]
struct Entry {
    rooms: Weak<Inner>,
    key: Key,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(inner) = self.rooms.upgrade() {
            inner.lock().watches.release(&self.key);
        }
    }
}

impl Presence {
    pub(super) fn new(rx: watch::Receiver<PresenceState>, rooms: Weak<Inner>, key: Key) -> Self {
        let seen_departures = rx.borrow().departures;
        Self {
            rx,
            _entry: Entry { rooms, key },
            seen_departures,
        }
    }

    /// Whether the identity is in the room now.
    pub fn is_present(&self) -> bool {
        self.rx.borrow().present
    }

    /// Resolves once the identity is in the room (at once if it is); also when the roster is
    /// gone (the server is stopping).
    pub async fn arrived(&mut self) {
        if let Ok(s) = self.rx.wait_for(|s| s.present).await {
            self.seen_departures = s.departures;
        }
    }

    /// Resolves once the identity has left the room since it was last seen arriving (at once
    /// if it has, even if it is back by now); also when the roster is gone.
    pub async fn departed(&mut self) {
        let seen = self.seen_departures;
        // Err: the roster (and with it the sender) is gone; that resolves too, as documented
        let _ = self.rx.wait_for(|s| s.departures > seen).await;
    }
}
