//! Decoding of `/rtc/v1`'s `join_request` query parameter: base64 (URL-safe as the SDKs send
//! it; padded or not; standard alphabet accepted too) of a `WrappedJoinRequest`, whose
//! `join_request` bytes are a `JoinRequest`, gzip-compressed when `compression = GZIP`.

use std::io::Read;

use base64::Engine as _;
use flate2::read::GzDecoder;
use livekit_protocol as proto;
use prost::Message;

/// Largest `JoinRequest` accepted, raw or after decompression (LiveKit: 1 MiB).
pub const MAX_JOIN_REQUEST_BYTES: usize = 1 << 20;

/// Why a `join_request` parameter was refused (HTTP 400 with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinRequestError {
    /// `/rtc/v1` without `join_request`.
    #[error("missing join_request")]
    Missing,
    /// Not base64 in any accepted form.
    #[error("join_request is not base64")]
    Base64,
    /// Not a `WrappedJoinRequest` / `JoinRequest` protobuf.
    #[error("join_request is not a valid JoinRequest: {0}")]
    Protobuf(String),
    /// Unknown compression value or a broken gzip stream.
    #[error("join_request compression: {0}")]
    Compression(String),
    /// Over [`MAX_JOIN_REQUEST_BYTES`].
    #[error("join_request larger than {MAX_JOIN_REQUEST_BYTES} bytes")]
    TooLarge,
}

/// Decodes the parameter's value (already percent-decoded).
pub fn decode(param: &str) -> Result<proto::JoinRequest, JoinRequestError> {
    if param.is_empty() {
        return Err(JoinRequestError::Missing);
    }
    // Form decoding turns an unescaped '+' into ' '.
    let text = param.trim().replace(' ', "+");
    if text.len() > MAX_JOIN_REQUEST_BYTES * 4 / 3 + 4 {
        return Err(JoinRequestError::TooLarge);
    }
    let unpadded = text.trim_end_matches('=');
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let raw = URL_SAFE_NO_PAD
        .decode(unpadded)
        .or_else(|_| STANDARD_NO_PAD.decode(unpadded))
        .map_err(|_| JoinRequestError::Base64)?;
    let wrapped = proto::WrappedJoinRequest::decode(raw.as_slice())
        .map_err(|e| JoinRequestError::Protobuf(e.to_string()))?;
    use proto::wrapped_join_request::Compression;
    let inner = match Compression::try_from(wrapped.compression) {
        Ok(Compression::None) => wrapped.join_request,
        Ok(Compression::Gzip) => {
            let mut out = Vec::new();
            GzDecoder::new(wrapped.join_request.as_slice())
                .take(MAX_JOIN_REQUEST_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| JoinRequestError::Compression(e.to_string()))?;
            out
        }
        Err(_) => {
            return Err(JoinRequestError::Compression(format!(
                "unknown compression {}",
                wrapped.compression
            )))
        }
    };
    if inner.len() > MAX_JOIN_REQUEST_BYTES {
        return Err(JoinRequestError::TooLarge);
    }
    proto::JoinRequest::decode(inner.as_slice())
        .map_err(|e| JoinRequestError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn request() -> proto::JoinRequest {
        proto::JoinRequest {
            client_info: Some(proto::ClientInfo {
                protocol: 18,
                ..Default::default()
            }),
            connection_settings: Some(proto::ConnectionSettings {
                auto_subscribe: true,
                ..Default::default()
            }),
            publisher_offer: Some(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0\r\n".into(),
                id: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn wrap(gzip: bool) -> Vec<u8> {
        let inner = request().encode_to_vec();
        let (compression, bytes) = if gzip {
            let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&inner).unwrap();
            (1, enc.finish().unwrap())
        } else {
            (0, inner)
        };
        proto::WrappedJoinRequest {
            compression,
            join_request: bytes,
        }
        .encode_to_vec()
    }

    #[test]
    fn gzip_join_request_with_padding_decodes() {
        let jr = decode(&URL_SAFE.encode(wrap(true))).unwrap();
        assert_eq!(jr.client_info.unwrap().protocol, 18);
        assert_eq!(jr.publisher_offer.unwrap().id, 1);
    }

    #[test]
    fn uncompressed_join_request_without_padding_decodes() {
        let jr = decode(&URL_SAFE_NO_PAD.encode(wrap(false))).unwrap();
        assert!(jr.connection_settings.unwrap().auto_subscribe);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(decode("").unwrap_err(), JoinRequestError::Missing);
        assert_eq!(decode("%%%").unwrap_err(), JoinRequestError::Base64);
        assert!(matches!(
            decode(&URL_SAFE.encode([0xff, 0xff, 0xff])),
            Err(JoinRequestError::Protobuf(_))
        ));
    }

    #[test]
    fn broken_gzip_is_refused() {
        let w = proto::WrappedJoinRequest {
            compression: 1,
            join_request: vec![1, 2, 3],
        };
        assert!(matches!(
            decode(&URL_SAFE.encode(w.encode_to_vec())),
            Err(JoinRequestError::Compression(_))
        ));
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let big = vec![0u8; MAX_JOIN_REQUEST_BYTES + 10];
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&big).unwrap();
        let w = proto::WrappedJoinRequest {
            compression: 1,
            join_request: enc.finish().unwrap(),
        };
        assert_eq!(
            decode(&URL_SAFE.encode(w.encode_to_vec())).unwrap_err(),
            JoinRequestError::TooLarge
        );
    }
}
