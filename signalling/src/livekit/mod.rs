//! The LiveKit client protocol: `/rtc` (WebSocket signalling, two peer connections), `/rtc/v1`
//! (one peer connection, `join_request` in the query), and their `validate` twins. Tokens and
//! join requests are checked before any upgrade; with `rtc.v1_enabled = false` the v1 paths
//! answer 404, which makes every SDK fall back to `/rtc`. Rooms and participants are the
//! roster's (`crate::rooms`); this adapter renders them (`render`) and keeps only what is
//! LiveKit's own: its session tasks, their inboxes for resumes, and resume counts.

pub mod data;
pub mod join_request;
pub mod link;
pub mod render;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::token::{self, AuthError, JoinGrant};
use crate::AppState;

/// The LiveKit adapter's own state.
#[derive(Debug, Default)]
pub struct LiveKitState {
    /// Signalling session tasks alive.
    pub tasks: AtomicI64,
    /// Resume (`reconnect=1`) bookkeeping, for `/metrics`.
    pub resumes: session::ResumeCounters,
    /// Every live session's inbox, for resumes.
    pub sessions: session::Sessions,
}

/// Why a connect request is refused, mapped to the HTTP status clients interpret
/// (`livekit-protocol.md` §1.1).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Token missing or invalid: 401.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Room missing and neither auto-create nor `roomCreate`: 404 with LiveKit's wording.
    #[error("requested room does not exist")]
    NoRoom,
    /// `/rtc/v1` with a missing or undecodable `join_request`: 400.
    #[error(transparent)]
    JoinRequest(#[from] join_request::JoinRequestError),
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = match self {
            ConnectError::Auth(_) => StatusCode::UNAUTHORIZED,
            ConnectError::NoRoom => StatusCode::NOT_FOUND,
            ConnectError::JoinRequest(_) => StatusCode::BAD_REQUEST,
        };
        (status, cors(), self.to_string()).into_response()
    }
}

fn cors() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    )]
}

/// Token from `Authorization: Bearer` (preferred, as LiveKit) or `access_token`.
fn token_from(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<String, AuthError> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Ok(t.trim().to_string());
        }
    }
    query
        .get("access_token")
        .filter(|t| !t.is_empty())
        .cloned()
        .ok_or(AuthError::Missing)
}

fn authorise(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<JoinGrant, ConnectError> {
    let jwt = token_from(headers, query)?;
    let grant = token::verify_join(&jwt, &state.settings.keys)?;
    if !state.settings.rooms.auto_create
        && !grant.claims.video.room_create
        && !state.rooms.exists(&grant.room().into())
    {
        return Err(ConnectError::NoRoom);
    }
    Ok(grant)
}

fn flag(query: &HashMap<String, String>, name: &str, default: bool) -> bool {
    match query.get(name).map(String::as_str) {
        None => default,
        Some(v) => v == "1" || v.eq_ignore_ascii_case("true"),
    }
}

/// Bytes of a signalling WebSocket's read buffer (tungstenite's default is 128 KiB, resident
/// for every connected participant).
const SIGNAL_READ_BUFFER_BYTES: usize = 16 * 1024;

/// `GET /rtc`: WebSocket upgrade after the token check.
pub async fn rtc(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let grant = match authorise(&state, &headers, &query) {
        Ok(g) => g,
        Err(e) => {
            tracing::info!(error = %e, "connect refused");
            return e.into_response();
        }
    };
    let Ok(ws) = ws else {
        return (StatusCode::NOT_FOUND, "websocket upgrade expected").into_response();
    };
    let opts = session::ConnectOptions {
        auto_subscribe: flag(&query, "auto_subscribe", true),
        protocol: query
            .get("protocol")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        client_protocol: query
            .get("client_protocol")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        reconnect: flag(&query, "reconnect", false),
        resume_sid: query.get("sid").filter(|s| !s.is_empty()).cloned(),
        single_pc: false,
        initial: None,
    };
    upgrade(state, ws, grant, opts)
}

/// Upgrades to the signalling WebSocket, capped at `rtc.max_signal_message_bytes`.
fn upgrade(
    state: Arc<AppState>,
    ws: WebSocketUpgrade,
    grant: JoinGrant,
    opts: session::ConnectOptions,
) -> Response {
    let max = state.settings.rtc.max_signal_message_bytes;
    // The read buffer is resident per connection (tungstenite zero-fills it); signalling
    // messages are mostly < 4 KiB and larger ones are assembled from several reads.
    ws.read_buffer_size(SIGNAL_READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(state, socket, grant, opts))
}

/// `GET /rtc/validate`: the same checks as `/rtc`, `200 success` when they pass.
pub async fn validate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match authorise(&state, &headers, &query) {
        Ok(_) => (StatusCode::OK, cors(), "success").into_response(),
        Err(e) => e.into_response(),
    }
}

fn v1_not_offered() -> Response {
    (
        StatusCode::NOT_FOUND,
        cors(),
        "single peer connection mode not offered",
    )
        .into_response()
}

fn authorise_v1(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(JoinGrant, livekit_protocol::JoinRequest), ConnectError> {
    let grant = authorise(state, headers, query)?;
    let jr = join_request::decode(query.get("join_request").map_or("", String::as_str))?;
    Ok((grant, jr))
}

/// `GET /rtc/v1`: single-peer-connection signalling (WebSocket upgrade after the token and
/// `join_request` checks); 404 when `rtc.v1_enabled` is off.
pub async fn rtc_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !state.settings.rtc.v1_enabled {
        return v1_not_offered();
    }
    let (grant, jr) = match authorise_v1(&state, &headers, &query) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(error = %e, "connect refused");
            return e.into_response();
        }
    };
    let Ok(ws) = ws else {
        return (StatusCode::NOT_FOUND, "websocket upgrade expected").into_response();
    };
    let info = jr.client_info.clone().unwrap_or_default();
    let opts = session::ConnectOptions {
        auto_subscribe: jr
            .connection_settings
            .as_ref()
            .map(|c| c.auto_subscribe)
            .unwrap_or(true),
        protocol: info.protocol,
        client_protocol: info.client_protocol,
        reconnect: jr.reconnect,
        resume_sid: Some(jr.participant_sid.clone()).filter(|s| !s.is_empty()),
        single_pc: true,
        initial: Some(jr),
    };
    upgrade(state, ws, grant, opts)
}

/// `GET /rtc/v1/validate`: the checks of `/rtc/v1`, `200 success` when they pass.
pub async fn validate_v1(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !state.settings.rtc.v1_enabled {
        return v1_not_offered();
    }
    match authorise_v1(&state, &headers, &query) {
        Ok(_) => (StatusCode::OK, cors(), "success").into_response(),
        Err(e) => e.into_response(),
    }
}
