//! Room-level events: what the core tells every participant of a room at once, on its own
//! timer rather than in answer to one session's input: active speakers, evaluated every
//! [`SpeakerSettings::update_interval`] from the audio tracks' level meters (`speakers.rs`)
//! and sent as [`SfuEvent::SpeakersChanged`] when they changed; connection qualities,
//! evaluated every [`QUALITY_INTERVAL`] from the tracks' loss windows (`quality.rs`) and sent
//! as [`SfuEvent::ConnectionQuality`] when one changed.
//!
//! One event value per room and change, shared by every participant's copy (`Arc`).

use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::layer::Layer;
use crate::quality::{ConnectionQuality, QualityUpdate, WindowStats, MAX_SCORE, QUALITY_INTERVAL};
use crate::room::Room;
use crate::speakers::{Speaker, SpeakerSettings};
use crate::{ParticipantId, SfuEvent};

use super::MediaCore;

impl MediaCore {
    /// The speaker settings this core detects with.
    pub fn speaker_settings(&self) -> SpeakerSettings {
        self.speaker_settings
    }

    /// When the rooms' speakers or qualities are next evaluated (`None` without rooms).
    pub(super) fn next_room_tick(&self) -> Option<Instant> {
        (!self.rooms.is_empty()).then_some(self.speaker_tick.min(self.quality_tick))
    }

    /// Scores every participant's connection if the interval is up, sending every room's
    /// qualities where one changed.
    pub(super) fn tick_quality(&mut self, now: Instant) {
        if now < self.quality_tick {
            return;
        }
        self.quality_tick += QUALITY_INTERVAL;
        if self.quality_tick <= now {
            self.quality_tick = now + QUALITY_INTERVAL;
        }
        for room in self.rooms.values_mut() {
            // Every participant, scored by its worst published track (none: the best), and
            // how many of its tracks were sending before and how many of those sent nothing.
            let mut worst: FxHashMap<ParticipantId, ParticipantScore> = room
                .participants
                .keys()
                .map(|p| (*p, ParticipantScore::default()))
                .collect();
            for track in room.tracks.values_mut() {
                let mut stats = WindowStats::default();
                let mut live = false;
                for layer in Layer::ALL {
                    let w = &mut track.loss[layer];
                    live |= w.ever();
                    let s = w.take();
                    stats.expected = stats.expected.saturating_add(s.expected);
                    stats.lost = stats.lost.saturating_add(s.lost);
                }
                let dry = track.scorer.update(stats, None).is_none();
                let Some(w) = worst.get_mut(&track.publisher) else {
                    continue;
                };
                let this = (track.scorer.quality(), track.scorer.score());
                if this < w.worst {
                    w.worst = this;
                }
                if live {
                    w.live += 1;
                    w.dry += u32::from(dry);
                }
            }
            let worst: FxHashMap<ParticipantId, (ConnectionQuality, f64)> = worst
                .into_iter()
                .map(|(p, s)| {
                    // Everything it sent stopped: its connection is gone (a muted camera alone
                    // stops one track, never the audio's DTX packets too).
                    let lost = s.live > 0 && s.dry == s.live;
                    (
                        p,
                        if lost {
                            (ConnectionQuality::Lost, 0.0)
                        } else {
                            s.worst
                        },
                    )
                })
                .collect();
            // New participants and changed qualities count; one leaving does not (the roster
            // tells everyone), as in LiveKit's `connectionQualityWorker`.
            let changed = worst
                .iter()
                .any(|(p, (q, _))| room.qualities.get(p) != Some(q));
            room.qualities = worst.iter().map(|(p, (q, _))| (*p, *q)).collect();
            if changed {
                let updates: Vec<QualityUpdate> = worst
                    .into_iter()
                    .map(|(participant, (quality, score))| QualityUpdate {
                        participant,
                        quality,
                        score: score as f32,
                    })
                    .collect();
                emit_to_room(
                    room,
                    SfuEvent::ConnectionQuality {
                        updates: Arc::from(updates),
                    },
                );
            }
        }
    }

    /// Evaluates every room's speakers if their interval is up, sending what changed.
    pub(super) fn tick_speakers(&mut self, now: Instant) {
        if now < self.speaker_tick {
            return;
        }
        let interval = self.speaker_settings.update_interval;
        self.speaker_tick += interval;
        if self.speaker_tick <= now {
            // Late (a long stall, or no rooms for a while): next tick one interval from now.
            self.speaker_tick = now + interval;
        }
        let mut levels: FxHashMap<ParticipantId, f64> = FxHashMap::default();
        for room in self.rooms.values_mut() {
            levels.clear();
            for track in room.tracks.values_mut() {
                let Some(meter) = track.meter.as_mut() else {
                    continue;
                };
                let (level, active) = meter.level(now);
                if active {
                    // A participant speaks as loud as its loudest audio track.
                    let l = levels.entry(track.publisher).or_insert(0.0);
                    *l = l.max(level);
                }
            }
            let active = levels
                .iter()
                .map(|(p, l)| Speaker {
                    participant: *p,
                    level: *l as f32,
                    active: true,
                })
                .collect();
            if let Some(changes) = room.speakers.update(active) {
                emit_to_room(
                    room,
                    SfuEvent::SpeakersChanged {
                        speakers: Arc::from(changes),
                    },
                );
            }
        }
    }
}

/// One participant's tracks in a quality window.
struct ParticipantScore {
    /// Its worst track's quality and score.
    worst: (ConnectionQuality, f64),
    /// Tracks that have sent, and of those, the ones that sent nothing in this window.
    live: u32,
    dry: u32,
}

impl Default for ParticipantScore {
    fn default() -> Self {
        Self {
            worst: (ConnectionQuality::Excellent, MAX_SCORE),
            live: 0,
            dry: 0,
        }
    }
}

/// Sends `event` to every participant of `room` (each gets a clone: cheap for the room-level
/// events, whose payloads are shared).
fn emit_to_room(room: &Room, event: SfuEvent) {
    for p in room.participants.values() {
        p.emit(event.clone());
    }
}
