//! A published track as the room receives it (LiveKit's "receiver"): which participant and
//! section it comes from, its codec, which simulcast layers are flowing, the keyframe-request
//! throttle per layer, and its subscriptions. Time is an argument.

use std::time::{Duration, Instant};

use crate::layer::{Layer, PerLayer};
use crate::quality::{LossWindow, QualityScorer};
use crate::session::{Codec, Section};
use crate::speakers::LevelMeter;
use crate::subscription::Subscription;
use crate::{ParticipantId, TrackKind};

/// A simulcast layer with no packet for this long is considered stopped.
pub(crate) const LAYER_STALE: Duration = Duration::from_millis(1500);
/// Minimum spacing of keyframe requests to a publisher, per layer.
pub(crate) const PLI_INTERVAL: Duration = Duration::from_millis(500);

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
    last_pli: PerLayer<Option<Instant>>,
    /// Every subscription to this track, in subscription order.
    pub subscriptions: Vec<Subscription>,
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
            last_pli: PerLayer::default(),
            subscriptions: Vec::new(),
            meter: None,
            loss: PerLayer::default(),
            scorer: QualityScorer::new(kind == TrackKind::Video),
        }
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

    /// Notes a packet of `layer` arriving at `now`.
    pub fn saw(&mut self, layer: Layer, now: Instant) {
        self.layer_seen[layer] = Some(now);
    }

    /// The layer to forward for each cap: the highest flowing layer at or below the cap, else
    /// the lowest flowing one above it (`Low` when none flows).
    pub fn targets(&self, now: Instant) -> PerLayer<Layer> {
        let live = |l: Layer| {
            self.layer_seen[l].is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
        };
        PerLayer(Layer::ALL.map(|cap| {
            cap.and_below()
                .find(|l| live(*l))
                .or_else(|| cap.above().find(|l| live(*l)))
                .unwrap_or(Layer::Low)
        }))
    }

    /// Whether a keyframe request for `layer` may go out now (at most one per
    /// [`PLI_INTERVAL`] per layer); if so, it counts as sent.
    pub fn keyframe_request_due(&mut self, layer: Layer, now: Instant) -> bool {
        let slot = &mut self.last_pli[layer];
        if slot.is_some_and(|t| now.saturating_duration_since(t) < PLI_INTERVAL) {
            return false;
        }
        *slot = Some(now);
        true
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
        t.saw(Layer::Low, t0);
        t.saw(Layer::High, t0);
        let at = t.targets(t0 + Duration::from_millis(10));
        assert_eq!(at.0, [Layer::Low, Layer::Low, Layer::High]);
        // Only the low layer keeps flowing: after LAYER_STALE every cap gets it.
        let later = t0 + LAYER_STALE + Duration::from_millis(1);
        t.saw(Layer::Low, later);
        assert_eq!(t.targets(later).0, [Layer::Low; 3]);
    }

    #[test]
    fn keyframe_requests_are_throttled_per_layer() {
        let t0 = Instant::now();
        let mut t = track();
        assert!(t.keyframe_request_due(Layer::High, t0));
        assert!(!t.keyframe_request_due(Layer::High, t0 + Duration::from_millis(499)));
        assert!(t.keyframe_request_due(Layer::Low, t0 + Duration::from_millis(1)));
        assert!(t.keyframe_request_due(Layer::High, t0 + PLI_INTERVAL));
    }
}
