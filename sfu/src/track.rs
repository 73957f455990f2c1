//! A published track as the room receives it (LiveKit's "receiver"): which participant and
//! section it comes from, its codec, which simulcast layers are flowing, its keyframe requests
//! (`keyframe.rs`), and its subscriptions. Time is an argument.

use std::time::{Duration, Instant};

use crate::dynacast::Dynacast;
use crate::keyframe::KeyframeRequests;
use crate::layer::{Layer, PerLayer};
use crate::quality::{LossWindow, QualityScorer};
use crate::session::{Codec, Section};
use crate::speakers::LevelMeter;
use crate::subscription::Subscription;
use crate::{ParticipantId, TrackKind};

/// A simulcast layer with no packet for this long is considered stopped.
pub(crate) const LAYER_STALE: Duration = Duration::from_millis(1500);
/// Window over which a layer's incoming rate is measured.
pub(crate) const RATE_WINDOW: Duration = Duration::from_millis(1000);
/// A layer's rate is first estimated after this much of its first window.
pub(crate) const FIRST_ESTIMATE_AFTER: Duration = Duration::from_millis(250);
/// Bytes counted per packet beyond its payload: RTP header with extensions and the SRTP tag
/// (what the bandwidth estimator counts too; UDP/IP headers are not counted).
const PACKET_OVERHEAD_BYTES: u64 = 30;

/// The incoming rate of one layer: bytes counted over [`RATE_WINDOW`]s, smoothed (EMA, each
/// window half the weight); before the first window completes, what the first
/// [`FIRST_ESTIMATE_AFTER`] or more of it gave.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    /// Smoothed rate in bits/s.
    bps: Option<u64>,
    /// `bps` is the provisional figure from the first, incomplete window.
    first: bool,
}

impl RateMeter {
    /// Counts one packet of `payload_len` bytes arriving at `now`.
    pub fn add(&mut self, payload_len: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            let ms = elapsed.as_millis().max(1) as u64;
            let rate = self.bytes * 8 * 1000 / ms;
            self.bps = Some(match (self.bps, self.first) {
                (Some(old), false) => (old + rate) / 2,
                _ => rate,
            });
            self.first = false;
            self.window_start = Some(now);
            self.bytes = 0;
        } else if (self.bps.is_none() || self.first) && elapsed >= FIRST_ESTIMATE_AFTER {
            let ms = elapsed.as_millis().max(1) as u64;
            self.bps = Some(self.bytes * 8 * 1000 / ms);
            self.first = true;
        }
        self.bytes += payload_len as u64 + PACKET_OVERHEAD_BYTES;
    }

    /// The smoothed rate (bits/s), once [`FIRST_ESTIMATE_AFTER`] has passed.
    pub fn bps(&self) -> Option<u64> {
        self.bps
    }
}

/// One published track. See the module docs.
#[derive(Debug)]
pub(crate) struct Track {
    pub publisher: ParticipantId,
    /// The publisher's section carrying it.
    pub section: Section,
    pub kind: TrackKind,
    /// Simulcast rids, lowest quality first; empty for a single-layer track.
    pub rids: Vec<String>,
    /// The codec of the last packet (`None` before the first).
    pub codec: Option<Codec>,
    layer_seen: PerLayer<Option<Instant>>,
    rates: PerLayer<RateMeter>,
    /// A screen share (LiveKit `TrackSource.SCREEN_SHARE`): allocated before cameras.
    pub screen_share: bool,
    /// Keyframe requests to the publisher, per layer.
    pub keyframes: KeyframeRequests,
    /// Every subscription to this track, in subscription order.
    pub subscriptions: Vec<Subscription>,
    /// Which layers the publisher was told to encode (video only).
    pub dynacast: Dynacast,
    /// Audio tracks: the level of the publisher's speech (from the packets' audio levels).
    pub meter: Option<LevelMeter>,
    /// Packets received against those sent in the current quality window, per layer.
    pub loss: PerLayer<LossWindow>,
    /// The upstream connection quality of this track.
    pub scorer: QualityScorer,
}

impl Track {
    /// A track bound to a publisher's section, not yet live.
    pub fn new(
        publisher: ParticipantId,
        section: Section,
        kind: TrackKind,
        rids: Vec<String>,
    ) -> Self {
        Self {
            publisher,
            section,
            kind,
            rids,
            codec: None,
            layer_seen: PerLayer::default(),
            rates: PerLayer::default(),
            screen_share: false,
            keyframes: KeyframeRequests::default(),
            subscriptions: Vec::new(),
            dynacast: Dynacast::default(),
            meter: None,
            loss: PerLayer::default(),
            scorer: QualityScorer::new(kind == TrackKind::Video),
        }
    }

    /// The highest layer the track has: `Low` without simulcast.
    pub fn top_layer(&self) -> Layer {
        Layer::from_index(self.rids.len().saturating_sub(1))
    }

    /// Whether it is a video track.
    pub fn is_video(&self) -> bool {
        self.kind == TrackKind::Video
    }

    /// RTP clock rate of the track's media (Hz): 90 000 for video, 48 000 for Opus.
    pub fn clock_rate(&self) -> u32 {
        if self.is_video() {
            90_000
        } else {
            48_000
        }
    }

    /// Notes a packet of `layer` with `payload_len` bytes of payload arriving at `now`.
    pub fn saw(&mut self, layer: Layer, payload_len: usize, now: Instant) {
        self.layer_seen[layer] = Some(now);
        self.rates[layer].add(payload_len, now);
    }

    /// Whether `layer` flows (a packet within [`LAYER_STALE`]).
    pub fn is_live(&self, layer: Layer, now: Instant) -> bool {
        self.layer_seen[layer].is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
    }

    /// The rate of each flowing layer in bits/s (measured, or `nominal` for a layer that
    /// has not flowed a whole window yet); `None` for a layer that does not flow.
    pub fn layer_rates(&self, now: Instant, nominal: [u64; 3]) -> PerLayer<Option<u64>> {
        PerLayer(Layer::ALL.map(|l| {
            self.is_live(l, now)
                .then(|| self.rates[l].bps().unwrap_or(nominal[l.index()]))
        }))
    }

    /// The layer to forward for each cap: the highest flowing layer at or below the cap, else
    /// the lowest flowing one above it (`Low` when none flows).
    pub fn targets(&self, now: Instant) -> PerLayer<Layer> {
        let live = |l: Layer| self.is_live(l, now);
        PerLayer(Layer::ALL.map(|cap| {
            cap.and_below()
                .find(|l| live(*l))
                .or_else(|| cap.above().find(|l| live(*l)))
                .unwrap_or(Layer::Low)
        }))
    }

    /// The rid of a layer, if the track is simulcast.
    pub fn rid(&self, layer: Layer) -> Option<&str> {
        self.rids.get(layer.index()).map(String::as_str)
    }

    /// The subscription of `participant`, if any.
    pub fn subscription_mut(&mut self, participant: ParticipantId) -> Option<&mut Subscription> {
        self.subscriptions
            .iter_mut()
            .find(|s| s.subscriber == participant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track() -> Track {
        Track::new(
            ParticipantId(1),
            Section::parse("0"),
            TrackKind::Video,
            vec!["q".into(), "h".into(), "f".into()],
        )
    }

    #[test]
    fn targets_fall_back_to_the_nearest_flowing_layer_and_forget_stale_ones() {
        let t0 = Instant::now();
        let mut t = track();
        t.saw(Layer::Low, 100, t0);
        t.saw(Layer::High, 100, t0);
        let at = t.targets(t0 + Duration::from_millis(10));
        assert_eq!(at.0, [Layer::Low, Layer::Low, Layer::High]);
        // Only the low layer keeps flowing: after LAYER_STALE every cap gets it.
        let later = t0 + LAYER_STALE + Duration::from_millis(1);
        t.saw(Layer::Low, 100, later);
        assert_eq!(t.targets(later).0, [Layer::Low; 3]);
    }

    #[test]
    fn layer_rates_are_measured_per_window_and_absent_when_a_layer_stops() {
        let t0 = Instant::now();
        let mut t = track();
        // 50 packets/s of 970 + 30 bytes = 400 kbit/s on the low layer, for 3 s.
        for i in 0..150u64 {
            t.saw(Layer::Low, 970, t0 + Duration::from_millis(i * 20));
        }
        let now = t0 + Duration::from_millis(2990);
        let r = t.layer_rates(now, [1, 2, 3]);
        let low = r[Layer::Low].unwrap();
        assert!((390_000..=410_000).contains(&low), "{low}");
        assert_eq!((r[Layer::Medium], r[Layer::High]), (None, None));
        t.saw(Layer::High, 1000, now);
        assert_eq!(
            t.layer_rates(now, [1, 2, 3])[Layer::High],
            Some(3),
            "nominal until measured"
        );
        let r = t.layer_rates(now + LAYER_STALE, [1, 2, 3]);
        assert_eq!(r.0, [None; 3]);
    }
}
