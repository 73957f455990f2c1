//! Identifiers of rooms, participants and tracks as the signalling layer knows them: the names
//! a token gives (`RoomName`, `ParticipantIdentity`, opaque strings) and the sids the server
//! hands out (`RM_`, `PA_`, `TR_` followed by 12 random base62 characters, LiveKit's form;
//! clients check only the prefix). The media plane's own ids (`ParticipantId`, `TrackId`) are
//! `switchboard-sfu`'s.

use std::borrow::Borrow;
use std::fmt;

use rand::distr::{Alphanumeric, SampleString};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

string_id!(
    /// A room's name: the opaque string of the token's `video.room`.
    RoomName
);
string_id!(
    /// A participant's identity: the token's `sub`, verbatim. Unique within a room.
    ParticipantIdentity
);
string_id!(
    /// A room sid, `RM_…`.
    RoomSid
);
string_id!(
    /// A participant sid, `PA_…`: one per join (a rejoin with the same identity gets a new one).
    ParticipantSid
);
string_id!(
    /// A track sid, `TR_…`.
    TrackSid
);

fn suffix() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 12)
}

impl RoomSid {
    /// A fresh room sid.
    pub fn generate() -> Self {
        Self(format!("RM_{}", suffix()))
    }
}

impl ParticipantSid {
    /// A fresh participant sid.
    pub fn generate() -> Self {
        Self(format!("PA_{}", suffix()))
    }
}

impl TrackSid {
    /// A fresh track sid.
    pub fn generate() -> Self {
        Self(format!("TR_{}", suffix()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_livekit_prefixes_and_differ() {
        assert!(RoomSid::generate().as_str().starts_with("RM_"));
        assert!(ParticipantSid::generate().as_str().starts_with("PA_"));
        let (a, b) = (TrackSid::generate(), TrackSid::generate());
        assert!(a.as_str().starts_with("TR_") && a.as_str().len() == 15);
        assert_ne!(a, b);
    }
}
