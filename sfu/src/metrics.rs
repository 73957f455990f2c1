//! Counters and gauges of the media plane, read by the `/metrics` endpoint. Relaxed atomics:
//! written on the media thread, read elsewhere; exactness across counters is not needed.

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
}

impl SfuMetrics {
    pub(crate) fn add(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
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
