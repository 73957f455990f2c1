//! Room placement over media threads: a room lives on one thread (so its packet path never
//! crosses threads); a new room goes to the thread with the fewest participants. Control plane
//! only: one mutex, taken per command, never on the packet path. The same interface would
//! place rooms across nodes (multi-node keeps it in Redis).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::{Command, JoinParams, ParticipantId, SfuError};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Placement {
    threads: Vec<mpsc::UnboundedSender<Command>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Room → (thread, participants placed).
    rooms: HashMap<Arc<str>, (usize, usize)>,
    /// Participant → (thread, room).
    participants: HashMap<ParticipantId, (usize, Arc<str>)>,
    /// Participants per thread.
    load: Vec<usize>,
}

impl Placement {
    /// Placement over threads reached through these command senders.
    pub fn new(threads: Vec<mpsc::UnboundedSender<Command>>) -> Self {
        let load = vec![0; threads.len()];
        Self {
            threads,
            state: Mutex::new(State {
                load,
                ..State::default()
            }),
        }
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent maps (each edit is one insert or
        // remove), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thread of a room with participants.
    pub fn thread_of_room(&self, room: &str) -> Option<usize> {
        self.lock().rooms.get(room).map(|(t, _)| *t)
    }

    /// Places the participant's room (if new) and sends the join to its thread.
    pub fn join(&self, params: JoinParams) -> Result<(), SfuError> {
        let mut s = self.lock();
        if s.participants.contains_key(&params.participant) {
            return Ok(());
        }
        let thread = match s.rooms.get(&params.room) {
            Some((t, _)) => *t,
            None => s
                .load
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i),
        };
        let entry = s.rooms.entry(params.room.clone()).or_insert((thread, 0));
        entry.1 += 1;
        s.participants
            .insert(params.participant, (thread, params.room.clone()));
        if let Some(n) = s.load.get_mut(thread) {
            *n += 1;
        }
        self.to(thread, Command::Join(params))
    }

    /// Sends a command to the thread of `participant`; one for a participant that left is
    /// dropped (`Ok`).
    pub fn send(&self, participant: ParticipantId, cmd: Command) -> Result<(), SfuError> {
        let thread = self.lock().participants.get(&participant).map(|(t, _)| *t);
        match thread {
            Some(t) => self.to(t, cmd),
            None => Ok(()),
        }
    }

    /// Sends the leave and forgets the participant (and its room, when it was the last).
    pub fn leave(&self, participant: ParticipantId) -> Result<(), SfuError> {
        let mut s = self.lock();
        let Some((thread, room)) = s.participants.remove(&participant) else {
            return Ok(());
        };
        if let Some(n) = s.load.get_mut(thread) {
            *n = n.saturating_sub(1);
        }
        if let Some(entry) = s.rooms.get_mut(&room) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                s.rooms.remove(&room);
            }
        }
        self.to(thread, Command::Leave { participant })
    }

    fn to(&self, thread: usize, cmd: Command) -> Result<(), SfuError> {
        self.threads
            .get(thread)
            .ok_or(SfuError::Stopped)?
            .send(cmd)
            .map_err(|_| SfuError::Stopped)
    }
}
