//! `GET /metrics`: Prometheus text exposition of rooms, participants, sessions, tracks,
//! subscriptions, tasks and dropped datagrams, encoded with `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchboard_sfu::{SfuMetrics, ThreadLoad};

use crate::AppState;

fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    reg.register(name, help, c);
}

/// Per-media-thread load (`thread` label: its index, low cardinality) and the single-port
/// dispatcher's.
fn media_threads(reg: &mut Registry, m: &SfuMetrics) {
    let thread_gauge =
        |reg: &mut Registry, name: &str, help: &str, f: &dyn Fn(&ThreadLoad) -> i64| {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (i, t) in m.threads.iter().enumerate() {
                family
                    .get_or_create(&vec![("thread".to_string(), i.to_string())])
                    .set(f(t));
            }
            reg.register(name, help, family);
        };
    let thread_counter =
        |reg: &mut Registry, name: &str, help: &str, f: &dyn Fn(&ThreadLoad) -> u64| {
            let family = Family::<Vec<(String, String)>, Counter>::default();
            for (i, t) in m.threads.iter().enumerate() {
                family
                    .get_or_create(&vec![("thread".to_string(), i.to_string())])
                    .inc_by(f(t));
            }
            reg.register(name, help, family);
        };
    gauge(
        reg,
        "media_threads",
        "Media threads (rtc.media_threads)",
        m.threads.len() as i64,
    );
    thread_gauge(
        reg,
        "media_thread_rooms",
        "Rooms living on a media thread",
        &|t| t.rooms.load(Ordering::Relaxed),
    );
    thread_gauge(
        reg,
        "media_thread_participants",
        "Participants of the rooms on a media thread",
        &|t| t.participants.load(Ordering::Relaxed),
    );
    thread_counter(
        reg,
        "media_thread_datagrams",
        "Datagrams a media thread handled",
        &|t| t.datagrams.load(Ordering::Relaxed),
    );
    thread_counter(
        reg,
        "media_thread_forwarded_packets",
        "RTP packets a media thread forwarded",
        &|t| t.rtp_forwarded.load(Ordering::Relaxed),
    );
    // Seconds as a float counter: busy time is kept in microseconds.
    let busy = Family::<Vec<(String, String)>, Counter<f64, AtomicU64>>::default();
    for (i, t) in m.threads.iter().enumerate() {
        busy.get_or_create(&vec![("thread".to_string(), i.to_string())])
            .inc_by(t.busy_us.load(Ordering::Relaxed) as f64 / 1e6);
    }
    reg.register(
        "media_thread_busy_seconds",
        "Time a media thread spent working rather than waiting",
        busy,
    );
    counter(
        reg,
        "media_dispatched_datagrams",
        "Datagrams the single-port dispatcher handed to a media thread (0 with one thread)",
        m.dispatcher.datagrams.load(Ordering::Relaxed),
    );
    let dispatch_busy: Counter<f64, AtomicU64> = Counter::default();
    dispatch_busy.inc_by(m.dispatcher.busy_us.load(Ordering::Relaxed) as f64 / 1e6);
    reg.register(
        "media_dispatcher_busy_seconds",
        "Time the single-port dispatcher spent working rather than waiting",
        dispatch_busy,
    );
}

/// Renders the current values.
pub async fn render(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let counts = state.rooms.counts();
    let m = state.sfu.metrics();
    let mut reg = Registry::with_prefix("switchboard");
    gauge(
        &mut reg,
        "rooms",
        "Rooms with at least one participant",
        counts.rooms as i64,
    );
    gauge(
        &mut reg,
        "participants",
        "Participants connected over signalling",
        counts.participants as i64,
    );
    gauge(
        &mut reg,
        "sessions",
        "WebRTC sessions (peer connections) in the media plane",
        SfuMetrics::get(&m.sessions),
    );
    gauge(
        &mut reg,
        "media_participants",
        "Participants known to the media plane",
        SfuMetrics::get(&m.participants),
    );
    gauge(
        &mut reg,
        "published_tracks",
        "Published tracks bound to media",
        SfuMetrics::get(&m.published_tracks),
    );
    gauge(
        &mut reg,
        "subscriptions",
        "Track subscriptions",
        SfuMetrics::get(&m.subscriptions),
    );
    gauge(
        &mut reg,
        "tasks",
        "Signalling session tasks",
        state.livekit.tasks.load(Ordering::Relaxed),
    );
    gauge(
        &mut reg,
        "signal_detached",
        "Participants whose signalling WebSocket dropped, kept for a resume",
        state.livekit.resumes.detached.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "signal_resumes",
        "Signalling sessions resumed on a new WebSocket (reconnect=1)",
        state.livekit.resumes.resumed.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "signal_resumes_refused",
        "reconnect=1 connections with no session to resume (told to rejoin)",
        state.livekit.resumes.refused.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        "dropped_datagrams",
        "UDP datagrams dropped (malformed or unroutable)",
        SfuMetrics::count(&m.dropped_datagrams),
    );
    counter(
        &mut reg,
        "rtp_received_packets",
        "RTP packets received from publishers",
        SfuMetrics::count(&m.rtp_in),
    );
    counter(
        &mut reg,
        "rtp_forwarded_packets",
        "RTP packets forwarded to subscribers",
        SfuMetrics::count(&m.rtp_forwarded),
    );
    counter(
        &mut reg,
        "rtp_forwarded_video_packets",
        "Video RTP packets forwarded to subscribers",
        SfuMetrics::count(&m.rtp_forwarded_video),
    );
    counter(
        &mut reg,
        "data_dropped_messages",
        "Data-channel messages not delivered (buffer full, backlog over cap, channel gone)",
        SfuMetrics::count(&m.data_dropped),
    );
    counter(
        &mut reg,
        "session_panics",
        "WebRTC sessions ended by a contained panic",
        SfuMetrics::count(&m.session_panics),
    );
    counter(
        &mut reg,
        "subscriptions_refused",
        "Subscriptions refused: the track is not in the subscriber's room",
        SfuMetrics::count(&m.subscriptions_refused),
    );
    counter(
        &mut reg,
        "keyframe_requests",
        "Keyframe requests (PLI/FIR) sent to publishers, after aggregation and throttling",
        SfuMetrics::count(&m.keyframe_requests),
    );
    counter(
        &mut reg,
        "bandwidth_downgrades",
        "Video subscriptions moved to a lower layer or paused by their subscriber's bandwidth",
        SfuMetrics::count(&m.bandwidth_downgrades),
    );
    counter(
        &mut reg,
        "bandwidth_upgrades",
        "Video subscriptions moved up again or resumed as their subscriber's bandwidth allowed",
        SfuMetrics::count(&m.bandwidth_upgrades),
    );
    media_threads(&mut reg, m);
    let mut body = String::new();
    if encode(&mut body, &reg).is_err() {
        body.clear();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
