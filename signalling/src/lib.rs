//! Switchboard's wire protocols over one axum router: LiveKit signalling (`/rtc`, tokens,
//! data-packet routing), health (`/`) and Prometheus metrics (`/metrics`). Maps wire messages to
//! the media plane's API (`switchboard-sfu`) and back.

pub mod ids;
pub mod livekit;
pub mod matrixrtc;
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
    /// Resume (`reconnect=1`) bookkeeping, for `/metrics`.
    pub resumes: livekit::session::ResumeCounters,
    /// Checks Matrix OpenID tokens with users' homeservers.
    pub openid: matrixrtc::openid::OpenIdVerifier,
    /// Per-address rate limit of the MatrixRTC token endpoints.
    pub token_limiter: matrixrtc::Limiter,
    /// Delegated delayed-leave jobs (MSC4140).
    pub delegations: matrixrtc::delegation::Delegations,
    /// HTTP client for homeserver requests (bounded timeouts, rustls).
    pub http: reqwest::Client,
}

impl AppState {
    /// State for a server with these settings and media plane.
    pub fn new(settings: Settings, sfu: SfuHandle) -> Arc<Self> {
        let openid = matrixrtc::openid::OpenIdVerifier::new(&settings.matrixrtc.homeserver_urls);
        Arc::new(Self {
            openid,
            token_limiter: matrixrtc::limiter(),
            delegations: Default::default(),
            http: reqwest::Client::builder()
                .timeout(matrixrtc::openid::LOOKUP_TIMEOUT)
                .build()
                .unwrap_or_default(),
            settings,
            sfu,
            registry: livekit::room::Registry::default(),
            tasks: AtomicI64::new(0),
            resumes: Default::default(),
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
