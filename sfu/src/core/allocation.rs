//! Bandwidth to layers: each subscriber's estimate (from its downstream session) goes through
//! its stream allocator (`allocator.rs`), whose grants cap the layer each of its video
//! subscriptions is forwarded at, or pause it; the estimator is then told what to sustain and
//! what to probe for, so layers come back when bandwidth does.

use std::time::{Duration, Instant};

use crate::allocator::{allocate, Grant, VideoDemand, NOMINAL_LAYER_BPS};
use crate::layer::Layer;
use crate::{ParticipantId, SfuEvent, TrackId};

use super::{MediaCore, RoomKey, SessionRef};

/// Allocations run at most this often per subscriber on estimates that barely move.
const REALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// An estimate that moves by more than this share reallocates at once.
const REALLOCATE_ON_CHANGE: f64 = 0.1;
/// Rate assumed for an audio track before it has been measured (bits/s; Opus at 32 kbit/s
/// plus packet overhead).
const NOMINAL_AUDIO_BPS: u64 = 50_000;

/// A subscriber's bandwidth state, kept with its participant.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bandwidth {
    /// Latest estimate towards it, bits/s (`None`: no estimate, nothing is limited).
    pub estimate_bps: Option<u64>,
    /// Estimate the last allocation ran with, and when.
    allocated_with: Option<(u64, Instant)>,
    /// (minimum, desired) last given to the estimator.
    target: (u64, u64),
}

impl MediaCore {
    /// A new estimate from a session of `sref`'s participant: reallocates if it is the
    /// downstream session and the estimate moved enough (or enough time passed).
    pub(super) fn bandwidth_estimate(&mut self, sref: SessionRef, bps: u64) {
        let now = self.now;
        let Some(p) = self
            .rooms
            .get_mut(&sref.room)
            .and_then(|r| r.participants.get_mut(&sref.participant))
        else {
            return;
        };
        if p.downstream() != Some(sref.role) {
            return;
        }
        p.bandwidth.estimate_bps = Some(bps);
        let due = match p.bandwidth.allocated_with {
            None => true,
            Some((with, at)) => {
                let moved = (bps as f64 - with as f64).abs() / (with.max(1) as f64);
                moved > REALLOCATE_ON_CHANGE
                    || now.saturating_duration_since(at) >= REALLOCATE_EVERY
            }
        };
        if due {
            self.allocate(sref.room, sref.participant);
        }
    }

    /// Runs `participant`'s stream allocator over its subscriptions and applies the grants.
    /// Without an estimate, every subscription stays unlimited.
    pub(super) fn allocate(&mut self, room: RoomKey, participant: ParticipantId) {
        let now = self.now;
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(p) = r.participants.get(&participant) else {
            return;
        };
        let Some(estimate) = p.bandwidth.estimate_bps else {
            return;
        };
        let mut audio_bps = 0;
        let mut demands = Vec::new();
        let mut ids: Vec<TrackId> = Vec::new();
        for track_id in &p.subscribed {
            let Some(track) = r.tracks.get(track_id) else {
                continue;
            };
            let Some(sub) = track
                .subscriptions
                .iter()
                .find(|s| s.subscriber == participant)
            else {
                continue;
            };
            if !sub.ready || sub.paused {
                continue;
            }
            if !track.is_video() {
                let rate = track.layer_rates(now, [NOMINAL_AUDIO_BPS; 3])[Layer::Low];
                audio_bps += rate.unwrap_or(0);
                continue;
            }
            let nominal = if track.rids.is_empty() {
                // A single-layer track sends at whatever its one encoding is.
                [NOMINAL_LAYER_BPS[1]; 3]
            } else {
                NOMINAL_LAYER_BPS
            };
            demands.push(VideoDemand {
                screen_share: track.screen_share,
                cap: sub.max_layer,
                rates: track.layer_rates(now, nominal),
                current: sub.grant,
            });
            ids.push(*track_id);
        }
        let alloc = allocate(estimate, audio_bps, &demands);
        let mut changes: Vec<(TrackId, bool)> = Vec::new();
        for (track_id, grant) in ids.iter().zip(&alloc.grants) {
            let Some(sub) = r
                .tracks
                .get_mut(track_id)
                .and_then(|t| t.subscription_mut(participant))
            else {
                continue;
            };
            if sub.grant == *grant {
                continue;
            }
            let rank = |g: Grant| match g {
                Grant::Paused => 0,
                Grant::Layer(l) => 1 + l.index(),
                Grant::Unlimited => 4,
            };
            if rank(*grant) < rank(sub.grant) {
                self.stats.bandwidth_downgrades += 1;
            } else {
                self.stats.bandwidth_upgrades += 1;
            }
            let was_paused = sub.grant == Grant::Paused;
            if *grant == Grant::Paused {
                // Resuming must start on a keyframe.
                sub.forwarder.reset();
            }
            if was_paused != (*grant == Grant::Paused) {
                changes.push((*track_id, *grant == Grant::Paused));
            }
            sub.grant = *grant;
        }
        let Some(p) = r.participants.get_mut(&participant) else {
            return;
        };
        p.bandwidth.allocated_with = Some((estimate, now));
        for (track, paused) in changes {
            p.emit(SfuEvent::StreamPaused { track, paused });
        }
        // Sustain what is granted; probe towards what everyone asked for (str0m probes
        // when the desired rate is above its estimate, and again from time to time while
        // the sender is application-limited).
        let target = (alloc.used_bps, alloc.wanted_bps.max(alloc.next_step_bps));
        let (old_min, old_desired) = p.bandwidth.target;
        let moved = |a: u64, b: u64| a.abs_diff(b) as f64 > 0.05 * (b.max(1) as f64);
        if moved(target.0, old_min) || moved(target.1, old_desired) {
            p.bandwidth.target = target;
            let Some(role) = p.downstream() else {
                return;
            };
            let Some(session) = p.session_mut(role) else {
                return;
            };
            let sref = SessionRef {
                room,
                participant,
                role,
            };
            if session.set_bandwidth_target(target.0, target.1).is_err() {
                self.session_panicked(sref);
                return;
            }
            self.mark_dirty(sref);
        }
    }
}
