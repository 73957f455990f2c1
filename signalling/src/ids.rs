//! LiveKit wire ids: `RM_`, `PA_`, `TR_` followed by 12 random base62 characters (LiveKit's
//! form; clients check only the prefix).

use rand::distr::{Alphanumeric, SampleString};

fn suffix() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 12)
}

/// A room sid, `RM_…`.
pub fn room_sid() -> String {
    format!("RM_{}", suffix())
}

/// A participant sid, `PA_…`.
pub fn participant_sid() -> String {
    format!("PA_{}", suffix())
}

/// A track sid, `TR_…`.
pub fn track_sid() -> String {
    format!("TR_{}", suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_livekit_prefixes_and_differ() {
        assert!(room_sid().starts_with("RM_"));
        assert!(participant_sid().starts_with("PA_"));
        let (a, b) = (track_sid(), track_sid());
        assert!(a.starts_with("TR_") && a.len() == 15);
        assert_ne!(a, b);
    }
}
