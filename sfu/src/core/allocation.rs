//! Bandwidth to layers: each subscriber's estimate (from its downstream session) goes through
//! its stream allocator (`allocator.rs`), whose grants cap the layer each of its video
//! subscriptions is forwarded at, or pause it.
//!
//! A send-side estimate is capped near what is actually sent (GoogCC lets it grow to about
//! 1.5x the acknowledged rate), so it says "congested" when it falls below what we send, but
//! never "there is room for more". Hence the controller here:
//! - **Congestion**: the estimate falls below [`KEEP_MARGIN`] of the current usage, or below
//!   the usage for [`BELOW_FOR`]; layers go down (or video pauses) to what the estimate
//!   carries.
//! - **Hold**: after a step up the estimate needs time to follow the new rate; no judgement
//!   for [`HOLD`]. Steps down need none. Video pauses only below
//!   [`crate::allocator::PAUSE_MARGIN`] of its lowest layer.
//! - **Probe**: with no congestion and a subscription below its cap, the estimator is asked
//!   to probe towards the caps every back-off period ([`TRIAL_BACKOFF_MIN`], doubled after
//!   each probe that found no room, at most [`TRIAL_BACKOFF_MAX`]); a probe that finds room
//!   raises the estimate, and the allocator moves up with headroom. Media is never raised
//!   on a guess.
//! - **Resume**: a subscription that resumes (or is new) starts where it was (or at its cap):
//!   its demand is held from judgement like a change, so what was fine before is tried
//!   first and comes down only if the estimate then shows congestion.

use std::time::Duration;

use crate::allocator::{
    allocate, allocate_with, usage, Grant, VideoDemand, KEEP_MARGIN, NOMINAL_LAYER_BPS,
};
use crate::layer::Layer;
use crate::{ParticipantId, SfuEvent, TrackId};

use super::{MediaCore, RoomKey, SessionRef};

/// Allocations run at most this often per subscriber on estimates that barely move.
const REALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// An estimate that moves by more than this share reallocates at once.
const REALLOCATE_ON_CHANGE: f64 = 0.1;
/// After a change of grants, how long the estimate gets to follow before congestion is judged.
pub(crate) const HOLD: Duration = Duration::from_secs(2);
/// Shortest wait between two trial upgrades.
pub(crate) const TRIAL_BACKOFF_MIN: Duration = Duration::from_secs(3);
/// Longest wait between two trial upgrades (after repeated congestion).
pub(crate) const TRIAL_BACKOFF_MAX: Duration = Duration::from_secs(6);
/// The estimator probes for this multiple of what the subscriptions' caps need (above
/// [`crate::allocator::UPGRADE_HEADROOM`]).
pub(crate) const PROBE_PAST_CAPS: f64 = 1.3;
/// An estimate below the usage for this long is congestion too (however little below).
pub(crate) const BELOW_FOR: Duration = Duration::from_millis(1000);
/// How often every subscriber's allocation is revisited even without a new estimate.
pub(crate) const BANDWIDTH_TICK: Duration = Duration::from_millis(500);

/// Rate assumed for an audio track before it has been measured (bits/s; Opus at 32 kbit/s
/// plus packet overhead).
const NOMINAL_AUDIO_BPS: u64 = 50_000;

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
        let bw = p.bandwidth;
        let used_now = usage(audio_bps, &demands);
        // A subscription resumed or added since the last allocation gets the hold too: the
        // estimate has not seen its media yet.
        let grew = demands.len() > bw.last_demands;
        let held = grew || bw.hold_until.is_some_and(|t| now < t);
        // Congested: the estimate well below what is sent, or below it for a while.
        let below = estimate < used_now;
        let below_since = if below {
            bw.below_since.or(Some(now))
        } else {
            None
        };
        let congested = !held
            && ((estimate as f64) < KEEP_MARGIN * used_now as f64
                || below_since.is_some_and(|t| now.saturating_duration_since(t) >= BELOW_FOR));
        let backoff = if bw.backoff.is_zero() {
            TRIAL_BACKOFF_MIN
        } else {
            bw.backoff
        };
        let (budget, reprobe, backoff) = if congested {
            // Too much: down to what the estimate carries.
            (estimate, false, backoff)
        } else if !held && bw.next_trial.is_none_or(|t| now >= t) {
            // Time to look for more: have the estimator probe again towards the caps (a probe
            // that finds room raises the estimate, and the allocator then moves up). The last
            // probe found nothing if nothing moved up since: wait twice as long next time.
            let backoff = if bw.trial {
                (backoff * 2).min(TRIAL_BACKOFF_MAX)
            } else {
                backoff
            };
            (estimate.max(used_now), true, backoff)
        } else {
            // Nothing to judge: keep what flows (or more, if the estimate allows it).
            (estimate.max(used_now), false, backoff)
        };
        let alloc = if congested {
            allocate_with(budget, audio_bps, &demands, 1.0)
        } else {
            allocate(budget, audio_bps, &demands)
        };
        tracing::trace!(
            participant = participant.0,
            estimate,
            budget,
            congested,
            audio_bps,
            used = alloc.used_bps,
            wanted = alloc.wanted_bps,
            grants = ?alloc.grants,
            "allocation"
        );
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
        p.bandwidth.backoff = backoff;
        p.bandwidth.last_demands = demands.len();
        p.bandwidth.below_since = if congested { None } else { below_since };
        if grew {
            p.bandwidth.hold_until = Some(now + HOLD);
        }
        // Only more media needs the hold (the estimate lags what it has not seen yet); after
        // a step down, the next judgement can come at once.
        if alloc.used_bps > used_now {
            p.bandwidth.hold_until = Some(now + HOLD);
        }
        let below_caps = alloc.wanted_bps > alloc.used_bps;
        if reprobe {
            p.bandwidth.next_trial = Some(now + backoff);
            p.bandwidth.trial = below_caps;
        } else if alloc.used_bps > used_now {
            // Moved up: the probe (or the estimate) found room; the next wait is short.
            p.bandwidth.trial = false;
            p.bandwidth.backoff = TRIAL_BACKOFF_MIN;
        }
        for (track, paused) in changes {
            p.emit(SfuEvent::StreamPaused { track, paused });
        }
        // Below the caps and not congested: sustain what the next step up needs, padding
        // where media sends less (str0m caps padding at its estimate, so this never exceeds
        // it), so the estimate can grow past the 1.5x-of-what-is-sent cap; else sustain what
        // is granted. Probe towards what everyone asked for (str0m probes when the desired
        // rate rises past its estimate, and from time to time while application-limited),
        // aiming past the caps by more than the upgrade headroom, or a probe that succeeds
        // would still not allow the step up.
        let minimum = if below_caps && !congested && alloc.used_bps > audio_bps {
            alloc.next_step_bps
        } else {
            alloc.used_bps
        };
        let desired = (alloc.wanted_bps as f64 * PROBE_PAST_CAPS) as u64;
        let target = (minimum, desired.max(minimum));
        let (old_min, old_desired) = p.bandwidth.target;
        let moved = |a: u64, b: u64| a.abs_diff(b) as f64 > 0.05 * (b.max(1) as f64);
        let probe = reprobe && below_caps && target.1 > estimate;
        if probe || moved(target.0, old_min) || moved(target.1, old_desired) {
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
            // Lowering the desired rate first makes the raise below a new allocation probe
            // (str0m probes when the desired rate goes up past its estimate).
            let lowered = if probe {
                session.set_bandwidth_target(target.0, target.0)
            } else {
                Ok(())
            };
            if lowered
                .and_then(|()| session.set_bandwidth_target(target.0, target.1))
                .is_err()
            {
                self.session_panicked(sref);
                return;
            }
            self.mark_dirty(sref);
        }
    }
}

impl MediaCore {
    /// Revisits every subscriber's allocation (trials and holds end without new estimates).
    pub(super) fn bandwidth_tick(&mut self) {
        let mut due = Vec::new();
        for (key, r) in &self.rooms {
            for (pid, p) in &r.participants {
                if p.bandwidth.estimate_bps.is_some() {
                    due.push((*key, *pid));
                }
            }
        }
        for (room, participant) in due {
            self.allocate(room, participant);
        }
    }
}
