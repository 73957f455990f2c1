//! Matrix-style errors of the authorisation endpoints: `{"errcode", "error"}` with the HTTP
//! status lk-jwt-service uses (`matrixrtc.md` §8.4).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why an authorisation request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthzError {
    /// Body is not JSON, not a JSON object of the expected shape, has unknown fields, or the
    /// content type is not JSON: 400 `M_NOT_JSON`.
    #[error("{0}")]
    NotJson(String),
    /// A required field is missing or empty, or fields contradict: 400 `M_BAD_JSON`.
    #[error("{0}")]
    BadJson(String),
    /// Body over the size limit: 413 `M_TOO_LARGE`.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The OpenID token could not be verified, or names another user: 401 `M_UNAUTHORIZED`.
    /// The detail is logged, never sent (no oracle).
    #[error("The request could not be authorised.")]
    Unauthorized(String),
    /// The user's homeserver has no full access: 403 `M_FORBIDDEN`.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests from this address: 429 `M_LIMIT_EXCEEDED`.
    #[error("Too many requests")]
    LimitExceeded,
    /// Token signing failed: 500 `M_UNKNOWN`.
    #[error("Internal Server Error")]
    Internal(String),
}

impl AuthzError {
    /// HTTP status and Matrix errcode.
    pub fn code(&self) -> (StatusCode, &'static str) {
        match self {
            AuthzError::NotJson(_) => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            AuthzError::BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            AuthzError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            AuthzError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
            AuthzError::Forbidden(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            AuthzError::LimitExceeded => (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            AuthzError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }
}

impl IntoResponse for AuthzError {
    fn into_response(self) -> Response {
        let (status, errcode) = self.code();
        match &self {
            AuthzError::Unauthorized(why) => tracing::info!(reason = %why, "openid check failed"),
            AuthzError::Internal(why) => tracing::error!(reason = %why, "token endpoint failed"),
            _ => tracing::debug!(error = %self, "token request refused"),
        }
        let body = serde_json::json!({ "errcode": errcode, "error": self.to_string() });
        (status, super::cors_headers(), axum::Json(body)).into_response()
    }
}
