//! Active-speaker detection from the RFC 6464 audio level publishers put in each audio packet
//! (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`), as LiveKit does it (`pkg/sfu/audio`,
//! `Room.audioUpdateWorker`): a [`LevelMeter`] per published audio track folds every packet's
//! level into an observation window of audio time; a [`SpeakerDetector`] per room turns the
//! meters' levels into the changes sent as [`crate::SfuEvent::SpeakersChanged`].
//!
//! Sans-IO: time is an argument, nothing here reads the clock, sends or logs. Per packet the
//! work is [`LevelMeter::observe`]: a few integer operations, no allocation; the floating
//! point and the allocation happen once per window and per update interval.
//!
//! Knows nothing of sessions, rooms or the wire: levels come in as [`AudioLevel`], speakers
//! go out as [`Speaker`].

use std::time::{Duration, Instant};

use crate::ParticipantId;

/// Longest audio one packet may account for (ms). Opus frames are at most 120 ms (RFC 6716
/// §2.1.4); a bigger RTP timestamp step is a gap (DTX during silence, a muted sender, loss).
const MAX_PACKET_AUDIO_MS: u32 = 120;
/// The audio a packet after a gap is taken to carry (ms): the usual Opus frame. The rest of
/// the gap counts as silence (LiveKit gives the whole step the new packet's level, so the
/// first word after a DTX pause counted the pause as speech).
const FRAME_AFTER_GAP_MS: u32 = 20;

/// The level of an audio packet, RFC 6464 §3: 0..=127 in −dBov (0 is the loudest a sender can
/// send, 127 is silence or quieter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct AudioLevel(u8);

impl AudioLevel {
    /// Silence (127 −dBov).
    pub const SILENT: Self = Self(127);

    /// A level of `minus_dbov` −dBov; values above 127 are clamped to 127.
    pub fn from_minus_dbov(minus_dbov: u8) -> Self {
        Self(minus_dbov.min(127))
    }

    /// The level in −dBov (0..=127).
    pub fn minus_dbov(self) -> u8 {
        self.0
    }
}

/// The knobs of speaker detection, with LiveKit's defaults (`config.AudioConfig`; the
/// comments of LiveKit's `config-sample.yaml` quote older values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerSettings {
    /// A packet at or louder than this level (−dBov, 0..=127) counts as speech. Default 35.
    pub active_level: u8,
    /// Share of a window (percent) that must be speech for the window to count. Default 40.
    pub min_percentile: u8,
    /// Window of audio time each level is measured over, and how often the room's speakers
    /// are evaluated and changes sent. Default 400 ms.
    pub update_interval: Duration,
    /// Windows the exponential moving average spans (factor 2 / (n + 1); 0 or 1: none).
    /// Default 2.
    pub smooth_intervals: u32,
}

impl Default for SpeakerSettings {
    fn default() -> Self {
        Self {
            active_level: 35,
            min_percentile: 40,
            update_interval: Duration::from_millis(400),
            smooth_intervals: 2,
        }
    }
}

/// One entry of a [`crate::SfuEvent::SpeakersChanged`] list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speaker {
    /// Who.
    pub participant: ParticipantId,
    /// Loudness on a linear scale, 0 (silent) to 1 (0 dBov speech for the whole window),
    /// quantised up to steps of 1/8 (LiveKit `AudioLevelQuantization`); 0 when not active.
    pub level: f32,
    /// Speaking now. `false` entries name a participant that stopped (level 0).
    pub active: bool,
}

/// The smoothed level of one audio track, from its packets' audio levels. See the module
/// docs.
#[derive(Debug, Clone)]
pub(crate) struct LevelMeter {
    settings: SpeakerSettings,
    /// Speech needed in a window to count (ms of audio).
    min_active_ms: u32,
    window_ms: u32,
    smooth_factor: f64,
    /// Linear level at and above which the track is speaking.
    threshold: f64,
    /// The EMA of the windows' linear levels.
    smoothed: f64,
    /// Loudest speech level of the current window.
    loudest: AudioLevel,
    /// Speech and audio in the current window (ms of audio).
    active_ms: u32,
    observed_ms: u32,
    /// When the last packet arrived, and its RTP timestamp.
    last_packet_at: Option<Instant>,
    last_ts: Option<u32>,
}

impl LevelMeter {
    /// A meter with nothing observed.
    pub fn new(settings: SpeakerSettings) -> Self {
        let window_ms = u32::try_from(settings.update_interval.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let smooth_factor = if settings.smooth_intervals > 1 {
            2.0 / (f64::from(settings.smooth_intervals) + 1.0)
        } else {
            1.0
        };
        Self {
            settings,
            min_active_ms: (u64::from(settings.min_percentile.min(100)) * u64::from(window_ms)
                / 100) as u32,
            window_ms,
            smooth_factor,
            threshold: linear(f64::from(settings.active_level)),
            smoothed: 0.0,
            loudest: AudioLevel::SILENT,
            active_ms: 0,
            observed_ms: 0,
            last_packet_at: None,
            last_ts: None,
        }
    }

    /// One packet: its level, RTP timestamp and the track's clock rate (Hz), arriving at
    /// `now`. The audio it carries is the timestamp step since the previous packet; a step over
    /// [`MAX_PACKET_AUDIO_MS`] is silence but for the packet's own [`FRAME_AFTER_GAP_MS`]. The
    /// first packet only sets the timestamp reference; an older (reordered) one is ignored.
    pub fn observe(&mut self, level: AudioLevel, ts: u32, clock_rate: u32, now: Instant) {
        self.last_packet_at = Some(now);
        let Some(last) = self.last_ts else {
            self.last_ts = Some(ts);
            return;
        };
        let step = ts.wrapping_sub(last);
        if step >= 1 << 31 {
            // Reordered (older than the last one seen): its audio is already counted.
            return;
        }
        self.last_ts = Some(ts);
        let ms = (u64::from(step) * 1000 / u64::from(clock_rate.max(1))) as u32;
        if ms == 0 {
            return;
        }
        let (gap_ms, ms) = if ms > MAX_PACKET_AUDIO_MS {
            (ms - FRAME_AFTER_GAP_MS, FRAME_AFTER_GAP_MS)
        } else {
            (0, ms)
        };
        self.observed_ms = self.observed_ms.saturating_add(gap_ms + ms);
        if level.minus_dbov() <= self.settings.active_level {
            self.active_ms += ms;
            self.loudest = self.loudest.min(level);
        }
        if self.observed_ms >= self.window_ms {
            self.close_window();
        }
    }

    /// The smoothed linear level (0..=1) and whether it counts as speaking, at `now`. A track
    /// without packets for two windows is reset to silence.
    pub fn level(&mut self, now: Instant) -> (f64, bool) {
        let stale = self
            .last_packet_at
            .is_none_or(|t| now.saturating_duration_since(t) >= 2 * self.settings.update_interval);
        if stale {
            self.reset(0.0);
        }
        (self.smoothed, self.smoothed >= self.threshold)
    }

    fn close_window(&mut self) {
        let mut smoothed = 0.0;
        if self.active_ms >= self.min_active_ms && self.active_ms > 0 {
            // The loudest level, made quieter by the share of the window that was not speech
            // (20·log10 of the active share; 0 dB when speech filled the window).
            let weight = 20.0 * (f64::from(self.active_ms) / f64::from(self.window_ms)).log10();
            let adjusted = f64::from(self.loudest.minus_dbov()) - weight;
            // Clamped: a window overshooting by a packet must not read above 0 dBov.
            let level = linear(adjusted).min(1.0);
            smoothed = self.smoothed + (level - self.smoothed) * self.smooth_factor;
        }
        self.reset(smoothed);
    }

    fn reset(&mut self, smoothed: f64) {
        self.smoothed = smoothed;
        self.loudest = AudioLevel::SILENT;
        self.active_ms = 0;
        self.observed_ms = 0;
    }
}

/// The speakers of one room as last sent, and the changes since. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct SpeakerDetector {
    /// Active speakers last sent, loudest first, levels quantised.
    last: Vec<Speaker>,
}

impl SpeakerDetector {
    /// Who is speaking now (as last sent), loudest first; `None` when nobody is. A participant
    /// joining the room gets this, since it missed the changes before.
    pub fn current(&self) -> Option<Vec<Speaker>> {
        (!self.last.is_empty()).then(|| self.last.clone())
    }

    /// Takes the room's active speakers now (any order, levels as the meters give them) and
    /// returns what changed since the last call, if anything: speakers new or at a new level,
    /// loudest first, then those no longer speaking (level 0, not active).
    pub fn update(&mut self, mut active: Vec<Speaker>) -> Option<Vec<Speaker>> {
        for s in &mut active {
            s.level = quantise(s.level);
            s.active = true;
        }
        active.sort_by(|a, b| b.level.total_cmp(&a.level));
        let mut changes: Vec<Speaker> = active
            .iter()
            .filter(|s| {
                !self
                    .last
                    .iter()
                    .any(|l| l.participant == s.participant && l.level == s.level)
            })
            .copied()
            .collect();
        changes.extend(
            self.last
                .iter()
                .filter(|l| !active.iter().any(|s| s.participant == l.participant))
                .map(|l| Speaker {
                    participant: l.participant,
                    level: 0.0,
                    active: false,
                }),
        );
        self.last = active;
        (!changes.is_empty()).then_some(changes)
    }
}

/// −dBov to a linear amplitude ratio: 10^(−level / 20).
fn linear(minus_dbov: f64) -> f64 {
    10f64.powf(-minus_dbov / 20.0)
}

/// Rounds a level up to the next 1/8 (LiveKit quantises so small changes send nothing).
fn quantise(level: f32) -> f32 {
    (level * 8.0).ceil() / 8.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms Opus packets at 48 kHz.
    const STEP_TS: u32 = 960;

    struct Clock {
        t0: Instant,
        ms: u64,
        ts: u32,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                ms: 0,
                ts: 1000,
            }
        }
        fn now(&self) -> Instant {
            self.t0 + Duration::from_millis(self.ms)
        }
        /// `ms` of 20 ms packets at `level`, 20 ms of virtual time apart.
        fn feed(&mut self, meter: &mut LevelMeter, level: u8, ms: u64) {
            for _ in 0..ms / 20 {
                self.ms += 20;
                self.ts = self.ts.wrapping_add(STEP_TS);
                meter.observe(
                    AudioLevel::from_minus_dbov(level),
                    self.ts,
                    48_000,
                    self.now(),
                );
            }
        }
    }

    fn meter() -> LevelMeter {
        LevelMeter::new(SpeakerSettings::default())
    }

    fn p(n: u64) -> ParticipantId {
        ParticipantId(n)
    }

    fn sp(n: u64, level: f32) -> Speaker {
        Speaker {
            participant: p(n),
            level,
            active: true,
        }
    }

    #[test]
    fn continuous_speech_at_0_dbov_reaches_full_level_through_the_moving_average() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 0, 420);
        let (first, active) = m.level(c.now());
        // EMA factor 2/3 on the first full window: 2/3 of 1.0.
        assert!((first - 2.0 / 3.0).abs() < 1e-6, "{first}");
        assert!(active);
        c.feed(&mut m, 0, 400);
        let (second, _) = m.level(c.now());
        assert!((second - 8.0 / 9.0).abs() < 1e-6, "{second}");
    }

    #[test]
    fn a_quiet_tone_never_counts_as_speech() {
        let mut c = Clock::new();
        let mut m = meter();
        // 36 −dBov: just below the active level of 35.
        c.feed(&mut m, 36, 2000);
        assert_eq!(m.level(c.now()), (0.0, false));
    }

    #[test]
    fn speech_in_under_40_percent_of_a_window_does_not_count() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 127, 20); // first packet: timestamp reference
                                 // Per 400 ms window: 140 ms speech (35 %), 260 ms silence.
        for _ in 0..5 {
            c.feed(&mut m, 10, 140);
            c.feed(&mut m, 127, 260);
        }
        assert!(!m.level(c.now()).1);
        // 200 ms speech (50 %) per window counts, with the level lowered by 20·log10(0.5).
        for _ in 0..5 {
            c.feed(&mut m, 10, 200);
            c.feed(&mut m, 127, 200);
        }
        let (level, active) = m.level(c.now());
        assert!(active);
        let window = linear(10.0 + 6.0206);
        assert!((level - window).abs() < 0.01, "{level} vs {window}");
    }

    #[test]
    fn a_track_without_packets_for_two_windows_is_silent() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 5, 1000);
        assert!(m.level(c.now()).1);
        c.ms += 799;
        assert!(m.level(c.now()).1, "one window and a bit: still speaking");
        c.ms += 1;
        assert_eq!(m.level(c.now()), (0.0, false));
    }

    #[test]
    fn a_full_window_of_silence_ends_speech_at_once() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 5, 820); // reference packet + two windows
        assert!(m.level(c.now()).1);
        c.feed(&mut m, 127, 380);
        assert!(m.level(c.now()).1, "window not closed yet");
        c.feed(&mut m, 127, 20);
        assert_eq!(m.level(c.now()), (0.0, false));
    }

    #[test]
    fn a_reordered_packet_adds_no_audio_time() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 0, 20);
        let older = c.ts.wrapping_sub(5 * STEP_TS);
        m.observe(AudioLevel::from_minus_dbov(0), older, 48_000, c.now());
        c.feed(&mut m, 0, 380);
        assert_eq!(m.level(c.now()), (0.0, false), "window not closed yet");
        c.feed(&mut m, 0, 20);
        assert!(m.level(c.now()).1);
    }

    #[test]
    fn a_timestamp_gap_counts_as_silence_not_as_the_next_packets_speech() {
        let mut c = Clock::new();
        let mut m = meter();
        c.feed(&mut m, 0, 820);
        assert!(m.level(c.now()).1);
        // 2 s of DTX, then speech again: the gap is silence, the window does not count.
        c.ms += 2000;
        c.ts = c.ts.wrapping_add(96_000);
        c.feed(&mut m, 0, 20);
        assert_eq!(m.level(c.now()), (0.0, false));
    }

    #[test]
    fn timestamps_wrap_around() {
        let mut c = Clock::new();
        c.ts = u32::MAX - 3 * STEP_TS;
        let mut m = meter();
        c.feed(&mut m, 0, 440);
        assert!(m.level(c.now()).1);
    }

    #[test]
    fn detector_sends_new_speakers_loudest_first_and_quantised() {
        let mut d = SpeakerDetector::default();
        let changes = d.update(vec![sp(1, 0.30), sp(2, 0.9)]).expect("changes");
        assert_eq!(changes, vec![sp(2, 1.0), sp(1, 0.375)]);
    }

    #[test]
    fn detector_sends_nothing_when_levels_stay_in_their_step() {
        let mut d = SpeakerDetector::default();
        d.update(vec![sp(1, 0.30), sp(2, 0.9)]);
        assert_eq!(d.update(vec![sp(2, 0.95), sp(1, 0.26)]), None);
        assert_eq!(d.current(), Some(vec![sp(2, 1.0), sp(1, 0.375)]));
        d.update(vec![]);
        assert_eq!(d.current(), None);
    }

    #[test]
    fn detector_sends_only_the_changed_speaker() {
        let mut d = SpeakerDetector::default();
        d.update(vec![sp(1, 0.30), sp(2, 0.9)]);
        assert_eq!(
            d.update(vec![sp(1, 0.5), sp(2, 0.9)]),
            Some(vec![sp(1, 0.5)])
        );
    }

    #[test]
    fn a_speaker_who_stops_is_sent_inactive_at_level_zero() {
        let mut d = SpeakerDetector::default();
        d.update(vec![sp(1, 0.30), sp(2, 0.9)]);
        let changes = d.update(vec![sp(2, 0.9)]).expect("changes");
        assert_eq!(
            changes,
            vec![Speaker {
                participant: p(1),
                level: 0.0,
                active: false
            }]
        );
        assert_eq!(d.update(vec![sp(2, 0.9)]), None, "sent once");
        assert_eq!(d.update(vec![]).map(|c| c.len()), Some(1));
        assert_eq!(d.update(vec![]), None);
    }

    #[test]
    fn meters_and_detector_on_a_virtual_clock_rank_the_louder_first() {
        let mut c = Clock::new();
        let (mut loud, mut quiet, mut silent) = (meter(), meter(), meter());
        let mut d = SpeakerDetector::default();
        let mut sent = Vec::new();
        for _ in 0..10 {
            // Interleaved in 20 ms steps, as packets arrive.
            for _ in 0..20 {
                c.feed(&mut loud, 3, 20);
                let (t, ts) = (c.now(), c.ts);
                quiet.observe(AudioLevel::from_minus_dbov(25), ts, 48_000, t);
                silent.observe(AudioLevel::from_minus_dbov(90), ts, 48_000, t);
            }
            let now = c.now();
            let active: Vec<Speaker> = [(1, &mut loud), (2, &mut quiet), (3, &mut silent)]
                .into_iter()
                .filter_map(|(n, m)| {
                    let (level, active) = m.level(now);
                    active.then_some(sp(n, level as f32))
                })
                .collect();
            if let Some(ch) = d.update(active) {
                sent.push(ch);
            }
        }
        let first = &sent[0];
        assert_eq!(
            first.iter().map(|s| s.participant).collect::<Vec<_>>(),
            [p(1), p(2)]
        );
        assert!(first[0].level > first[1].level);
        assert!(sent.iter().flatten().all(|s| s.participant != p(3)));
        // Steady speech: after the average settles, nothing more is sent.
        assert!(sent.len() <= 4, "{sent:?}");
    }
}
