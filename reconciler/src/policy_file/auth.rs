//! Validates `auth`: anonymous access, static tokens (stored hashed, never echoed) and JWT verification,
//! including reading `key_file` through the caller's file reader.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::ctx::{Ctx, loc};
use super::raw::{RawAuth, RawJwt, Text};
use super::units::parse_duration;
use crate::ids::ProfileName;
use crate::policy::{AuthPolicy, JwtAlgorithm, JwtPolicy, Profile, SecretString, Sha256Digest, StaticToken};

/// Parses the hex SHA-256 of a token.
pub(crate) fn sha256_hex(s: &str) -> Result<Sha256Digest, String> {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(s.trim(), &mut out) {
        Ok(()) => Ok(Sha256Digest(out)),
        // Never echo the value: it may be the token itself, pasted by mistake.
        Err(_) => Err("expected 64 hex digits, the SHA-256 of the token \
             (printf %s \"$TOKEN\" | sha256sum); the value is not shown"
            .into()),
    }
}

/// Resolves profile references, reporting unknown ones.
fn profile_refs(
    cx: &mut Ctx<'_>,
    names: &Option<Vec<Text>>,
    path: &str,
    profiles: &BTreeMap<ProfileName, Profile>,
) -> Vec<ProfileName> {
    let mut out = Vec::new();
    for t in names.iter().flatten() {
        let Some(name) = cx.profile_name(t, path) else { continue };
        if !profiles.contains_key(&name) {
            cx.bad(t, path, format!("no profile is named {:?}", name.as_str()));
        } else if out.contains(&name) {
            cx.bad(t, path, format!("{:?} is listed twice", name.as_str()));
        } else {
            out.push(name);
        }
    }
    out
}

fn token_name(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.' and '@'"))
    }
}

/// Validates `auth`; profile references must name `profiles`.
pub(crate) fn auth(cx: &mut Ctx<'_>, raw: &RawAuth, profiles: &BTreeMap<ProfileName, Profile>) -> AuthPolicy {
    let anonymous = cx.boolean(&raw.anonymous, "auth.anonymous", true);
    let anonymous_profiles = profile_refs(cx, &raw.anonymous_profiles, "auth.anonymous_profiles", profiles);
    let mut static_tokens: Vec<StaticToken> = Vec::new();
    for (i, t) in raw.static_tokens.iter().flatten().enumerate() {
        let path = format!("auth.static_tokens[{i}]");
        let anchor = loc(&t.name).or(loc(&t.sha256));
        let name = match &t.name {
            None => {
                cx.error(anchor, &format!("{path}.name"), "missing: every token has a name for logs");
                None
            }
            Some(n) => cx.optional(&t.name, &format!("{path}.name"), token_name).filter(|name| {
                let dup = static_tokens.iter().any(|s| &s.name == name);
                if dup {
                    cx.bad(n, &format!("{path}.name"), format!("{name:?} names two tokens"));
                }
                !dup
            }),
        };
        let sha256 = match &t.sha256 {
            None => {
                cx.error(anchor, &format!("{path}.sha256"), "missing: give the SHA-256 of the token, never the token");
                None
            }
            Some(h) => cx.optional(&t.sha256, &format!("{path}.sha256"), sha256_hex).filter(|digest| {
                let dup = static_tokens.iter().any(|s| &s.sha256 == digest);
                if dup {
                    cx.bad(h, &format!("{path}.sha256"), "the same token is listed twice");
                }
                !dup
            }),
        };
        let token_profiles = profile_refs(cx, &t.profiles, &format!("{path}.profiles"), profiles);
        if let (Some(name), Some(sha256)) = (name, sha256) {
            static_tokens.push(StaticToken { name, sha256, profiles: token_profiles });
        }
    }
    let jwt = raw.jwt.as_ref().and_then(|j| jwt(cx, j));
    if !anonymous && raw.static_tokens.as_ref().is_none_or(Vec::is_empty) && raw.jwt.is_none() {
        cx.error(
            loc(&raw.anonymous),
            "auth.anonymous",
            "is false but neither auth.static_tokens nor auth.jwt is configured, so no one could open a session",
        );
    }
    AuthPolicy { anonymous, anonymous_profiles, static_tokens, jwt }
}

/// The default `auth.jwt.profiles_claim`.
pub(crate) const DEFAULT_PROFILES_CLAIM: &str = "profiles";
/// The default `auth.jwt.leeway`.
pub(crate) const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s.chars().any(char::is_control) {
        Err("must be a non-empty string without control characters".into())
    } else {
        Ok(s.to_owned())
    }
}

fn jwt(cx: &mut Ctx<'_>, raw: &RawJwt) -> Option<JwtPolicy> {
    let anchor =
        [&raw.algorithm, &raw.key, &raw.key_file, &raw.issuer, &raw.audience].into_iter().find_map(loc).cloned();
    let algorithm = match &raw.algorithm {
        None => {
            cx.error(anchor.as_ref(), "auth.jwt.algorithm", "missing: use HS256 or RS256");
            None
        }
        Some(_) => cx.optional(&raw.algorithm, "auth.jwt.algorithm", |s| match s.trim() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            other => Err(format!("{other:?} is not supported: use HS256 or RS256")),
        }),
    };
    let key = match (&raw.key, &raw.key_file) {
        (Some(_), Some(f)) => {
            cx.bad(f, "auth.jwt.key_file", "set key or key_file, not both");
            None
        }
        (None, None) => {
            cx.error(anchor.as_ref(), "auth.jwt.key", "missing: set key or key_file");
            None
        }
        (Some(k), None) => Some((k, k.value.clone(), "auth.jwt.key")),
        (None, Some(f)) => read_key(cx, f).map(|text| (f, text, "auth.jwt.key_file")),
    };
    let key = match (algorithm, key) {
        (Some(alg), Some((at, text, path))) => match check_key(alg, &text) {
            Ok(()) => Some(SecretString(text)),
            Err(reason) => {
                cx.bad(at, path, reason);
                None
            }
        },
        _ => None,
    };
    let issuer = cx.optional(&raw.issuer, "auth.jwt.issuer", non_empty);
    let audience = cx.optional(&raw.audience, "auth.jwt.audience", non_empty);
    let profiles_claim =
        cx.value(&raw.profiles_claim, "auth.jwt.profiles_claim", DEFAULT_PROFILES_CLAIM.into(), non_empty);
    let leeway = cx.value(&raw.leeway, "auth.jwt.leeway", DEFAULT_LEEWAY, |s| {
        let d = parse_duration(s)?;
        if d > Duration::from_secs(600) {
            Err("must be at most 10m: leeway extends every token's life".into())
        } else {
            Ok(d)
        }
    });
    Some(JwtPolicy { algorithm: algorithm?, key: key?, issuer, audience, profiles_claim, leeway })
}

fn read_key(cx: &mut Ctx<'_>, f: &Text) -> Option<String> {
    let (path, read) = cx.read_relative(Path::new(f.value.trim()));
    match read {
        Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()),
        Err(e) => {
            cx.bad(f, "auth.jwt.key_file", format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Checks a key's shape without ever showing it.
fn check_key(alg: JwtAlgorithm, key: &str) -> Result<(), String> {
    match alg {
        JwtAlgorithm::Hs256 if key.len() < 32 => {
            Err(format!("an HS256 secret must be at least 32 bytes (this one has {})", key.len()))
        }
        JwtAlgorithm::Hs256 => Ok(()),
        JwtAlgorithm::Rs256 if key.contains("PRIVATE KEY") => {
            Err("this is a private key: berth verifies tokens and needs only the public key".into())
        }
        JwtAlgorithm::Rs256
            if key.contains("-----BEGIN PUBLIC KEY-----") || key.contains("-----BEGIN RSA PUBLIC KEY-----") =>
        {
            Ok(())
        }
        JwtAlgorithm::Rs256 => Err("expected an RSA public key in PEM form (-----BEGIN PUBLIC KEY-----)".into()),
    }
}
