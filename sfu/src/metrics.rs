//! Counters and gauges of the media plane, read by the `/metrics` endpoint. Relaxed atomics:
//! each media thread adds what changed once per wake-up (not per packet), read elsewhere;
//! exactness across counters is not needed.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Media-plane counters. Gauges are `AtomicI64` so a bug shows as a negative value, not a wrap.
#[derive(Debug, Default)]
pub struct SfuMetrics {
    /// str0m sessions (peer connections) alive.
    pub sessions: AtomicI64,
    /// Published tracks bound to a media section.
    pub published_tracks: AtomicI64,
    /// Subscriptions (participant receiving a track).
    pub subscriptions: AtomicI64,
    /// Participants known to the media plane.
    pub participants: AtomicI64,
    /// UDP datagrams dropped: unparseable, or from no known session.
    pub dropped_datagrams: AtomicU64,
    /// RTP packets received from publishers.
    pub rtp_in: AtomicU64,
    /// RTP packets forwarded to subscribers.
    pub rtp_forwarded: AtomicU64,
    /// Of those, video packets (a paused video subscription stops these).
    pub rtp_forwarded_video: AtomicU64,
    /// Data-channel messages not delivered to a receiver (lossy with a full buffer, or the
    /// reliable backlog over its cap, or the channel gone).
    pub data_dropped: AtomicU64,
    /// Sessions ended because their WebRTC state panicked (contained).
    pub session_panics: AtomicU64,
    /// Subscriptions refused because the track is not in the subscriber's room.
    pub subscriptions_refused: AtomicU64,
    /// Keyframe requests (PLI/FIR) sent to publishers, after aggregation across subscribers
    /// and the per-layer throttle.
    pub keyframe_requests: AtomicU64,
    /// Video subscriptions moved to a lower layer, or paused, by their subscriber's bandwidth.
    pub bandwidth_downgrades: AtomicU64,
    /// Video subscriptions moved up again, or resumed, as their subscriber's bandwidth allowed.
    pub bandwidth_upgrades: AtomicU64,
    /// Load of each media thread, by index.
    pub threads: Vec<ThreadLoad>,
    /// The single-port dispatcher (with more than one media thread).
    pub dispatcher: DispatchLoad,
}

/// Load of one media thread (values since it started).
#[derive(Debug, Default)]
pub struct ThreadLoad {
    /// Rooms living on the thread.
    pub rooms: AtomicI64,
    /// Participants of those rooms.
    pub participants: AtomicI64,
    /// Datagrams the thread's core handled.
    pub datagrams: AtomicU64,
    /// RTP packets it forwarded.
    pub rtp_forwarded: AtomicU64,
    /// Time it spent working rather than waiting, in microseconds.
    pub busy_us: AtomicU64,
}

/// Load of the single-port dispatcher (values since it started; zero with one media thread).
#[derive(Debug, Default)]
pub struct DispatchLoad {
    /// Datagrams handed to a media thread.
    pub datagrams: AtomicU64,
    /// Datagrams dropped: for no known session, or the thread's queue was full.
    pub dropped: AtomicU64,
    /// Time it spent working rather than waiting, in microseconds.
    pub busy_us: AtomicU64,
}

impl SfuMetrics {
    /// Metrics for a media plane of `threads` media threads.
    pub fn new(threads: usize) -> Self {
        Self {
            threads: (0..threads).map(|_| ThreadLoad::default()).collect(),
            ..Self::default()
        }
    }

    /// Reads a gauge.
    pub fn get(gauge: &AtomicI64) -> i64 {
        gauge.load(Ordering::Relaxed)
    }

    /// Reads a counter.
    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
