//! LiveKit room names and participant identities exactly as lk-jwt-service ≥ 0.4.3 (and
//! MSC4195) derive them (`matrixrtc.md` §8.3): standard-alphabet base64 without padding of the
//! SHA-256 of the canonical JSON of an array of strings. Clients compute the same values to map
//! E2EE keys to participants, so a mismatch makes media undecryptable.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The slot `/sfu/get` uses (Element Call's legacy room call).
pub const LEGACY_SLOT: &str = "m.call#ROOM";

/// `unpaddedB64(SHA256(canonicalJSON(parts)))`.
///
/// Canonical JSON of an array of strings is its compact form; `serde_json` writes non-ASCII as
/// UTF-8 and escapes only `"`, `\` and control characters, as canonical JSON requires.
pub fn hash_parts(parts: &[&str]) -> String {
    let json = serde_json::to_string(parts).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
}

/// LiveKit room name of a Matrix room's call slot.
pub fn room_name(room_id: &str, slot_id: &str) -> String {
    hash_parts(&[room_id, slot_id])
}

/// LiveKit identity for `/get_token`: the hashed (user, device, member) triple.
pub fn member_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hash_parts(&[user_id, device_id, member_id])
}

/// LiveKit identity for `/sfu/get`: `"{mxid}:{device_id}"`, unhashed.
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_name_matches_lk_jwt_service_vector() {
        assert_eq!(
            room_name("!roomid:example.com", "slot1234"),
            "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
        );
    }

    #[test]
    fn three_part_hash_matches_vector() {
        assert_eq!(
            hash_parts(&["!roomid:example.com", "slot123", "random123"]),
            "IMeDd+K3MIqJTI20EXBIrepKkhhORvf3q8fx3rlrhTk"
        );
    }

    #[test]
    fn member_identity_matches_vector() {
        assert_eq!(
            member_identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
    }

    #[test]
    fn legacy_slot_room_name_matches_vector() {
        assert_eq!(
            room_name("!roomid:example.com", LEGACY_SLOT),
            "F4oOprKFBq6JHqy2qYpq6UQQmR7hCvxkQQoUrd0+SbI"
        );
    }

    #[test]
    fn legacy_identity_is_mxid_colon_device() {
        assert_eq!(
            legacy_identity("@alice:example.org", "ABCDEF"),
            "@alice:example.org:ABCDEF"
        );
    }

    #[test]
    fn non_ascii_is_hashed_as_utf8_not_escaped() {
        // Canonical JSON keeps "é" as UTF-8; an escaping encoder would give another hash.
        let direct = {
            let digest = Sha256::digest("[\"!é:x\",\"s\"]".as_bytes());
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        };
        assert_eq!(room_name("!é:x", "s"), direct);
    }
}
