//! Switchboard's wire protocols over one axum router: LiveKit signalling (`/rtc`, tokens,
//! data-packet routing), MatrixRTC authorisation, health (`/`) and Prometheus metrics
//! (`/metrics`). Maps wire messages to the media plane's API (`switchboard-sfu`) and back;
//! the room roster (`rooms`) sits beside the adapters, in no wire format.

pub mod ids;
pub mod livekit;
pub mod matrixrtc;
pub mod metrics;
pub mod rooms;
pub mod token;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use switchboard_config::Settings;
use switchboard_sfu::SfuHandle;
use tower_http::cors::CorsLayer;

/// Shared state of every request handler and session task: what all adapters share, then
/// each adapter's own.
#[derive(Debug)]
pub struct AppState {
    /// Resolved configuration.
    pub settings: Settings,
    /// The media plane.
    pub sfu: SfuHandle,
    /// Rooms and participants, whichever adapter they came through.
    pub rooms: rooms::Rooms,
    /// The LiveKit adapter's sessions and counters.
    pub livekit: livekit::LiveKitState,
    /// MatrixRTC authorisation's verifier, limiter, delegations and HTTP client.
    pub matrixrtc: matrixrtc::MatrixRtcState,
}

impl AppState {
    /// State for a server with these settings and media plane.
    pub fn new(settings: Settings, sfu: SfuHandle) -> Arc<Self> {
        Arc::new(Self {
            matrixrtc: matrixrtc::MatrixRtcState::new(&settings),
            settings,
            sfu,
            rooms: rooms::Rooms::new(),
            livekit: Default::default(),
        })
    }
}

/// The HTTP surface: `/`, `/metrics`, `/rtc`, `/rtc/validate`, `/rtc/v1`, `/rtc/v1/validate`,
/// and with MatrixRTC authorisation on, `/sfu/get`, `/get_token`, `/healthz`.
pub fn router(state: Arc<AppState>) -> Router {
    let matrixrtc = if state.settings.matrixrtc.enabled {
        matrixrtc::router()
    } else {
        Router::new()
    };
    Router::new()
        .merge(matrixrtc)
        .route("/", get(|| async { "OK" }))
        .route("/metrics", get(metrics::render))
        .route("/rtc", get(livekit::rtc))
        .route("/rtc/validate", get(livekit::validate))
        .route("/rtc/v1", get(livekit::rtc_v1))
        .route("/rtc/v1/validate", get(livekit::validate_v1))
        .layer(CorsLayer::very_permissive())
        .with_state(state)
}
