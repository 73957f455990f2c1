//! The stream allocator of one subscriber (LiveKit's "stream allocator"): shares the bandwidth
//! estimated towards it among the video it subscribes to. Audio is never allocated (it is
//! always forwarded; its rate is taken off the top). Video goes by priority (screen share,
//! then the largest requested layer), each subscription getting the best simulcast layer
//! that fits at or below what it asked for; when even the lowest layer does not fit, the
//! lowest-priority video is paused first. Layers move up only with headroom, so a subscriber
//! does not flip between layers on every estimate.
//!
//! Pure logic over rates in bits/s: no clock, no I/O. The core runs it when an estimate
//! arrives and applies the grants to the subscriptions' forwarders (switches happen on
//! keyframes of the new layer).

use std::time::{Duration, Instant};

use crate::layer::{Layer, PerLayer};

/// An upgrade is granted only when the estimate covers the higher layer by this factor
/// (a 10 % margin), so estimator noise does not flip layers.
pub const UPGRADE_HEADROOM: f64 = 1.1;

/// A subscription keeps its current layer (or stays unpaused) while the estimate covers this
/// share of what it needs: GoogCC answers overuse with 85 % of the acknowledged rate, and a
/// sender that is not probing sees its estimate settle near what it sends, so a dip just
/// below the current rate is not yet congestion.
pub const KEEP_MARGIN: f64 = 0.75;

/// Video that flows is paused only when the estimate falls below this share of its lowest
/// layer: pausing is the last resort (a loss-based estimate under random loss can sit well
/// below what the link carries), and a paused track resumes only when the layer fits in full.
pub const PAUSE_MARGIN: f64 = 0.5;

/// Rates assumed for a layer that flows but has no measurement yet (bits/s), lowest first:
/// what browsers send for 180p/360p/720p simulcast (LiveKit's client defaults).
pub const NOMINAL_LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_700_000];

/// What one video subscription asks of the allocator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoDemand {
    /// Screen shares go before cameras.
    pub screen_share: bool,
    /// The highest layer the subscriber asked for (`UpdateTrackSettings`).
    pub cap: Layer,
    /// Rate of each layer that flows now, bits/s; `None`: the layer does not flow.
    pub rates: PerLayer<Option<u64>>,
    /// What it was granted last time (for headroom on upgrades).
    pub current: Grant,
}

/// What the allocator grants one video subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grant {
    /// No estimate yet (or none ever, for a client that sends no congestion feedback): the
    /// subscription gets what it asked for.
    #[default]
    Unlimited,
    /// Forward at most this layer.
    Layer(Layer),
    /// Not enough bandwidth even for the lowest layer: video paused (audio goes on).
    Paused,
}

impl Grant {
    /// The layer this grant allows under a subscriber's own cap, or `None` when paused.
    pub fn limit(self, cap: Layer) -> Option<Layer> {
        match self {
            Grant::Unlimited => Some(cap),
            Grant::Layer(l) => Some(l.min(cap)),
            Grant::Paused => None,
        }
    }
}

/// The outcome of one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// One grant per demand, in the order given.
    pub grants: Vec<Grant>,
    /// Bits/s the grants will use (audio included).
    pub used_bps: u64,
    /// Bits/s every subscription at its cap would use: what the estimator should probe for.
    pub wanted_bps: u64,
    /// Bits/s the next upgrade would need (headroom included): what to sustain, with
    /// padding where media sends less, so the estimate can grow to allow it. Equals
    /// `used_bps` when every subscription is at its cap.
    pub next_step_bps: u64,
}

impl VideoDemand {
    /// The flowing layers at or below the cap, lowest first; the lowest flowing layer if none
    /// flows at or below it (what the forwarder would fall back to).
    fn candidates(&self) -> impl Iterator<Item = (Layer, u64)> + '_ {
        let within = Layer::ALL
            .into_iter()
            .filter(|l| *l <= self.cap)
            .filter_map(|l| self.rates[l].map(|r| (l, r)));
        let fallback = Layer::ALL
            .into_iter()
            .filter_map(|l| self.rates[l].map(|r| (l, r)))
            .next();
        let has_within = Layer::ALL
            .into_iter()
            .any(|l| l <= self.cap && self.rates[l].is_some());
        within.chain(fallback.filter(|_| !has_within))
    }
}

/// Bits/s the demands use at their current grants (audio included): each gets the flowing
/// layer the forwarder would pick under its grant; a fresh (`Unlimited`) one counts at its
/// cap, a paused one as nothing.
pub fn usage(audio_bps: u64, demands: &[VideoDemand]) -> u64 {
    audio_bps
        + demands
            .iter()
            .map(|d| {
                let limit = match d.current {
                    Grant::Unlimited => d.cap,
                    Grant::Layer(l) => l.min(d.cap),
                    Grant::Paused => return 0,
                };
                let mut at = VideoDemand { cap: limit, ..*d };
                at.current = Grant::Unlimited;
                at.candidates().last().map_or(0, |(_, r)| r)
            })
            .sum::<u64>()
}

/// Shares `estimate_bps` among `demands` after `audio_bps`, with the [`KEEP_MARGIN`] for what
/// flows already. See the module docs.
pub fn allocate(estimate_bps: u64, audio_bps: u64, demands: &[VideoDemand]) -> Allocation {
    allocate_with(estimate_bps, audio_bps, demands, KEEP_MARGIN)
}

/// [`allocate`] with another keep margin: `1.0` when congestion is known, so every grant
/// fits the estimate in full.
pub fn allocate_with(
    estimate_bps: u64,
    audio_bps: u64,
    demands: &[VideoDemand],
    keep_margin: f64,
) -> Allocation {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    // Screen share first, then the largest requested layer; stable, so ties keep their order.
    order.sort_by_key(|&i| (!demands[i].screen_share, std::cmp::Reverse(demands[i].cap)));
    let mut grants = vec![Grant::Paused; demands.len()];
    let mut chosen: Vec<Option<(Layer, u64)>> = vec![None; demands.len()];
    let mut budget = estimate_bps.saturating_sub(audio_bps);
    let mut wanted = audio_bps;
    // Pass 1: the lowest layer for each, by priority, while it fits.
    for &i in &order {
        let d = &demands[i];
        wanted += d.candidates().last().map_or(0, |(_, r)| r);
        if let Some((l, r)) = d.candidates().next() {
            // A subscription that is flowing keeps flowing within the pause margin.
            let need = if d.current == Grant::Paused {
                r
            } else {
                (r as f64 * PAUSE_MARGIN.min(keep_margin)) as u64
            };
            if need <= budget {
                budget = budget.saturating_sub(r);
                chosen[i] = Some((l, r));
            }
        }
    }
    // Pass 2: move each up as far as the rest allows, by priority.
    for &i in &order {
        let d = &demands[i];
        let Some((_, have)) = chosen[i] else { continue };
        let current = match d.current {
            Grant::Layer(l) => Some(l),
            Grant::Unlimited => Some(d.cap),
            Grant::Paused => None,
        };
        let mut best = chosen[i];
        for (l, r) in d.candidates() {
            // Staying at (or going below) the current layer is allowed within the keep
            // margin; going above it needs headroom.
            let need = if current.is_some_and(|c| l <= c) {
                ((r as f64 * keep_margin) as u64).saturating_sub(have)
            } else {
                ((r as f64 * UPGRADE_HEADROOM) as u64).saturating_sub(have)
            };
            if need <= budget && best.is_none_or(|(bl, _)| l > bl) {
                best = Some((l, r));
            }
        }
        if let Some((l, r)) = best {
            budget = budget.saturating_sub(r.saturating_sub(have));
            chosen[i] = Some((l, r));
        }
    }
    // The cheapest next step up: a paused subscription's lowest layer, or one layer more.
    let mut step: Option<u64> = None;
    for (i, d) in demands.iter().enumerate() {
        let have = chosen[i].map_or(0, |(_, r)| r);
        let next = d
            .candidates()
            .find(|(l, _)| chosen[i].is_none_or(|(cl, _)| *l > cl));
        if let Some((_, r)) = next {
            let extra = ((r as f64 * UPGRADE_HEADROOM) as u64).saturating_sub(have);
            step = Some(step.map_or(extra, |s| s.min(extra)));
        }
    }
    let mut used = audio_bps;
    for (i, c) in chosen.iter().enumerate() {
        match c {
            Some((l, r)) => {
                grants[i] = Grant::Layer(*l);
                used += r;
            }
            // Nothing flows: nothing to share, and no reason to call it paused.
            None if demands[i].candidates().next().is_none() => grants[i] = Grant::Unlimited,
            None => {}
        }
    }
    Allocation {
        grants,
        used_bps: used,
        wanted_bps: wanted,
        next_step_bps: used + step.unwrap_or(0),
    }
}

/// A subscriber's bandwidth state, kept with its participant; the controller in
/// `core/allocation.rs` drives it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bandwidth {
    /// Latest estimate towards it, bits/s (`None`: no estimate, nothing is limited).
    pub estimate_bps: Option<u64>,
    /// Estimate the last allocation ran with, and when.
    pub(crate) allocated_with: Option<(u64, Instant)>,
    /// (minimum, desired) last given to the estimator.
    pub(crate) target: (u64, u64),
    /// No congestion judgement before this (the estimate follows a change of grants).
    pub(crate) hold_until: Option<Instant>,
    /// Earliest next trial upgrade, and the current back-off.
    pub(crate) next_trial: Option<Instant>,
    pub(crate) backoff: Duration,
    /// The last change was a trial upgrade, not yet judged.
    pub(crate) trial: bool,
    /// Active video subscriptions at the last allocation.
    pub(crate) last_demands: usize,
    /// Since when the estimate has been below the usage.
    pub(crate) below_since: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(cap: Layer) -> VideoDemand {
        VideoDemand {
            screen_share: false,
            cap,
            rates: PerLayer([Some(150_000), Some(500_000), Some(1_500_000)]),
            current: Grant::Unlimited,
        }
    }

    #[test]
    fn a_wide_link_gets_every_cap() {
        let a = allocate(
            10_000_000,
            64_000,
            &[camera(Layer::High), camera(Layer::Medium)],
        );
        assert_eq!(
            a.grants,
            [Grant::Layer(Layer::High), Grant::Layer(Layer::Medium)]
        );
        assert_eq!(a.used_bps, 64_000 + 1_500_000 + 500_000);
        assert_eq!(a.wanted_bps, a.used_bps);
        assert_eq!(a.next_step_bps, a.used_bps, "nothing to step up to");
    }

    #[test]
    fn a_narrow_link_gets_the_low_layer_and_audio_comes_first() {
        // 300 kbit/s: audio (40k) and the 150k low layer fit, the 500k medium does not.
        let a = allocate(300_000, 40_000, &[camera(Layer::High)]);
        assert_eq!(a.grants, [Grant::Layer(Layer::Low)]);
        assert_eq!(a.wanted_bps, 40_000 + 1_500_000, "probe towards the cap");
        assert_eq!(
            a.next_step_bps,
            a.used_bps + 550_000 - 150_000,
            "sustain the next step"
        );
        // Below audio + half the low layer: video pauses.
        let a = allocate(100_000, 40_000, &[camera(Layer::High)]);
        assert_eq!(a.grants, [Grant::Paused]);
        assert_eq!(a.used_bps, 40_000);
    }

    #[test]
    fn priority_goes_to_screen_share_then_to_the_largest_tile() {
        let mut screen = camera(Layer::High);
        screen.screen_share = true;
        let small = camera(Layer::Low);
        let big = camera(Layer::High);
        // 1.9 Mbit/s: the screen share takes its high layer (1.5M); then the big tile fits its
        // low layer (150k), the small one its low layer (150k).
        let a = allocate(1_900_000, 0, &[small, big, screen]);
        assert_eq!(
            a.grants,
            [
                Grant::Layer(Layer::Low),
                Grant::Layer(Layer::Low),
                Grant::Layer(Layer::High)
            ]
        );
        // 350k: room for two low layers and not half a third; the small tile (lowest
        // priority) pauses.
        let a = allocate(350_000, 0, &[small, big, screen]);
        assert_eq!(
            a.grants,
            [
                Grant::Paused,
                Grant::Layer(Layer::Low),
                Grant::Layer(Layer::Low)
            ]
        );
    }

    #[test]
    fn upgrades_need_headroom_and_downgrades_do_not_flap() {
        let mut d = camera(Layer::High);
        d.current = Grant::Layer(Layer::Medium);
        // Exactly enough for high: not enough margin to move up.
        let a = allocate(1_500_000, 0, &[d]);
        assert_eq!(a.grants, [Grant::Layer(Layer::Medium)]);
        let a = allocate(1_800_000, 0, &[d]);
        assert_eq!(a.grants, [Grant::Layer(Layer::High)]);
        // On high, an estimate a little below its rate keeps it (the keep margin); a real
        // drop does not.
        d.current = Grant::Layer(Layer::High);
        assert_eq!(
            allocate(1_300_000, 0, &[d]).grants,
            [Grant::Layer(Layer::High)]
        );
        assert_eq!(
            allocate(1_000_000, 0, &[d]).grants,
            [Grant::Layer(Layer::Medium)]
        );
        // Paused stays paused until the lowest layer fits in full.
        d.current = Grant::Paused;
        assert_eq!(allocate(140_000, 0, &[d]).grants, [Grant::Paused]);
        d.current = Grant::Layer(Layer::Low);
        assert_eq!(
            allocate(140_000, 0, &[d]).grants,
            [Grant::Layer(Layer::Low)]
        );
    }

    #[test]
    fn under_known_congestion_grants_fit_in_full() {
        let mut d = camera(Layer::High);
        d.current = Grant::Layer(Layer::Medium);
        // 450k: the keep margin would hold medium (500k); known congestion does not.
        assert_eq!(
            allocate(450_000, 0, &[d]).grants,
            [Grant::Layer(Layer::Medium)]
        );
        assert_eq!(
            allocate_with(450_000, 0, &[d], 1.0).grants,
            [Grant::Layer(Layer::Low)]
        );
    }

    #[test]
    fn only_flowing_layers_are_granted() {
        let mut d = camera(Layer::High);
        d.rates = PerLayer([Some(150_000), None, None]);
        assert_eq!(
            allocate(10_000_000, 0, &[d]).grants,
            [Grant::Layer(Layer::Low)]
        );
        // A cap below every flowing layer falls back to the lowest flowing one.
        let mut d = camera(Layer::Low);
        d.rates = PerLayer([None, Some(500_000), Some(1_500_000)]);
        assert_eq!(
            allocate(10_000_000, 0, &[d]).grants,
            [Grant::Layer(Layer::Medium)]
        );
        // Nothing flows: nothing is used, and it is not paused for lack of media.
        d.rates = PerLayer([None; 3]);
        let a = allocate(10_000_000, 0, &[d]);
        assert_eq!((a.grants[0], a.used_bps), (Grant::Unlimited, 0));
    }

    #[test]
    fn usage_counts_what_the_current_grants_forward() {
        let mut a = camera(Layer::High);
        a.current = Grant::Layer(Layer::Medium);
        let mut b = camera(Layer::Low);
        b.current = Grant::Unlimited;
        let mut c = camera(Layer::High);
        c.current = Grant::Paused;
        assert_eq!(usage(40_000, &[a, b, c]), 40_000 + 500_000 + 150_000);
    }

    #[test]
    fn grant_limits_combine_with_the_subscriber_cap() {
        assert_eq!(Grant::Unlimited.limit(Layer::Medium), Some(Layer::Medium));
        assert_eq!(
            Grant::Layer(Layer::High).limit(Layer::Low),
            Some(Layer::Low)
        );
        assert_eq!(
            Grant::Layer(Layer::Low).limit(Layer::High),
            Some(Layer::Low)
        );
        assert_eq!(Grant::Paused.limit(Layer::High), None);
    }
}
