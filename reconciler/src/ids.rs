//! Typed identifiers. Strings from clients or Docker become one of these at the edge, or are refused.
//!
//! Session ids are generated here from 128 random bits; every id that comes back in is validated before use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A session id must be exactly 32 lowercase hex digits.
    #[error("invalid session id: expected 32 lowercase hex digits")]
    Session,
    /// A container id must be 12 to 64 lowercase hex digits.
    #[error("invalid container id: expected 12 to 64 lowercase hex digits")]
    Container,
    /// A name (instance, profile) must be 1 to 63 of `[a-z0-9-_]`, starting with a letter or digit.
    #[error(
        "invalid {kind} {value:?}: use 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    Name {
        /// Which kind of name was rejected.
        kind: &'static str,
        /// The rejected value, truncated to 64 characters.
        value: String,
    },
    /// The operating system's random source failed.
    #[error("random source unavailable: {0}")]
    Random(String),
}

/// A session's identity: 128 random bits chosen by berth, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// Draws a fresh id from the operating system's random source.
    ///
    /// # Errors
    /// Fails only when the random source is unavailable.
    pub fn generate() -> Result<Self, IdError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| IdError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// Builds an id from raw bytes (tests and simulations).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for SessionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(IdError::Session);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| IdError::Session)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A Docker container id (full or short), as Docker reports it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    /// The id as Docker spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as `docker ps` shows them.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl FromStr for ContainerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(12..=64).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(IdError::Container);
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContainerId({})", self.short())
    }
}

fn valid_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

/// The longest name kept inline in a [`Name`].
const INLINE: usize = 22;

/// A validated name's characters: inline when it is short (as berth's generated instance ids and the usual
/// profile names are), else on the heap. The same size as a `String`, so a container's labels do not grow, and two
/// short names compare without following a pointer: the planner compares every container's owner with its own
/// on each pass, and reading the owner from the heap was a cache miss per container (decision 0027).
///
/// A name has one representation (inline exactly when it fits), so equal names have equal values.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    /// Up to [`INLINE`] bytes; the rest are zero.
    Inline {
        /// How many of `bytes` are the name's.
        len: u8,
        /// The name, zero-padded.
        bytes: [u8; INLINE],
    },
    /// A longer name.
    Heap(Box<str>),
}

impl Name {
    /// `s` must be valid (ASCII, at most 63 bytes).
    fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at its own length, so always UTF-8.
            Self::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Self::Heap(s) => s,
        }
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    /// The names' order as strings.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Name);

        impl $name {
            /// The validated name.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if valid_name(s) {
                    Ok(Self(Name::new(s)))
                } else {
                    Err(IdError::Name { kind: $kind, value: s.chars().take(64).collect() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.as_str())
            }
        }
    };
}

name_type!(
    /// The identity of one berth replica, stamped on every container it creates. Stable across restarts.
    InstanceId,
    "instance id"
);
name_type!(
    /// The name of a session profile in the policy.
    ProfileName,
    "profile name"
);

impl ProfileName {
    /// The profile named `default`.
    pub fn default_name() -> Self {
        Self(Name::new("default"))
    }
}

macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_str!(SessionId, ContainerId, InstanceId, ProfileName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_session_ids_round_trip_and_differ() {
        let a = SessionId::generate().expect("random");
        let b = SessionId::generate().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<SessionId>(), Ok(a));
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn session_ids_reject_anything_but_32_lowercase_hex() {
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"a".repeat(33),
            "0123456789abcdef0123456789abcde.",
            "../../etc/passwd",
        ] {
            assert_eq!(bad.parse::<SessionId>(), Err(IdError::Session), "{bad:?}");
        }
    }

    #[test]
    fn container_ids_must_be_hex() {
        assert!("0123456789ab".parse::<ContainerId>().is_ok());
        assert!("berth-x".parse::<ContainerId>().is_err());
        assert!("0123456789a".parse::<ContainerId>().is_err());
    }

    #[test]
    fn short_and_long_names_read_back_compare_and_order_as_their_strings() {
        // Around the inline bound: 21, 22 and 23 characters, and the longest valid name.
        let texts = ["a", "a-", "a0", "b", &"x".repeat(21), &"x".repeat(22), &"x".repeat(23), &"y".repeat(63)];
        let names: Vec<InstanceId> = texts.iter().map(|t| t.parse().expect("valid")).collect();
        for (t, n) in texts.iter().zip(&names) {
            assert_eq!(n.as_str(), *t);
            assert_eq!(n.to_string(), *t);
            assert_eq!(n.clone(), t.parse::<InstanceId>().expect("valid"));
            assert_eq!(serde_json::to_string(n).expect("serialize"), format!("{t:?}"));
        }
        for (a, na) in texts.iter().zip(&names) {
            for (b, nb) in texts.iter().zip(&names) {
                assert_eq!(na.cmp(nb), a.cmp(b), "{a} against {b}");
                assert_eq!(na == nb, a == b, "{a} against {b}");
            }
        }
        assert_eq!(ProfileName::default_name().as_str(), "default");
    }

    #[test]
    fn a_name_takes_no_more_room_than_a_string() {
        assert_eq!(std::mem::size_of::<InstanceId>(), std::mem::size_of::<String>());
        assert_eq!(std::mem::size_of::<ProfileName>(), std::mem::size_of::<String>());
    }

    #[test]
    fn names_reject_uppercase_slashes_and_overlong_values() {
        assert!("berth-1".parse::<InstanceId>().is_ok());
        for bad in ["", "-x", "A", "a/b", "a b", &"a".repeat(64)] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad:?}");
        }
    }
}
