//! The LiveKit client protocol: `/rtc` (WebSocket signalling, two peer connections),
//! `/rtc/validate`, and `/rtc/v1*` (answered 404 while single-PC mode is not offered, which makes
//! every SDK fall back to `/rtc`). Tokens are checked before any upgrade.

pub mod data;
pub mod room;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::token::{self, AuthError, JoinGrant};
use crate::AppState;

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
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = match self {
            ConnectError::Auth(_) => StatusCode::UNAUTHORIZED,
            ConnectError::NoRoom => StatusCode::NOT_FOUND,
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
        && !state.registry.exists(grant.room())
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
    };
    let max = state.settings.rtc.max_signal_message_bytes;
    ws.max_message_size(max)
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

/// `/rtc/v1` and `/rtc/v1/validate`: 404 with CORS, so SDKs fall back to `/rtc`.
pub async fn v1_not_offered() -> Response {
    (
        StatusCode::NOT_FOUND,
        cors(),
        "single peer connection mode not offered",
    )
        .into_response()
}
