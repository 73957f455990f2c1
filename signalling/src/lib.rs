//! Switchboard's wire protocols over one axum router: LiveKit signalling (`/rtc`, tokens,
//! data-packet routing), health (`/`) and Prometheus metrics (`/metrics`). Maps wire messages to
//! the media plane's API (`switchboard-sfu`) and back.

pub mod ids;
pub mod livekit;
pub mod metrics;
pub mod token;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use switchboard_config::Settings;
use switchboard_sfu::SfuHandle;
use tower_http::cors::CorsLayer;

/// Shared state of every request handler and session task.
#[derive(Debug)]
pub struct AppState {
    /// Resolved configuration.
    pub settings: Settings,
    /// The media plane.
    pub sfu: SfuHandle,
    /// LiveKit rooms and participants.
    pub registry: livekit::room::Registry,
    /// Signalling session tasks alive.
    pub tasks: AtomicI64,
}

impl AppState {
    /// State for a server with these settings and media plane.
    pub fn new(settings: Settings, sfu: SfuHandle) -> Arc<Self> {
        Arc::new(Self {
            settings,
            sfu,
            registry: livekit::room::Registry::default(),
            tasks: AtomicI64::new(0),
        })
    }
}

/// The HTTP surface: `/`, `/metrics`, `/rtc`, `/rtc/validate`, `/rtc/v1`, `/rtc/v1/validate`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { "OK" }))
        .route("/metrics", get(metrics::render))
        .route("/rtc", get(livekit::rtc))
        .route("/rtc/validate", get(livekit::validate))
        .route("/rtc/v1", get(livekit::rtc_v1))
        .route("/rtc/v1/validate", get(livekit::validate_v1))
        .layer(CorsLayer::very_permissive())
        .with_state(state)
}
