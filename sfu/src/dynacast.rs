//! Dynacast: which simulcast layers a publisher should encode, from what the subscribers of its
//! video track would receive (LiveKit `DynacastManager`, `SubscribedQualityUpdate`). A
//! publisher told that nobody needs a layer stops encoding it (livekit-client sets
//! `RTCRtpEncodingParameters.active` per rid); told that no layer is needed, it stops sending
//! the video.
//!
//! Per track, a sans-IO state machine (time is an argument): [`Dynacast::update`] with the
//! highest layer any subscriber needs (see [`needed`]) says what to tell the publisher, if
//! anything; [`Dynacast::deadline`] says when to call it again for a pending change. As LiveKit
//! does, the state told is a *maximum*: every layer at or below the highest needed one stays on
//! (a subscriber capped at `Medium` keeps `Low` and `Medium`), since a lower layer is what a
//! subscriber falls back to while a higher one restarts ([`crate::track::Track::targets`]).
//!
//! Rules (LiveKit's): an upgrade is told at once; a downgrade only after it has been wanted for
//! [`PAUSE_DELAY`] (LiveKit `DynacastPauseDelay`), so a subscriber resizing or flicking a tab
//! does not make the publisher restart an encoder; and nothing is told before
//! [`INITIAL_PUSH`] after the track went live, then the computed state is pushed even if it
//! equals what the publisher does already, so a track nobody watches gets every layer off.
//!
//! Knows nothing of sessions, rooms or the wire: the core feeds it and emits
//! [`crate::SfuEvent::SubscribedLayers`].

use std::time::{Duration, Instant};

use crate::layer::{Layer, PerLayer};
use crate::subscription::Subscription;

/// How long a downgrade must be wanted before the publisher is told (LiveKit
/// `DynacastPauseDelay`, 5 s).
pub(crate) const PAUSE_DELAY: Duration = Duration::from_secs(5);
/// How long after a track went live the first state is pushed, whatever it is (LiveKit's
/// initial dynacast push, 10 s).
pub(crate) const INITIAL_PUSH: Duration = Duration::from_secs(10);

/// One track's dynacast state. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Dynacast {
    /// When the first packet arrived; `None` before (nothing is told).
    live_since: Option<Instant>,
    /// The highest layer the publisher was last told to encode (`Some(None)`: none); `None`
    /// while nothing has been told (the publisher encodes every layer).
    told: Option<Option<Layer>>,
    /// The highest layer needed, as of the last [`Dynacast::update`].
    wanted: Option<Layer>,
    /// Since when a downgrade below `told` has been wanted without a break.
    downgrade_since: Option<Instant>,
    /// The deadline the core has a timer entry for (so it queues each deadline once).
    pub scheduled: Option<Instant>,
}

impl Dynacast {
    /// The track's first packet arrived at `now`; the [`INITIAL_PUSH`] clock starts.
    pub fn went_live(&mut self, now: Instant) {
        if self.live_since.is_none() {
            self.live_since = Some(now);
        }
    }

    /// Records that subscribers now need layers up to `wanted` (`None`: none) and returns the
    /// layers to tell the publisher about, if it should be told now.
    pub fn update(&mut self, wanted: Option<Layer>, now: Instant) -> Option<PerLayer<bool>> {
        self.wanted = wanted;
        let live = self.live_since?;
        let Some(told) = self.told else {
            if now.saturating_duration_since(live) < INITIAL_PUSH {
                return None;
            }
            return Some(self.tell(wanted));
        };
        if wanted == told {
            self.downgrade_since = None;
            return None;
        }
        // `None < Some(_)` and `Some(Low) < Some(High)`: the order of "how much is on".
        if wanted > told {
            return Some(self.tell(wanted));
        }
        let since = *self.downgrade_since.get_or_insert(now);
        if now.saturating_duration_since(since) < PAUSE_DELAY {
            return None;
        }
        Some(self.tell(wanted))
    }

    /// Re-evaluates the last wanted state at `now` (for [`Dynacast::deadline`]).
    pub fn poll(&mut self, now: Instant) -> Option<PerLayer<bool>> {
        self.update(self.wanted, now)
    }

    /// When [`Dynacast::poll`] next has something to do, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let live = self.live_since?;
        match self.told {
            None => Some(live + INITIAL_PUSH),
            Some(_) => self.downgrade_since.map(|t| t + PAUSE_DELAY),
        }
    }

    fn tell(&mut self, wanted: Option<Layer>) -> PerLayer<bool> {
        self.told = Some(wanted);
        self.downgrade_since = None;
        enabled_up_to(wanted)
    }
}

/// The highest layer any of `subscriptions` needs: each one that is not paused needs its cap
/// (`max_layer`), but no more than `top`, the track's highest layer (`Low` for a track without
/// simulcast). Subscriptions still being negotiated count: they will want their layer within a
/// round trip, and turning it on early saves them a wait for the encoder. `None` when none
/// needs anything.
pub(crate) fn needed<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    top: Layer,
) -> Option<Layer> {
    subscriptions
        .into_iter()
        .filter(|s| !s.paused)
        .map(|s| s.max_layer.min(top))
        .max()
}

/// Every layer up to `max` on, the others off.
pub(crate) fn enabled_up_to(max: Option<Layer>) -> PerLayer<bool> {
    PerLayer(Layer::ALL.map(|l| max.is_some_and(|m| l <= m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ON: PerLayer<bool> = PerLayer([true; 3]);
    const ALL_OFF: PerLayer<bool> = PerLayer([false; 3]);

    /// A virtual clock in milliseconds from an arbitrary origin.
    struct Clock(Instant);
    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn live_at_zero() -> (Dynacast, Clock) {
        let c = Clock(Instant::now());
        let mut d = Dynacast::default();
        d.went_live(c.at(0));
        (d, c)
    }

    #[test]
    fn nothing_is_told_before_the_track_is_live() {
        let c = Clock(Instant::now());
        let mut d = Dynacast::default();
        assert_eq!(d.update(None, c.at(60_000)), None);
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn an_unwatched_track_gets_every_layer_off_ten_seconds_after_going_live() {
        let (mut d, c) = live_at_zero();
        assert_eq!(d.update(None, c.at(0)), None);
        assert_eq!(d.poll(c.at(9_999)), None);
        assert_eq!(d.deadline(), Some(c.at(10_000)));
        assert_eq!(d.poll(c.at(10_000)), Some(ALL_OFF));
        assert_eq!(d.deadline(), None);
        assert_eq!(d.poll(c.at(20_000)), None);
    }

    #[test]
    fn the_initial_push_tells_the_computed_state_even_when_everything_is_needed() {
        let (mut d, c) = live_at_zero();
        assert_eq!(d.update(Some(Layer::High), c.at(3_000)), None);
        assert_eq!(d.poll(c.at(10_000)), Some(ALL_ON));
    }

    #[test]
    fn a_subscriber_coming_back_turns_layers_on_at_once() {
        let (mut d, c) = live_at_zero();
        assert_eq!(d.poll(c.at(10_000)), Some(ALL_OFF));
        assert_eq!(
            d.update(Some(Layer::Low), c.at(12_000)),
            Some(PerLayer([true, false, false]))
        );
        assert_eq!(d.update(Some(Layer::High), c.at(12_001)), Some(ALL_ON));
        assert_eq!(d.deadline(), None);
    }

    fn sub(max_layer: Layer, paused: bool) -> Subscription {
        Subscription {
            subscriber: crate::ParticipantId(7),
            role: crate::PeerRole::Subscriber,
            stream_id: String::new(),
            track_label: String::new(),
            section: None,
            ready: true,
            paused,
            max_layer,
            grant: Default::default(),
            forwarder: crate::forwarder::Forwarder::new(true, 90_000, 1),
            pt: Default::default(),
        }
    }

    #[test]
    fn the_highest_cap_of_unpaused_subscribers_is_needed_within_the_track_layers() {
        let subs = [sub(Layer::Low, false), sub(Layer::High, true)];
        assert_eq!(needed(&subs, Layer::High), Some(Layer::Low));
        let subs = [sub(Layer::Medium, false), sub(Layer::Low, false)];
        assert_eq!(needed(&subs, Layer::High), Some(Layer::Medium));
        // A two-layer track (q, h) and a track without simulcast.
        assert_eq!(
            needed(&[sub(Layer::High, false)], Layer::Medium),
            Some(Layer::Medium)
        );
        assert_eq!(
            needed(&[sub(Layer::High, false)], Layer::Low),
            Some(Layer::Low)
        );
        assert_eq!(needed(&[sub(Layer::High, true)], Layer::High), None);
        assert_eq!(needed(&[], Layer::High), None);
    }

    #[test]
    fn a_cap_at_medium_keeps_low_and_medium() {
        assert_eq!(
            enabled_up_to(Some(Layer::Medium)),
            PerLayer([true, true, false])
        );
        assert_eq!(enabled_up_to(None), ALL_OFF);
    }

    #[test]
    fn downgrades_wait_five_seconds_and_a_return_in_between_cancels_them() {
        let (mut d, c) = live_at_zero();
        d.update(Some(Layer::High), c.at(0));
        assert_eq!(d.poll(c.at(10_000)), Some(ALL_ON));
        // The only subscriber caps at Low at 11 s: told at 16 s.
        assert_eq!(d.update(Some(Layer::Low), c.at(11_000)), None);
        assert_eq!(d.deadline(), Some(c.at(16_000)));
        assert_eq!(d.poll(c.at(15_999)), None);
        assert_eq!(d.poll(c.at(16_000)), Some(PerLayer([true, false, false])));
        // It wants High again and, 2 s later, Low: the downgrade restarts its delay, and going
        // back to High before it ends cancels it.
        assert_eq!(d.update(Some(Layer::High), c.at(17_000)), Some(ALL_ON));
        assert_eq!(d.update(Some(Layer::Low), c.at(19_000)), None);
        assert_eq!(d.update(Some(Layer::High), c.at(21_000)), None);
        assert_eq!(d.deadline(), None);
        assert_eq!(d.poll(c.at(30_000)), None);
    }

    #[test]
    fn a_deeper_downgrade_while_one_is_pending_keeps_the_first_start() {
        let (mut d, c) = live_at_zero();
        d.update(Some(Layer::High), c.at(0));
        d.poll(c.at(10_000));
        assert_eq!(d.update(Some(Layer::Medium), c.at(11_000)), None);
        assert_eq!(d.update(None, c.at(13_000)), None);
        assert_eq!(d.deadline(), Some(c.at(16_000)));
        assert_eq!(d.poll(c.at(16_000)), Some(ALL_OFF));
    }

    #[test]
    fn an_upgrade_over_a_pending_downgrade_goes_out_at_once() {
        let (mut d, c) = live_at_zero();
        d.update(Some(Layer::Medium), c.at(0));
        assert_eq!(d.poll(c.at(10_000)), Some(PerLayer([true, true, false])));
        assert_eq!(d.update(Some(Layer::Low), c.at(11_000)), None);
        assert_eq!(d.update(Some(Layer::High), c.at(12_000)), Some(ALL_ON));
        assert_eq!(d.deadline(), None);
    }
}
