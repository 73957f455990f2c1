//! LiveKit access tokens (JWT, HS256): verification before a WebSocket upgrade, and minting of
//! refreshed tokens. Claims and grants are `livekit-api`'s types (LiveKit `ClaimGrants`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use livekit_api::access_token::{AccessToken, Claims, TokenVerifier};

/// Why a token was refused. Each maps to HTTP 401 with the message as body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `access_token` query parameter and no `Authorization: Bearer` header.
    #[error("no access token")]
    Missing,
    /// Not a JWT, or its payload is not JSON.
    #[error("malformed access token")]
    Malformed,
    /// `iss` names no configured API key.
    #[error("unknown API key {0:?}")]
    UnknownKey(String),
    /// Signature, algorithm, `exp` or `nbf` check failed (the text says which).
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// The token has no `video.roomJoin` grant.
    #[error("token has no roomJoin grant")]
    NoRoomJoin,
    /// `video.room` is empty or over 256 bytes.
    #[error("token names no valid room")]
    NoRoom,
    /// `sub` (the identity) is empty or over 256 bytes.
    #[error("token has no valid identity (sub)")]
    NoIdentity,
}

/// A verified join token.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// The API key that signed it (`iss`).
    pub api_key: String,
    /// All claims.
    pub claims: Claims,
}

impl JoinGrant {
    /// Participant identity: the token's `sub`, verbatim.
    pub fn identity(&self) -> &str {
        &self.claims.sub
    }

    /// Room name from `video.room`, verbatim (opaque).
    pub fn room(&self) -> &str {
        &self.claims.video.room
    }
}

/// Checks a join token against the configured keys: HS256, known issuer, `exp`/`nbf` (60 s
/// leeway, as jsonwebtoken's default), `video.roomJoin`, `video.room`, `sub`.
pub fn verify_join(token: &str, keys: &BTreeMap<String, String>) -> Result<JoinGrant, AuthError> {
    let issuer = unverified_issuer(token)?;
    let secret = keys
        .get(&issuer)
        .ok_or_else(|| AuthError::UnknownKey(issuer.clone()))?;
    let claims = TokenVerifier::with_api_key(&issuer, secret)
        .verify(token)
        .map_err(|e| AuthError::Invalid(describe(&e)))?;
    if !claims.video.room_join {
        return Err(AuthError::NoRoomJoin);
    }
    if claims.video.room.is_empty() || claims.video.room.len() > 256 {
        return Err(AuthError::NoRoom);
    }
    if claims.sub.is_empty() || claims.sub.len() > 256 {
        return Err(AuthError::NoIdentity);
    }
    Ok(JoinGrant {
        api_key: issuer,
        claims,
    })
}

/// Mints a token with the same claims, valid for `max(10 min, what the original had left)`
/// (LiveKit's refresh rule), signed with the same key.
pub fn refresh(grant: &JoinGrant, keys: &BTreeMap<String, String>) -> Option<String> {
    let secret = keys.get(&grant.api_key)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let left = (grant.claims.exp as u64).saturating_sub(now);
    let ttl = Duration::from_secs(left.max(600));
    let c = &grant.claims;
    let mut token = AccessToken::with_api_key(&grant.api_key, secret)
        .with_identity(&c.sub)
        .with_name(&c.name)
        .with_metadata(&c.metadata)
        .with_grants(c.video.clone())
        .with_ttl(ttl);
    if !c.attributes.is_empty() {
        token = token.with_attributes(c.attributes.clone());
    }
    token.to_jwt().ok()
}

fn describe(e: &livekit_api::access_token::AccessTokenError) -> String {
    use livekit_api::access_token::AccessTokenError;
    match e {
        AccessTokenError::Encoding(inner) => {
            use jsonwebtoken::errors::ErrorKind;
            match inner.kind() {
                ErrorKind::ExpiredSignature => "token expired".into(),
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
                ErrorKind::InvalidSignature => "bad signature".into(),
                ErrorKind::InvalidAlgorithm => "algorithm must be HS256".into(),
                ErrorKind::InvalidIssuer => "issuer mismatch".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
                other => format!("{other:?}"),
            }
        }
        other => other.to_string(),
    }
}

/// Reads `iss` from the payload without verifying, to choose the secret.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    #[derive(serde::Deserialize)]
    struct Iss {
        #[serde(default)]
        iss: String,
    }
    let iss: Iss = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    Ok(iss.iss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::VideoGrants;

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([("devkey".to_string(), "secret".to_string())])
    }

    fn token(key: &str, secret: &str, grants: VideoGrants, ttl: Duration) -> String {
        AccessToken::with_api_key(key, secret)
            .with_identity("@alice:example.org:DEVICE")
            .with_grants(grants)
            .with_ttl(ttl)
            .to_jwt()
            .unwrap()
    }

    fn join(room: &str) -> VideoGrants {
        VideoGrants {
            room_join: true,
            room: room.into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_token_yields_identity_and_room_verbatim() {
        let t = token(
            "devkey",
            "secret",
            join("!abc:example.org"),
            Duration::from_secs(60),
        );
        let g = verify_join(&t, &keys()).unwrap();
        assert_eq!(g.identity(), "@alice:example.org:DEVICE");
        assert_eq!(g.room(), "!abc:example.org");
    }

    #[test]
    fn wrong_secret_is_refused() {
        let t = token("devkey", "other", join("r"), Duration::from_secs(60));
        assert_eq!(
            verify_join(&t, &keys()).unwrap_err(),
            AuthError::Invalid("bad signature".into())
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let t = token("nokey", "secret", join("r"), Duration::from_secs(60));
        assert_eq!(
            verify_join(&t, &keys()).unwrap_err(),
            AuthError::UnknownKey("nokey".into())
        );
    }

    /// Signs arbitrary claims (for tokens `AccessToken` refuses to mint).
    fn forge(claims: serde_json::Value) -> String {
        // Minting once installs the HMAC provider jsonwebtoken needs.
        token("devkey", "secret", join("r"), Duration::from_secs(60));
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .expect("HS256 signing")
    }

    #[test]
    fn expired_token_is_refused() {
        let t = forge(serde_json::json!({
            "iss": "devkey", "sub": "a", "nbf": 0, "exp": 1_000_000,
            "video": {"roomJoin": true, "room": "r"}
        }));
        assert_eq!(
            verify_join(&t, &keys()).unwrap_err(),
            AuthError::Invalid("token expired".into())
        );
    }

    #[test]
    fn token_without_exp_is_refused() {
        let t = forge(serde_json::json!({
            "iss": "devkey", "sub": "a", "video": {"roomJoin": true, "room": "r"}
        }));
        assert_eq!(
            verify_join(&t, &keys()).unwrap_err(),
            AuthError::Invalid("missing claim exp".into())
        );
    }

    #[test]
    fn token_without_room_join_is_refused() {
        let g = VideoGrants {
            room: "r".into(),
            ..Default::default()
        };
        let t = token("devkey", "secret", g, Duration::from_secs(60));
        assert_eq!(verify_join(&t, &keys()).unwrap_err(), AuthError::NoRoomJoin);
    }

    #[test]
    fn token_without_room_is_refused() {
        let t = forge(serde_json::json!({
            "iss": "devkey", "sub": "a", "exp": 4_000_000_000u64,
            "video": {"roomJoin": true, "room": ""}
        }));
        assert_eq!(verify_join(&t, &keys()).unwrap_err(), AuthError::NoRoom);
    }

    #[test]
    fn token_without_identity_is_refused() {
        let t = forge(serde_json::json!({
            "iss": "devkey", "exp": 4_000_000_000u64,
            "video": {"roomJoin": true, "room": "r"}
        }));
        assert_eq!(verify_join(&t, &keys()).unwrap_err(), AuthError::NoIdentity);
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            verify_join("abc", &keys()).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            verify_join("a.!!!.c", &keys()).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn refreshed_token_verifies_with_same_grants() {
        let t = token(
            "devkey",
            "secret",
            join("room/1+x="),
            Duration::from_secs(60),
        );
        let g = verify_join(&t, &keys()).unwrap();
        let r = refresh(&g, &keys()).unwrap();
        let g2 = verify_join(&r, &keys()).unwrap();
        assert_eq!(g2.room(), "room/1+x=");
        assert!(g2.claims.exp >= g.claims.exp);
    }
}
