//! Keyframe requests to one track's publisher, per simulcast layer: aggregated across every
//! subscription (one PLI/FIR per layer per [`PLI_INTERVAL`] however many subscribers ask), and
//! never lost to that throttle. A request made inside the window is sent when the window ends;
//! a keyframe that was asked for and has not arrived is asked for again every window, for at
//! most [`KEYFRAME_RETRY_FOR`] (a lost PLI, or a lost keyframe of a static screen share, would
//! otherwise leave a new subscriber black until the publisher's next periodic keyframe).
//!
//! Sans-IO: time is an argument; the core asks [`KeyframeRequests::next_due`] when to come back.

use std::time::{Duration, Instant};

use crate::layer::{Layer, PerLayer};

/// Minimum spacing of keyframe requests to a publisher, per layer (LiveKit throttles at 500 ms
/// for its lowest layer).
pub(crate) const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// How long a wanted keyframe is asked for again before giving up (LiveKit seeds new streams
/// with a PLI a second for up to 30 s).
pub(crate) const KEYFRAME_RETRY_FOR: Duration = Duration::from_secs(30);

/// The request state of one track. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct KeyframeRequests {
    last_sent: PerLayer<Option<Instant>>,
    /// Since when a keyframe of the layer is wanted and has not arrived.
    wanted_since: PerLayer<Option<Instant>>,
}

impl KeyframeRequests {
    /// A keyframe of `layer` is needed. Returns whether a request goes out now; if not (inside
    /// the throttle window), [`KeyframeRequests::poll_due`] gives it when the window ends.
    pub fn want(&mut self, layer: Layer, now: Instant) -> bool {
        self.wanted_since[layer].get_or_insert(now);
        self.send_if_due(layer, now)
    }

    /// A keyframe of `layer` arrived: nothing more to ask for on that layer.
    pub fn arrived(&mut self, layer: Layer) {
        self.wanted_since[layer] = None;
    }

    /// Whether any layer waits for a keyframe.
    pub fn waiting(&self) -> bool {
        self.wanted_since.0.iter().any(Option::is_some)
    }

    /// When the next deferred or repeated request is due, if any is.
    pub fn next_due(&self) -> Option<Instant> {
        Layer::ALL
            .into_iter()
            .filter_map(|l| {
                self.wanted_since[l]?;
                Some(self.last_sent[l].map_or(self.wanted_since[l]?, |t| t + PLI_INTERVAL))
            })
            .min()
    }

    /// The layers whose request goes out at `now` (counted as sent); gives up on a layer
    /// wanted for longer than [`KEYFRAME_RETRY_FOR`].
    pub fn poll_due(&mut self, now: Instant) -> PerLayer<bool> {
        let mut due = PerLayer([false; 3]);
        for l in Layer::ALL {
            let Some(since) = self.wanted_since[l] else {
                continue;
            };
            if now.saturating_duration_since(since) > KEYFRAME_RETRY_FOR {
                self.wanted_since[l] = None;
                continue;
            }
            due[l] = self.send_if_due(l, now);
        }
        due
    }

    fn send_if_due(&mut self, layer: Layer, now: Instant) -> bool {
        let slot = &mut self.last_sent[layer];
        if slot.is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn many_askers_make_one_request_per_window() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::default();
        let sent = (0..50).filter(|i| k.want(Layer::High, ms(t0, *i))).count();
        assert_eq!(sent, 1, "50 subscribers asking within a window: one PLI");
        assert!(k.want(Layer::Low, ms(t0, 1)), "layers are throttled apart");
    }

    #[test]
    fn a_request_inside_the_window_goes_out_when_it_ends() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::default();
        assert!(k.want(Layer::Low, t0));
        k.arrived(Layer::Low);
        assert_eq!(k.next_due(), None);
        // A new subscriber asks 100 ms later: throttled, but not swallowed.
        assert!(!k.want(Layer::Low, ms(t0, 100)));
        assert_eq!(k.next_due(), Some(ms(t0, 500)));
        assert_eq!(k.poll_due(ms(t0, 499)).0, [false; 3]);
        assert_eq!(k.poll_due(ms(t0, 500)).0, [true, false, false]);
    }

    #[test]
    fn a_missing_keyframe_is_asked_for_again_until_it_arrives_or_the_bound() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::default();
        assert!(k.want(Layer::Medium, t0));
        let mut sent = 1;
        let mut now = t0;
        while let Some(at) = k.next_due() {
            now = at;
            sent += usize::from(k.poll_due(now)[Layer::Medium]);
            if sent == 4 {
                k.arrived(Layer::Medium);
            }
        }
        assert_eq!(sent, 4);
        assert_eq!(now, ms(t0, 1500));
        // Never arriving: asked for every window for KEYFRAME_RETRY_FOR, then given up.
        let mut k = KeyframeRequests::default();
        k.want(Layer::High, t0);
        let mut sent = 1;
        while let Some(at) = k.next_due() {
            sent += usize::from(k.poll_due(at)[Layer::High]);
        }
        let windows = KEYFRAME_RETRY_FOR.as_millis() / PLI_INTERVAL.as_millis();
        assert_eq!(sent as u128, windows + 1);
        assert!(!k.waiting());
    }
}
