//! The authentication part of the policy: static tokens (stored as hashes) and JWT verification; secrets that
//! never print.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ids::ProfileName;

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthPolicy {
    /// Whether clients without a token may open sessions.
    pub anonymous: bool,
    /// Profiles an anonymous session may use; empty means only the default profile.
    pub anonymous_profiles: Vec<ProfileName>,
    /// Static bearer tokens, stored as hashes.
    pub static_tokens: Vec<StaticToken>,
    /// JWT verification, when configured.
    pub jwt: Option<JwtPolicy>,
}

/// A SHA-256 digest, shown redacted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:<redacted>")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

/// One static bearer token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaticToken {
    /// A name for logs and the admin API; never the token.
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: Sha256Digest,
    /// Profiles this token may use; empty means all.
    pub profiles: Vec<ProfileName>,
}

/// JWT signature algorithms berth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256 and a public key.
    Rs256,
}

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JwtPolicy {
    /// The algorithm tokens must use.
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret or the RS256 public key (PEM).
    pub key: SecretString,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// The claim listing the profiles a token may use (a string or an array of strings).
    pub profiles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}
