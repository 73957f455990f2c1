//! Connection quality of publishers, as LiveKit scores it (`pkg/sfu/connectionquality`,
//! `scorer.go`): per published track, a [`LossWindow`] counts the packets that arrived against
//! the sequence numbers they span; every [`QUALITY_INTERVAL`] a [`QualityScorer`] turns the
//! window into a score 0..=100 (an E-model simplification: 100 minus a delay effect minus the
//! loss percentage times a codec weight), smoothed, and mapped to [`ConnectionQuality`].
//!
//! What is measured today: the upstream of each published track (loss as the server sees it;
//! the delay effect only when an RTT is known). Downstream (subscribers' receiver reports) is
//! not scored: a participant that publishes nothing reads `Excellent`. A track that sends
//! nothing for a window keeps its score (a camera muted by livekit-client stops its track);
//! a participant all of whose live tracks went dry is `Lost` (the core decides that).
//!
//! Sans-IO, no clock read; per packet [`LossWindow::observe`] is a few integer operations.

use std::time::Duration;

use crate::ParticipantId;

/// How often qualities are evaluated and changes sent (LiveKit `UpdateInterval`).
pub const QUALITY_INTERVAL: Duration = Duration::from_secs(5);

/// Highest score (LiveKit `maxScore`).
pub(crate) const MAX_SCORE: f64 = 100.0;
/// Lowest score a window with packets can drive the smoothed score to (LiveKit `minScore`):
/// without it a score that fell far would take long to climb back.
const MIN_SCORE: f64 = 20.0;
/// Smoothing towards a better score (slow, conservative) and a worse one (fast, responsive).
const INCREASE_FACTOR: f64 = 0.4;
const DECREASE_FACTOR: f64 = 0.7;

/// The quality of a participant's connection (LiveKit `ConnectionQuality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectionQuality {
    /// Media stopped arriving: every track that was sending sent nothing for a whole
    /// interval.
    Lost,
    /// Score 40 or below.
    Poor,
    /// Score above 40, up to 80.
    Good,
    /// Score above 80.
    Excellent,
}

impl ConnectionQuality {
    /// The quality a score (0..=100) reads as (LiveKit `scoreToConnectionQuality`).
    pub fn from_score(score: f64) -> Self {
        if score > 80.0 {
            Self::Excellent
        } else if score > 40.0 {
            Self::Good
        } else {
            Self::Poor
        }
    }
}

/// One participant's quality in a [`crate::SfuEvent::ConnectionQuality`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityUpdate {
    /// Who.
    pub participant: ParticipantId,
    /// Its quality now.
    pub quality: ConnectionQuality,
    /// The score behind it, 0..=100 (LiveKit's scale).
    pub score: f32,
}

/// Packets of one RTP stream in the current window: how many arrived, and the extended
/// sequence numbers they span (so how many were expected).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LossWindow {
    received: u32,
    /// Highest extended sequence number before this window (`None` before the first packet).
    base: Option<u64>,
    /// Highest extended sequence number seen so far.
    max: Option<u64>,
}

/// What a [`LossWindow`] saw over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowStats {
    /// Packets the sequence numbers say were sent.
    pub expected: u32,
    /// Of those, how many never arrived (retransmissions that made up for losses count as
    /// arrived).
    pub lost: u32,
}

impl LossWindow {
    /// One packet with extended sequence number `seq`.
    pub fn observe(&mut self, seq: u64) {
        self.received = self.received.saturating_add(1);
        if self.base.is_none() {
            // The first packet ever: the window starts just before it.
            self.base = Some(seq.saturating_sub(1));
        }
        if self.max.is_none_or(|m| seq > m) {
            self.max = Some(seq);
        }
    }

    /// Whether a packet ever arrived.
    pub fn ever(&self) -> bool {
        self.max.is_some()
    }

    /// The window's figures; the next window starts now.
    pub fn take(&mut self) -> WindowStats {
        let (Some(base), Some(max)) = (self.base, self.max) else {
            return WindowStats::default();
        };
        let expected = u32::try_from(max.saturating_sub(base)).unwrap_or(u32::MAX);
        let lost = expected.saturating_sub(self.received);
        self.received = 0;
        self.base = Some(max);
        WindowStats { expected, lost }
    }
}

/// A track's smoothed score. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct QualityScorer {
    score: f64,
    /// Loss percentage points per score point: 8 for Opus (2.5 % loss reads GOOD, 7.5 % POOR),
    /// 10 for video (2 % / 6 %) (LiveKit `getPacketLossWeight`).
    loss_weight: f64,
}

impl QualityScorer {
    /// A scorer for an audio or a video track, starting at the best score.
    pub fn new(video: bool) -> Self {
        Self {
            score: MAX_SCORE,
            loss_weight: if video { 10.0 } else { 8.0 },
        }
    }

    /// Folds one window in: `stats` of its packets, `rtt` if known. A window without packets
    /// (not started, muted, or gone) leaves the score as it was and gives `None`; otherwise the
    /// new score.
    pub fn update(&mut self, stats: WindowStats, rtt: Option<Duration>) -> Option<f64> {
        if stats.expected == 0 {
            return None;
        }
        let score = window_score(stats, rtt, self.loss_weight);
        let factor = if score < self.score {
            DECREASE_FACTOR
        } else {
            INCREASE_FACTOR
        };
        self.score = (factor * score + (1.0 - factor) * self.score).max(MIN_SCORE);
        Some(self.score)
    }

    /// The quality the score reads as.
    pub fn quality(&self) -> ConnectionQuality {
        ConnectionQuality::from_score(self.score)
    }

    /// The current score (0..=100).
    pub fn score(&self) -> f64 {
        self.score
    }
}

/// One window's score before smoothing (LiveKit `calculatePacketScore`): 100, minus the
/// delay effect (half the RTT, in ms, / 40; above 160 ms one point per 10 ms over 120), minus
/// the loss percentage times `loss_weight`; at least 0.
fn window_score(stats: WindowStats, rtt: Option<Duration>, loss_weight: f64) -> f64 {
    let delay_ms = rtt.map_or(0.0, |r| r.as_secs_f64() * 1000.0 / 2.0);
    let delay_effect = if delay_ms > 160.0 {
        (delay_ms - 120.0) / 10.0
    } else {
        delay_ms / 40.0
    };
    let loss_pct = f64::from(stats.lost) * 100.0 / f64::from(stats.expected.max(1));
    (MAX_SCORE - delay_effect - loss_pct * loss_weight).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(expected: u32, lost: u32) -> WindowStats {
        WindowStats { expected, lost }
    }

    #[test]
    fn a_clean_stream_stays_excellent() {
        let mut s = QualityScorer::new(false);
        for _ in 0..10 {
            s.update(stats(250, 0), Some(Duration::from_millis(20)));
        }
        assert_eq!(s.quality(), ConnectionQuality::Excellent);
        assert!(s.score() > 99.0, "{}", s.score());
    }

    #[test]
    fn audio_loss_thresholds_follow_the_opus_weight() {
        // 2 % loss at weight 8: 84 -> excellent; 5 %: 60 -> good; 10 %: 20 -> poor.
        for (lost, want) in [
            (5, ConnectionQuality::Excellent),
            (12, ConnectionQuality::Good),
            (25, ConnectionQuality::Poor),
        ] {
            let mut s = QualityScorer::new(false);
            for _ in 0..20 {
                s.update(stats(250, lost), None);
            }
            assert_eq!(s.quality(), want, "{lost} of 250 lost: {}", s.score());
        }
    }

    #[test]
    fn video_loss_weighs_more() {
        let mut a = QualityScorer::new(false);
        let mut v = QualityScorer::new(true);
        a.update(stats(1000, 30), None);
        v.update(stats(1000, 30), None);
        assert!(v.score() < a.score());
    }

    #[test]
    fn scores_fall_fast_and_recover_slowly() {
        let mut s = QualityScorer::new(true);
        // One bad window (10 % video loss: window score 0) takes 70 % of the way down.
        s.update(stats(1000, 100), None);
        assert!((s.score() - 30.0).abs() < 1e-9, "{}", s.score());
        // One clean window climbs 40 % of the way back.
        s.update(stats(1000, 0), None);
        assert!((s.score() - 58.0).abs() < 1e-9, "{}", s.score());
    }

    #[test]
    fn long_rtt_costs_a_point_per_10_ms_of_one_way_delay_over_120() {
        let mut s = QualityScorer::new(false);
        s.update(stats(250, 0), Some(Duration::from_millis(800)));
        // Window score 100 - (400 - 120) / 10 = 72, smoothed from 100 at 0.7.
        assert!(
            (s.score() - (0.7 * 72.0 + 0.3 * 100.0)).abs() < 1e-9,
            "{}",
            s.score()
        );
    }

    #[test]
    fn a_window_without_packets_keeps_the_score() {
        let mut s = QualityScorer::new(false);
        s.update(stats(250, 25), None);
        let before = s.score();
        assert_eq!(s.update(stats(0, 0), None), None);
        assert_eq!(s.score(), before);
        assert_eq!(QualityScorer::new(true).update(stats(0, 0), None), None);
    }

    #[test]
    fn loss_window_counts_gaps_and_not_reordering() {
        let mut w = LossWindow::default();
        assert!(!w.ever());
        for seq in [100u64, 101, 103, 102, 105] {
            w.observe(seq);
        }
        // 100..=105: 6 expected, 5 arrived (104 missing).
        assert_eq!(w.take(), stats(6, 1));
        for seq in [104u64, 106, 107] {
            // 104 arrives late (a retransmission): it makes up for a loss of this window.
            w.observe(seq);
        }
        assert_eq!(w.take(), stats(2, 0));
        assert_eq!(w.take(), stats(0, 0));
        assert!(w.ever());
    }
}
