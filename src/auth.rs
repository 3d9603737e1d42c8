//! Who is connecting and what they may do: bearer tokens (static or JWT) become an [`Identity`], an identity
//! and a requested name become a profile, and a hello's environment and credentials are filtered into the
//! container's environment. Tokens and keys never appear in errors, `Debug` output or logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use berth_reconciler::desired::{EnvVar, SessionKind};
use berth_reconciler::ids::ProfileName;
use berth_reconciler::policy::{
    AuthPolicy, CredentialSource, JwtAlgorithm, JwtPolicy, Policy, Profile, Sha256Digest, StaticToken,
};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Longest token considered, in bytes. Longer ones are refused before any hashing or parsing.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Longest environment value (client variable or credential) passed to a container, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 4096;

/// Longest identity name (static token name or JWT `sub`) kept for logs, in characters.
const MAX_NAME_CHARS: usize = 128;

/// Why authentication or profile selection failed. No variant carries a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented and anonymous sessions are off.
    #[error("authentication required")]
    Required,
    /// A token was presented but is not acceptable.
    #[error("invalid token: {0}")]
    Invalid(InvalidToken),
    /// The configured JWT verification key cannot be used: an operator problem, not the client's.
    #[error("the jwt verification key is unusable")]
    Key,
    /// The requested profile does not exist or is not a valid profile name (the name, truncated to 64 characters).
    #[error("unknown profile {0:?}")]
    UnknownProfile(String),
    /// The profile exists but this identity may not use it.
    #[error("profile {0} is not allowed for this identity")]
    ForbiddenProfile(ProfileName),
    /// The operating system's random source failed.
    #[error("random source unavailable: {0}")]
    Random(String),
}

/// Why a presented token was refused. Safe to show to the client: it names a check, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("too long")]
    TooLong,
    /// Matches no static token, and is not a JWT (or JWTs are not configured).
    #[error("not recognised")]
    Unrecognised,
    /// Looks like a JWT but cannot be decoded, or its claims are not an object.
    #[error("malformed jwt")]
    Malformed,
    /// The JWT's `alg` is not the one configured (`none` included).
    #[error("jwt algorithm not accepted")]
    Algorithm,
    /// The JWT's signature does not verify.
    #[error("bad signature")]
    Signature,
    /// The JWT's `exp` has passed, beyond the leeway.
    #[error("expired")]
    Expired,
    /// The JWT's `nbf` is still in the future, beyond the leeway.
    #[error("not yet valid")]
    NotYetValid,
    /// The JWT's `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// The JWT's `aud` does not include the configured audience.
    #[error("wrong audience")]
    Audience,
    /// A claim berth requires (`exp`, and `iss` or `aud` when configured) is missing or not well-formed.
    #[error("missing or malformed {0} claim")]
    Claim(&'static str),
    /// The profiles claim is neither a profile name nor an array of profile names.
    #[error("the profiles claim must be a profile name or an array of profile names")]
    ProfilesClaim,
}

impl From<InvalidToken> for AuthError {
    fn from(reason: InvalidToken) -> Self {
        Self::Invalid(reason)
    }
}

/// Which profiles an identity may choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileAccess {
    /// Every profile in the policy.
    Any,
    /// Only the policy's `default_profile`: an anonymous client when `auth.anonymous_profiles` is empty.
    DefaultOnly,
    /// Exactly these. An empty list allows nothing (a JWT whose profiles claim is `[]`).
    Only(Vec<ProfileName>),
}

impl ProfileAccess {
    /// Whether `name` may be chosen, given the policy's default profile.
    pub fn allows(&self, name: &ProfileName, default: &ProfileName) -> bool {
        match self {
            Self::Any => true,
            Self::DefaultOnly => name == default,
            Self::Only(names) => names.contains(name),
        }
    }
}

/// Who is connecting.
///
/// `Debug` shows the kind, the name and the profile access; never the claims, which may carry credentials.
#[derive(Clone, PartialEq)]
pub struct Identity {
    /// Anonymous or authenticated.
    pub kind: SessionKind,
    /// The static token's name or the JWT's `sub`, for logs; never the token. `None` when anonymous.
    pub name: Option<String>,
    /// The profiles this identity may choose.
    pub profiles: ProfileAccess,
    /// The verified JWT's claims; empty for anonymous and static-token identities.
    pub claims: Map<String, Value>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("profiles", &self.profiles)
            .finish_non_exhaustive()
    }
}

/// Decides who presents `token`.
///
/// - No token (or an empty one): anonymous when `auth.anonymous`, with the profiles in `auth.anonymous_profiles`,
///   or [`ProfileAccess::DefaultOnly`] when that list is empty.
/// - A token whose SHA-256 matches a static token's digest: that token's identity. Every digest is compared,
///   in constant time, whatever matches.
/// - Otherwise, when `auth.jwt` is set and the token has a JWT's shape: a JWT verified with the configured
///   algorithm and key (signature, then `exp` (required), `nbf`, and `iss` and `aud` when configured, against
///   `now_unix_secs` with the configured leeway). Its `profiles_claim` (a name or an array of names) limits
///   the profiles; when the claim is absent, every profile is allowed. Unverified claims are never read.
///
/// A token that is presented but refused is an error even when anonymous sessions are allowed: a client
/// that meant to authenticate should learn that it did not.
///
/// # Errors
/// [`AuthError::Required`] without a token when anonymous sessions are off; [`AuthError::Invalid`] for any
/// refused token; [`AuthError::Key`] when the configured RS256 key does not parse.
pub fn authenticate(auth: &AuthPolicy, token: Option<&str>, now_unix_secs: u64) -> Result<Identity, AuthError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        if !auth.anonymous {
            return Err(AuthError::Required);
        }
        let profiles = if auth.anonymous_profiles.is_empty() {
            ProfileAccess::DefaultOnly
        } else {
            ProfileAccess::Only(auth.anonymous_profiles.clone())
        };
        return Ok(Identity { kind: SessionKind::Anonymous, name: None, profiles, claims: Map::new() });
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(InvalidToken::TooLong.into());
    }
    if let Some(st) = match_static(&auth.static_tokens, token) {
        let profiles =
            if st.profiles.is_empty() { ProfileAccess::Any } else { ProfileAccess::Only(st.profiles.clone()) };
        return Ok(Identity {
            kind: SessionKind::Authenticated,
            name: Some(truncate(&st.name, MAX_NAME_CHARS)),
            profiles,
            claims: Map::new(),
        });
    }
    match &auth.jwt {
        Some(jwt) if looks_like_jwt(token) => verify_jwt(jwt, token, now_unix_secs),
        _ => Err(InvalidToken::Unrecognised.into()),
    }
}

/// The static token whose digest matches `token`'s. Compares against every digest without an early exit.
fn match_static<'a>(tokens: &'a [StaticToken], token: &str) -> Option<&'a StaticToken> {
    let digest = Sha256Digest::of(token.as_bytes());
    let mut found = Choice::from(0);
    let mut index = 0u64;
    for (i, candidate) in tokens.iter().enumerate() {
        let equal = digest.0.ct_eq(&candidate.sha256.0);
        index.conditional_assign(&(i as u64), equal & !found);
        found |= equal;
    }
    if bool::from(found) { usize::try_from(index).ok().and_then(|i| tokens.get(i)) } else { None }
}

/// Three dot-separated base64url segments, the first two non-empty (an empty third is an unsigned token,
/// which is then refused by verification rather than mistaken for something else).
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn verify_jwt(jwt: &JwtPolicy, token: &str, now: u64) -> Result<Identity, AuthError> {
    let (algorithm, key) = match jwt.algorithm {
        JwtAlgorithm::Hs256 => (Algorithm::HS256, DecodingKey::from_secret(jwt.key.0.as_bytes())),
        JwtAlgorithm::Rs256 => {
            let key = DecodingKey::from_rsa_pem(jwt.key.0.as_bytes()).map_err(|_| AuthError::Key)?;
            (Algorithm::RS256, key)
        }
    };
    let mut validation = Validation::new(algorithm);
    // Time is checked below against `now`, not the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let mut required = vec!["exp"];
    if let Some(issuer) = &jwt.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &jwt.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);

    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(jwt_error)?;
    let claims = data.claims;
    check_time(&claims, now, jwt.leeway.as_secs())?;
    let profiles = profiles_from_claim(claims.get(&jwt.profiles_claim))?;
    let name = match claims.get("sub") {
        Some(Value::String(sub)) => Some(truncate(sub, MAX_NAME_CHARS)),
        _ => None,
    };
    Ok(Identity { kind: SessionKind::Authenticated, name, profiles, claims })
}

/// Maps a verification failure to a reason that names the check, never the content.
fn jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    let reason = match e.kind() {
        ErrorKind::InvalidSignature => InvalidToken::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
            InvalidToken::Algorithm
        }
        ErrorKind::InvalidIssuer => InvalidToken::Issuer,
        ErrorKind::InvalidAudience => InvalidToken::Audience,
        ErrorKind::ExpiredSignature => InvalidToken::Expired,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "exp" => InvalidToken::Claim("exp"),
            "nbf" => InvalidToken::Claim("nbf"),
            "iss" => InvalidToken::Claim("iss"),
            "aud" => InvalidToken::Claim("aud"),
            "sub" => InvalidToken::Claim("sub"),
            _ => InvalidToken::Malformed,
        },
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => return AuthError::Key,
        _ => InvalidToken::Malformed,
    };
    AuthError::Invalid(reason)
}

/// A NumericDate claim as whole seconds: a non-negative integer, or a finite non-negative number (floored).
fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // Truncation is the intent: NumericDate may carry fractions of a second.
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
    })
}

fn check_time(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<(), InvalidToken> {
    let exp = claims.get("exp").and_then(numeric_date).ok_or(InvalidToken::Claim("exp"))?;
    if now >= exp.saturating_add(leeway) {
        return Err(InvalidToken::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(InvalidToken::Claim("nbf"))?;
        if now.saturating_add(leeway) < nbf {
            return Err(InvalidToken::NotYetValid);
        }
    }
    Ok(())
}

/// Absent: any profile. A string: that one. An array of strings: those. Anything else, or a string that is not
/// a valid profile name, refuses the token rather than guessing.
fn profiles_from_claim(claim: Option<&Value>) -> Result<ProfileAccess, InvalidToken> {
    let parse = |v: &Value| v.as_str().and_then(|s| s.parse::<ProfileName>().ok()).ok_or(InvalidToken::ProfilesClaim);
    match claim {
        None => Ok(ProfileAccess::Any),
        Some(v @ Value::String(_)) => Ok(ProfileAccess::Only(vec![parse(v)?])),
        Some(Value::Array(items)) => Ok(ProfileAccess::Only(items.iter().map(parse).collect::<Result<_, _>>()?)),
        Some(_) => Err(InvalidToken::ProfilesClaim),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Picks the profile for a new session: `requested`, or the policy's default when it is `None` or empty.
///
/// Access is checked before existence for identities with a list of profiles, so that a client cannot learn
/// which profiles exist by asking for ones it may not use.
///
/// # Errors
/// [`AuthError::UnknownProfile`] when the name is not a valid profile name or names no profile in the policy;
/// [`AuthError::ForbiddenProfile`] when the identity may not use it.
pub fn choose_profile(identity: &Identity, policy: &Policy, requested: Option<&str>) -> Result<ProfileName, AuthError> {
    let name = match requested.filter(|r| !r.is_empty()) {
        None => policy.default_profile.clone(),
        Some(r) => r.parse::<ProfileName>().map_err(|_| AuthError::UnknownProfile(truncate(r, 64)))?,
    };
    if !identity.profiles.allows(&name, &policy.default_profile) {
        return Err(AuthError::ForbiddenProfile(name));
    }
    if !policy.profiles.contains_key(&name) {
        return Err(AuthError::UnknownProfile(name.to_string()));
    }
    Ok(name)
}

fn acceptable_value(v: &str) -> bool {
    v.len() <= MAX_ENV_VALUE_BYTES && !v.contains('\0')
}

/// A claim as an environment value: strings as they are, numbers as their decimal form, nothing else.
fn claim_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The environment a session's container gets from its client and credentials, and the names that were ignored.
///
/// - A client variable passes only when its name is in `profile.client_env` (exact match), the profile's fixed
///   `env` does not set it (the operator's value wins), no credential maps to it (a client must not forge a
///   credential), and its value is at most [`MAX_ENV_VALUE_BYTES`] without NUL. Otherwise its name is ignored.
/// - Each credential mapping takes the verified JWT claim (a string, or a number as its decimal form) or the
///   hello credential it names, under the same value rules, as a sensitive variable. A mapping whose variable
///   the fixed `env` sets is skipped; a missing or unusable claim is skipped silently (it is not client input).
/// - Hello credential fields that no mapping used (unknown, or with an unusable value) are ignored.
///
/// The fixed `env` itself is not returned: the planner adds it from the profile. Ignored names come back in
/// order, client variables first, then hello credential fields.
pub fn session_env(
    profile: &Profile,
    identity: &Identity,
    client_env: &BTreeMap<String, String>,
    hello_credentials: &BTreeMap<String, String>,
) -> (Vec<EnvVar>, Vec<String>) {
    let credential_targets: BTreeSet<&str> = profile.credentials.iter().map(|c| c.env.as_str()).collect();
    let mut env = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in client_env {
        let allowed = profile.client_env.iter().any(|a| a == name)
            && !profile.env.contains_key(name)
            && !credential_targets.contains(name.as_str())
            && acceptable_value(value);
        if allowed {
            env.push(EnvVar { name: name.clone(), value: value.clone(), sensitive: false });
        } else {
            ignored.push(name.clone());
        }
    }

    let mut used_fields = BTreeSet::new();
    let mut set = BTreeSet::new();
    for mapping in &profile.credentials {
        if profile.env.contains_key(&mapping.env) || set.contains(mapping.env.as_str()) {
            continue;
        }
        let value = match &mapping.from {
            CredentialSource::Claim(claim) => identity.claims.get(claim).and_then(claim_value),
            CredentialSource::Hello(field) => hello_credentials.get(field).cloned(),
        };
        let Some(value) = value.filter(|v| acceptable_value(v)) else {
            continue;
        };
        if let CredentialSource::Hello(field) = &mapping.from {
            used_fields.insert(field.as_str());
        }
        set.insert(mapping.env.as_str());
        env.push(EnvVar { name: mapping.env.clone(), value, sensitive: true });
    }
    ignored.extend(hello_credentials.keys().filter(|f| !used_fields.contains(f.as_str())).cloned());
    (env, ignored)
}

/// A fresh resume secret and its digest: 32 random bytes as 64 lowercase hex digits, and the SHA-256 of that
/// hex string's bytes, also as lowercase hex. The client keeps the secret; berth keeps only the digest.
///
/// # Errors
/// [`AuthError::Random`] when the operating system's random source fails.
pub fn new_resume_secret() -> Result<(String, String), AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    let secret = hex::encode(bytes);
    let digest = berth_reconciler::resume_hash(&secret);
    Ok((secret, digest))
}

#[cfg(test)]
mod tests;
