//! MatrixRTC authorisation, lk-jwt-service compatible (`matrixrtc.md` §8.4–§8.6): a client
//! posts its Matrix OpenID token, Switchboard checks it with the user's homeserver and answers
//! `{url, jwt}`: a LiveKit token for the call's room, with the room name and identity derived
//! exactly as lk-jwt-service does. Users of full-access homeservers also create the room.
//!
//! Endpoints: `POST /sfu/get` (legacy, Element Call's own publishing), `POST /get_token`
//! (Matrix 2.0), `POST /delegate_delayed_leave` (MSC4140, full-access users), `GET|HEAD
//! /healthz`, `OPTIONS` on each (CORS). `delay_id` + `delay_timeout` on the token endpoints
//! delegate the delayed leave too, as lk-jwt-service does.

pub mod delegation;
pub mod derive;
pub mod error;
pub mod openid;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use livekit_api::access_token::{AccessToken, VideoGrants};
use serde::{Deserialize, Serialize};

pub use error::AuthzError;

use crate::AppState;

/// Largest accepted request body (bytes); real requests are under 2 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Lifetime of minted tokens (lk-jwt-service: 1 h).
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// A room created for a full-access user stays this long without anyone in it (s).
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(300);
/// ...and this long after its last participant left (s).
pub const DEPARTURE_TIMEOUT: Duration = Duration::from_secs(20);
/// Requests per second per client address, and the burst allowed.
pub const RATE_PER_SECOND: u32 = 5;
/// Burst of requests allowed above [`RATE_PER_SECOND`].
pub const RATE_BURST: u32 = 20;

/// Per-address rate limiter of the token endpoints.
pub type Limiter = DefaultKeyedRateLimiter<IpAddr>;

/// The MatrixRTC adapter's own state.
#[derive(Debug)]
pub struct MatrixRtcState {
    /// Checks Matrix OpenID tokens with users' homeservers.
    pub openid: openid::OpenIdVerifier,
    /// Per-address rate limit of the token endpoints.
    pub token_limiter: Limiter,
    /// Delegated delayed-leave jobs (MSC4140).
    pub delegations: delegation::Delegations,
    /// HTTP client for homeserver requests (bounded timeouts, rustls).
    pub http: reqwest::Client,
}

impl MatrixRtcState {
    /// State for these settings (homeserver URL overrides).
    pub fn new(settings: &switchboard_config::Settings) -> Self {
        Self {
            openid: openid::OpenIdVerifier::new(&settings.matrixrtc.homeserver_urls),
            token_limiter: limiter(),
            delegations: Default::default(),
            http: reqwest::Client::builder()
                .timeout(openid::LOOKUP_TIMEOUT)
                .build()
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "homeserver HTTP client without timeouts");
                    reqwest::Client::default()
                }),
        }
    }
}

/// The limiter with the default quota.
pub fn limiter() -> Limiter {
    let per_second = NonZeroU32::new(RATE_PER_SECOND).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(RATE_BURST).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

/// Routes of this module, merged into the main router when MatrixRTC is enabled.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/sfu/get", post(sfu_get).options(preflight))
        .route("/get_token", post(get_token).options(preflight))
        .route("/delegate_delayed_leave", post(delegate).options(preflight))
        .route(
            "/healthz",
            get(|| async { (cors_headers(), "OK") }).options(preflight),
        )
}

/// CORS headers on every answer (as lk-jwt-service).
pub fn cors_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, HEAD, OPTIONS"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization",
            ),
        ),
    ]
}

async fn preflight() -> impl IntoResponse {
    (StatusCode::OK, cors_headers())
}

/// An OpenID token as the client got it from `/openid/request_token`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenIdToken {
    /// The token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// The homeserver that issued it.
    pub matrix_server_name: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// `POST /sfu/get` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuGetRequest {
    /// Matrix room id.
    pub room: String,
    /// The caller's OpenID token.
    pub openid_token: OpenIdToken,
    /// The caller's Matrix device id (part of the LiveKit identity).
    pub device_id: String,
    /// MSC4140 delayed leave: the homeserver's delay id (with `delay_timeout`).
    pub delay_id: Option<String>,
    /// MSC4140 delayed leave: the delay in ms (with `delay_id`).
    pub delay_timeout: Option<u64>,
    /// Ignored, as by lk-jwt-service.
    pub delay_cs_api_url: Option<String>,
}

/// `member` of a `POST /get_token` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Member {
    /// MatrixRTC membership id.
    pub id: String,
    /// The user the membership claims; must be the OpenID token's user.
    pub claimed_user_id: String,
    /// The device the membership claims.
    pub claimed_device_id: String,
}

/// `POST /get_token` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GetTokenRequest {
    /// Matrix room id.
    pub room_id: String,
    /// Call slot, e.g. `m.call#ROOM`.
    pub slot_id: String,
    /// The caller's OpenID token.
    pub openid_token: OpenIdToken,
    /// The membership being joined.
    pub member: Member,
    /// MSC4140 delayed leave: the homeserver's delay id (with `delay_timeout`).
    pub delay_id: Option<String>,
    /// MSC4140 delayed leave: the delay in ms (with `delay_id`).
    pub delay_timeout: Option<u64>,
    /// Ignored, as by lk-jwt-service.
    pub delay_cs_api_url: Option<String>,
}

/// The answer: where to connect and with what.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// LiveKit WebSocket URL (`matrixrtc.public_url`).
    pub url: String,
    /// LiveKit access token.
    pub jwt: String,
}

async fn sfu_get(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle_sfu_get(state, req).await {
        Ok(r) => (cors_headers(), Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_token(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle_get_token(state, req).await {
        Ok(r) => (cors_headers(), Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delegate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match handle_delegate(state, req).await {
        Ok(()) => (cors_headers(), Json(serde_json::json!({}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle_sfu_get(state: Arc<AppState>, req: Request) -> Result<TokenResponse, AuthzError> {
    let body: SfuGetRequest = read_json(&state, req).await?;
    require(&body.room, "room")?;
    check_token_fields(&body.openid_token)?;
    let delay = delay_params(body.delay_id.as_deref(), body.delay_timeout)?;
    let user = verify(&state, &body.openid_token).await?;
    let room = derive::room_name(&body.room, derive::LEGACY_SLOT);
    let identity = derive::legacy_identity(&user, &body.device_id);
    let server = body.openid_token.matrix_server_name.clone();
    issue_and_delegate(state, &server, room, identity, delay).await
}

async fn handle_get_token(state: Arc<AppState>, req: Request) -> Result<TokenResponse, AuthzError> {
    let body: GetTokenRequest = read_json(&state, req).await?;
    let delay = delay_params(body.delay_id.as_deref(), body.delay_timeout)?;
    let (room, identity) = check_member_request(&state, &body).await?;
    let server = body.openid_token.matrix_server_name.clone();
    issue_and_delegate(state, &server, room, identity, delay).await
}

async fn handle_delegate(state: Arc<AppState>, req: Request) -> Result<(), AuthzError> {
    let body: GetTokenRequest = read_json(&state, req).await?;
    let delay = delay_params(body.delay_id.as_deref(), body.delay_timeout)?
        .ok_or_else(|| AuthzError::BadJson("missing delay_id and delay_timeout".into()))?;
    let (room, identity) = check_member_request(&state, &body).await?;
    let server = &body.openid_token.matrix_server_name;
    let job = delegation_job(&state, server, &room, &identity, delay, true).await?;
    state.matrixrtc.delegations.start(state.clone(), job);
    Ok(())
}

/// Mints the token and, when the request carried delay fields, delegates the delayed leave.
async fn issue_and_delegate(
    state: Arc<AppState>,
    server: &str,
    room: String,
    identity: String,
    delay: Option<(String, Duration)>,
) -> Result<TokenResponse, AuthzError> {
    let job = match delay {
        Some(d) => Some(delegation_job(&state, server, &room, &identity, d, false).await?),
        None => None,
    };
    let resp = issue(&state, server, room, identity)?;
    if let Some(job) = job {
        state.matrixrtc.delegations.start(state.clone(), job);
    }
    Ok(resp)
}

/// `delay_id` and `delay_timeout` (ms, > 0) come together or not at all.
fn delay_params(
    delay_id: Option<&str>,
    delay_timeout: Option<u64>,
) -> Result<Option<(String, Duration)>, AuthzError> {
    match (delay_id, delay_timeout) {
        (None, None) => Ok(None),
        (Some(id), Some(ms)) if !id.is_empty() && ms > 0 => {
            Ok(Some((id.to_string(), Duration::from_millis(ms))))
        }
        _ => Err(AuthzError::BadJson(
            "delay_id and delay_timeout (ms, > 0) go together".into(),
        )),
    }
}

/// A delegation job, for users of full-access homeservers only (`forbidden`: refuse others
/// with 403 as `/delegate_delayed_leave` does; else 400 as the token endpoints do).
async fn delegation_job(
    state: &AppState,
    server_name: &str,
    room: &str,
    identity: &str,
    (delay_id, delay): (String, Duration),
    forbidden: bool,
) -> Result<delegation::Job, AuthzError> {
    if !state.settings.matrixrtc.is_full_access(server_name) {
        let why = "delayed leave delegation is only for users of full-access homeservers";
        return Err(if forbidden {
            AuthzError::Forbidden(why.into())
        } else {
            AuthzError::BadJson(why.into())
        });
    }
    let cs_api = delegation::cs_api_url(state, server_name)
        .await
        .ok_or_else(|| AuthzError::BadJson("Unable to resolve client-server API".into()))?;
    Ok(delegation::Job {
        room: room.into(),
        identity: identity.into(),
        delay_id,
        delay,
        cs_api,
    })
}

/// Checks a `/get_token`-shaped body and its OpenID token; returns (room, identity).
async fn check_member_request(
    state: &AppState,
    body: &GetTokenRequest,
) -> Result<(String, String), AuthzError> {
    require(&body.room_id, "room_id")?;
    require(&body.slot_id, "slot_id")?;
    require(&body.member.id, "member.id")?;
    require(&body.member.claimed_user_id, "member.claimed_user_id")?;
    require(&body.member.claimed_device_id, "member.claimed_device_id")?;
    check_token_fields(&body.openid_token)?;
    let user = verify(state, &body.openid_token).await?;
    if user != body.member.claimed_user_id {
        return Err(AuthzError::Unauthorized(format!(
            "token of {user} used for member claiming {}",
            body.member.claimed_user_id
        )));
    }
    let room = derive::room_name(&body.room_id, &body.slot_id);
    let identity = derive::member_identity(&user, &body.member.claimed_device_id, &body.member.id);
    Ok((room, identity))
}

/// Rate limit, content type, size, JSON shape (unknown fields refused).
async fn read_json<T: for<'de> Deserialize<'de>>(
    state: &AppState,
    req: Request,
) -> Result<T, AuthzError> {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if state.matrixrtc.token_limiter.check_key(&ip).is_err() {
        return Err(AuthzError::LimitExceeded);
    }
    if req.method() != Method::POST {
        return Err(AuthzError::NotJson("POST expected".into()));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/json") {
            return Err(AuthzError::NotJson(
                "Content-Type must be application/json".into(),
            ));
        }
    }
    let body: Body = req.into_body();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| AuthzError::TooLarge(MAX_BODY_BYTES))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AuthzError::NotJson(format!("Error reading request: {e}")))
}

fn require(value: &str, name: &str) -> Result<(), AuthzError> {
    if value.is_empty() {
        return Err(AuthzError::BadJson(format!("missing {name}")));
    }
    Ok(())
}

fn check_token_fields(t: &OpenIdToken) -> Result<(), AuthzError> {
    require(&t.access_token, "openid_token.access_token")?;
    require(&t.matrix_server_name, "openid_token.matrix_server_name")
}

async fn verify(state: &AppState, t: &OpenIdToken) -> Result<String, AuthzError> {
    state
        .matrixrtc
        .openid
        .verify(&t.access_token, &t.matrix_server_name)
        .await
        .map_err(AuthzError::Unauthorized)
}

/// Mints the LiveKit token and, for full-access users, creates the room.
fn issue(
    state: &AppState,
    server_name: &str,
    room: String,
    identity: String,
) -> Result<TokenResponse, AuthzError> {
    let m = &state.settings.matrixrtc;
    let (key, secret) = state
        .settings
        .keys
        .iter()
        .next()
        .ok_or_else(|| AuthzError::Internal("no API key configured".into()))?;
    let grants = VideoGrants {
        room_join: true,
        room: room.clone(),
        can_publish: Some(true),
        can_subscribe: Some(true),
        can_update_own_metadata: Some(true),
        ..Default::default()
    };
    let jwt = AccessToken::with_api_key(key, secret)
        .with_identity(&identity)
        .with_grants(grants)
        .with_ttl(TOKEN_TTL)
        .to_jwt()
        .map_err(|e| AuthzError::Internal(format!("signing token: {e}")))?;
    if m.is_full_access(server_name) {
        state
            .rooms
            .create(&room.as_str().into(), EMPTY_TIMEOUT, DEPARTURE_TIMEOUT);
    }
    tracing::info!(%room, %identity, server = server_name, "token issued");
    Ok(TokenResponse {
        url: m.public_url.clone(),
        jwt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_fields_come_together_or_not_at_all() {
        assert_eq!(delay_params(None, None).unwrap(), None);
        assert_eq!(
            delay_params(Some("syd_a"), Some(10_000)).unwrap(),
            Some(("syd_a".to_string(), Duration::from_secs(10)))
        );
        for (id, t) in [
            (Some("syd_a"), None),
            (None, Some(5)),
            (Some("x"), Some(0)),
            (Some(""), Some(5)),
        ] {
            assert!(
                matches!(delay_params(id, t), Err(AuthzError::BadJson(_))),
                "{id:?} {t:?}"
            );
        }
    }
}
