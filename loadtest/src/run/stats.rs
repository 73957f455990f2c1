//! What the simulated participants measure: packets received against those the sequence
//! numbers say were sent (loss), one-way latency, and join times.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// State every participant task shares with the runner (atomics only: the tasks count, the
/// runner prints progress and switches the measurement window).
#[derive(Debug)]
pub struct Shared {
    /// The clock the payload trailers count from.
    pub epoch: Instant,
    /// True inside the measurement window: only then do tasks record packets.
    pub measuring: AtomicBool,
    /// Participants whose media flows (subscribers: first packet in; publishers: ICE+DTLS up).
    pub ready: AtomicU32,
    /// Participants that gave up (error or the server ended them).
    pub failed: AtomicU32,
    /// Packets received since start (all windows), for the progress line.
    pub rx_packets: AtomicU64,
    /// Packets the sequence numbers say were sent to us since start (received + lost).
    pub rx_expected: AtomicU64,
    /// Packets the publishers wrote since start.
    pub tx_packets: AtomicU64,
}

impl Shared {
    /// Fresh counters; `epoch` is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            measuring: AtomicBool::new(false),
            ready: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            rx_packets: AtomicU64::new(0),
            rx_expected: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    last: u32,
}

/// One participant's receive figures inside the measurement window.
#[derive(Debug)]
pub struct RxStats {
    spans: HashMap<u32, Span>,
    /// Packets received in the window.
    pub packets: u64,
    /// Of those, video packets (any simulcast layer).
    pub video_packets: u64,
    /// Packets the sequence numbers say were sent in the window (received + lost), counted
    /// from each stream's first packet in the window.
    pub expected: u64,
    /// One-way latency, µs (send stamp in the payload → read by the task).
    pub latency_us: Histogram<u64>,
}

impl Default for RxStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RxStats {
    /// Empty figures; latencies up to 60 s at 3 significant digits.
    pub fn new() -> Self {
        Self {
            spans: HashMap::new(),
            packets: 0,
            video_packets: 0,
            expected: 0,
            // Bounds are constants that `new_with_bounds` accepts.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant digits is valid")),
        }
    }

    /// Records one packet of `stream` with trailer sequence `seq`; returns how many packets
    /// this adds to the expected count (1 + the gap before it; 0 for a late or duplicate one).
    pub fn record(&mut self, stream: u32, seq: u32, latency: Duration) -> u64 {
        self.packets += 1;
        if super::synth::is_video_stream(stream) {
            self.video_packets += 1;
        }
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.latency_us.record(us.min(60_000_000));
        let added = match self.spans.get_mut(&stream) {
            None => {
                self.spans.insert(stream, Span { last: seq });
                1
            }
            Some(s) if seq > s.last => {
                let gap = u64::from(seq - s.last);
                s.last = seq;
                gap
            }
            // Reordered or duplicated: it was already counted as expected.
            Some(_) => 0,
        };
        self.expected += added;
        added
    }

    /// Adds another participant's figures into these.
    pub fn merge(&mut self, other: &RxStats) {
        self.packets += other.packets;
        self.video_packets += other.video_packets;
        self.expected += other.expected;
        let _ = self.latency_us.add(&other.latency_us);
    }
}

/// Milestones of one join, measured from the moment the task starts connecting.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinTimes {
    /// WebSocket open → `JoinResponse` read.
    pub signal: Option<Duration>,
    /// → the primary peer connection's ICE + DTLS up (str0m `Event::Connected`).
    pub connected: Option<Duration>,
    /// → first RTP packet received (subscribers only).
    pub first_media: Option<Duration>,
}

/// What one participant task reports at the end.
#[derive(Debug, Default)]
pub struct ParticipantReport {
    /// Its identity.
    pub identity: String,
    /// Join milestones.
    pub join: JoinTimes,
    /// Receive figures in the measurement window.
    pub rx: RxStats,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Counts a received packet in the shared progress counters.
pub fn count_progress(shared: &Shared, expected_added: u64) {
    shared.rx_packets.fetch_add(1, Ordering::Relaxed);
    shared
        .rx_expected
        .fetch_add(expected_added, Ordering::Relaxed);
}

/// Percentile of a duration sample, ms (nearest rank), `None` when empty.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_as_loss_and_late_packets_do_not_double_count() {
        let mut rx = RxStats::new();
        let ms = Duration::from_millis(1);
        assert_eq!(rx.record(1, 10, ms), 1);
        assert_eq!(rx.record(1, 11, ms), 1);
        assert_eq!(rx.record(1, 14, ms), 3, "12 and 13 missing");
        assert_eq!(rx.record(1, 13, ms), 0, "late 13 arrives");
        assert_eq!(rx.record(4, 0, ms), 1, "another publisher's audio");
        assert_eq!(rx.packets, 5);
        assert_eq!(
            rx.video_packets, 4,
            "stream 1 is a video layer, stream 4 audio"
        );
        assert_eq!(rx.expected, 6);
        assert_eq!(rx.spans.len(), 2);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&v, 0.95), Some(95.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }
}
