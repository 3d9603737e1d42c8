//! Tests for authentication, profile choice and the session environment.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_reconciler::policy::{CredentialMapping, SecretString};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const SECRET: &str = "an-hs256-test-secret-of-at-least-32-bytes";
const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "berth";

/// A 2048-bit RSA key pair made with `openssl genrsa 2048` and `openssl rsa -pubout`, for tests only.
const RSA_PRIVATE_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCdsw9NjTwQx9rt
uUHDWpWyVc4aGaSCRiEKodMc7+Bb1tGbk49LfYJbGVsMCrG6PXSGidBDG0zX6YeB
EqxETBQP2P4E+PjiOFmQkVW8HePwa0AG0gFS5T5mCSRC4pmnXHGIBtbVWfaRM0C4
Cjpw68bwapuOU1ZNeriehRkHgjZRAI9/tl5IPkAt1WdV5jEZUmgyqoS+uvws3l0z
pIXC7hkKj9jjX0x8BsohHYUzYVlJVVrvyWPYDCpAbHc1YMWQFqRXhNgHm+I8vA85
RNWVxg1a+ZkSvW2cyQHPB7WYTcLUEuymq+MVIsqBwQpDaC36aQohCINJwZCVnM3V
AKOBdZ/9AgMBAAECggEAL5jeaw1QTk5MBUlPkIt0OD3OtbD8prdM/L0ID6lVAdMu
M7NPYj0RDbby9Ij7yJcI5xyMZ9zDDj31gJ8msHx356qaTNzqnbjdS5WaF2u8IxHz
4rsa3C7F7R0gPTHQp6Nuvtw1lnKPSZb7FzE7H18CjgjXR5deqob6VxocCliiVUMJ
PV0OaX7bge7JAIxfgDuEoEuqUXoEdemUeV4nAOoZBXiS8yIB23atxfn3DOJMCdXW
5K6P9NGeearp5/7isDRtKE2UXkti5Gt8nlywIX84+Hkbgy+xwEoKIZ95LRfBMokU
BXBFIQ+waXfCAZdQFGLwOBtCEfUTe4ykdpRI5BdfjwKBgQDMsUFwYGf/vq1LfnS7
/WQgfp9cTZ5XpIh18YM155R4a3JiK4ulang04FL19Su7NfWOXBmmV0DOIJ5O7ou7
E5IwoKuX9wHxWdisrsbnnesFLn9YUnSxTuPD99DrRxrKgZLI47XGaTwC1STSW3xP
oJgAEG7SEUA6WfBmFb9weJF7bwKBgQDFOlnHoqUx4jN9+7OxtXZB6F1OXDTGIYlS
06YWAvORPTHDrNvj7cwybqD9RzZtZ8pNfF2Rx6ukPxtoS7AqrbVmjJpN7xJZ7Scf
gNBTPLwqY9RjUMQww3ASZGQSFHaHuQfAioy7BqdGE74+S3enP16Ig7Nfmv4DxxpX
XA6l7D2VUwKBgHyBKNOo4DlQCuqLnYenRhr5ygcD81dN7e8Hmw7TsJxahrWt1QAl
tb474FpY6WOzG4ye+r8R/Yojjwdl07pT2i0X3afOh/D8/G101emWRZjeQnk/llkv
Kh1OBFbH5kTc8aKd1zg7VFRIv1/wY7mvbiVD2ZSPB6k2gaImgk5wF9WjAoGBAL/B
vt6p1SGOA3B/E7Q5cRQdfvKcFbd5jdGY9Ec8cWIJ9GOConyWjM2P4DjBTzrKCdiS
jUsarlhP/y7FQDAOmmttUu1o/xetyzcHAAWd7HjufOZe9ZFPw5wuPVmSybel/9KF
ItUIYARzV6mrqFdU9m2WVwUiZcx4fbToTVmnOiz/AoGAC9VVxG9bh5wZp7ozLtCh
Xh85WwlUI0c9DuyhW8BxzhdslV8zIqztw2YDoCnW07HCrG+HMA/mPSfpyRi/6N7c
Dyd0mxWbPM6O7vjgV6pI438Nzi1TCnRbCcqdIMUf0le+vn8ooahDf44XJIniE25q
j7IVPe5pObNPuHK2/R54ZMQ=
-----END PRIVATE KEY-----
";
const RSA_PUBLIC_PEM: &str = r"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAnbMPTY08EMfa7blBw1qV
slXOGhmkgkYhCqHTHO/gW9bRm5OPS32CWxlbDAqxuj10honQQxtM1+mHgRKsREwU
D9j+BPj44jhZkJFVvB3j8GtABtIBUuU+ZgkkQuKZp1xxiAbW1Vn2kTNAuAo6cOvG
8GqbjlNWTXq4noUZB4I2UQCPf7ZeSD5ALdVnVeYxGVJoMqqEvrr8LN5dM6SFwu4Z
Co/Y419MfAbKIR2FM2FZSVVa78lj2AwqQGx3NWDFkBakV4TYB5viPLwPOUTVlcYN
WvmZEr1tnMkBzwe1mE3C1BLspqvjFSLKgcEKQ2gt+mkKIQiDScGQlZzN1QCjgXWf
/QIDAQAB
-----END PUBLIC KEY-----
";

fn name(s: &str) -> ProfileName {
    s.parse().expect("valid profile name")
}

fn hs256() -> JwtPolicy {
    JwtPolicy {
        algorithm: JwtAlgorithm::Hs256,
        key: SecretString(SECRET.into()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        profiles_claim: "profiles".into(),
        leeway: Duration::from_secs(30),
    }
}

fn rs256() -> JwtPolicy {
    JwtPolicy { algorithm: JwtAlgorithm::Rs256, key: SecretString(RSA_PUBLIC_PEM.into()), ..hs256() }
}

fn auth(jwt: Option<JwtPolicy>) -> AuthPolicy {
    AuthPolicy {
        anonymous: false,
        anonymous_profiles: Vec::new(),
        static_tokens: vec![
            StaticToken { name: "ci".into(), sha256: Sha256Digest::of(b"ci-token-1"), profiles: Vec::new() },
            StaticToken { name: "ops".into(), sha256: Sha256Digest::of(b"ops-token-2"), profiles: vec![name("admin")] },
        ],
        jwt,
    }
}

fn claims() -> Value {
    json!({ "sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600, "iat": NOW })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    if let Some(map) = base.as_object_mut() {
        map.remove(key);
    }
    base
}

fn hs_token(claims: &Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode")
}

fn rs_token(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test key");
    encode(&Header::new(Algorithm::RS256), claims, &key).expect("encode")
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Authenticates `token` against `policy`, and checks that the error, if any, shows no part of the token.
fn try_auth(policy: &AuthPolicy, token: &str) -> Result<Identity, AuthError> {
    let result = authenticate(policy, Some(token), NOW);
    if let Err(e) = &result {
        let shown = format!("{e} {e:?}");
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!shown.contains(part), "error {shown:?} shows part of the token");
        }
        assert!(!shown.contains(SECRET), "error shows the secret");
    }
    result
}

// --- anonymous ---

#[test]
fn anonymous_clients_are_refused_when_anonymous_is_off() {
    assert_eq!(authenticate(&auth(None), None, NOW), Err(AuthError::Required));
}

#[test]
fn anonymous_clients_get_only_the_default_profile_when_no_anonymous_profiles_are_listed() {
    let policy = AuthPolicy { anonymous: true, ..auth(None) };
    let id = authenticate(&policy, None, NOW).expect("anonymous");
    assert_eq!(id.kind, SessionKind::Anonymous);
    assert_eq!(id.name, None);
    assert_eq!(id.profiles, ProfileAccess::DefaultOnly);
    assert!(id.claims.is_empty());
}

#[test]
fn anonymous_clients_get_the_listed_anonymous_profiles() {
    let policy = AuthPolicy { anonymous: true, anonymous_profiles: vec![name("demo")], ..auth(None) };
    let id = authenticate(&policy, None, NOW).expect("anonymous");
    assert_eq!(id.profiles, ProfileAccess::Only(vec![name("demo")]));
}

#[test]
fn an_empty_token_counts_as_no_token() {
    let policy = AuthPolicy { anonymous: true, ..auth(None) };
    assert_eq!(authenticate(&policy, Some(""), NOW).map(|i| i.kind), Ok(SessionKind::Anonymous));
    assert_eq!(authenticate(&auth(None), Some(""), NOW), Err(AuthError::Required));
}

#[test]
fn a_refused_token_is_an_error_even_when_anonymous_sessions_are_allowed() {
    let policy = AuthPolicy { anonymous: true, ..auth(None) };
    assert_eq!(try_auth(&policy, "not-a-token"), Err(AuthError::Invalid(InvalidToken::Unrecognised)));
}

// --- static tokens ---

#[test]
fn a_static_token_authenticates_by_its_digest() {
    let id = try_auth(&auth(None), "ci-token-1").expect("static token");
    assert_eq!(id.kind, SessionKind::Authenticated);
    assert_eq!(id.name.as_deref(), Some("ci"));
    assert_eq!(id.profiles, ProfileAccess::Any);
    let id = try_auth(&auth(None), "ops-token-2").expect("static token");
    assert_eq!(id.name.as_deref(), Some("ops"));
    assert_eq!(id.profiles, ProfileAccess::Only(vec![name("admin")]));
}

#[test]
fn a_wrong_static_token_is_refused() {
    for bad in ["ci-token-2", "ci-token-1 ", "CI-TOKEN-1", "ops-token-"] {
        assert_eq!(try_auth(&auth(None), bad), Err(AuthError::Invalid(InvalidToken::Unrecognised)), "{bad:?}");
    }
}

#[test]
fn an_overlong_token_is_refused_before_anything_else() {
    let long = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(try_auth(&auth(Some(hs256())), &long), Err(AuthError::Invalid(InvalidToken::TooLong)));
}

// --- JWT ---

#[test]
fn a_valid_hs256_jwt_authenticates_with_its_subject_and_claims() {
    let token = hs_token(&with(claims(), "email", json!("alice@example.com")), SECRET);
    let id = try_auth(&auth(Some(hs256())), &token).expect("valid jwt");
    assert_eq!(id.kind, SessionKind::Authenticated);
    assert_eq!(id.name.as_deref(), Some("alice"));
    assert_eq!(id.profiles, ProfileAccess::Any, "no profiles claim allows every profile");
    assert_eq!(id.claims.get("email"), Some(&json!("alice@example.com")));
}

#[test]
fn a_jwt_is_refused_when_jwt_is_not_configured() {
    let token = hs_token(&claims(), SECRET);
    assert_eq!(try_auth(&auth(None), &token), Err(AuthError::Invalid(InvalidToken::Unrecognised)));
}

#[test]
fn a_jwt_signed_with_another_secret_is_refused() {
    let token = hs_token(&claims(), "another-secret-that-is-also-32-bytes-long");
    assert_eq!(try_auth(&auth(Some(hs256())), &token), Err(AuthError::Invalid(InvalidToken::Signature)));
}

#[test]
fn a_jwt_whose_payload_was_changed_is_refused() {
    let token = hs_token(&claims(), SECRET);
    let forged_payload = b64url(with(claims(), "sub", json!("root")).to_string().as_bytes());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(try_auth(&auth(Some(hs256())), &forged), Err(AuthError::Invalid(InvalidToken::Signature)));
}

#[test]
fn an_expired_jwt_is_refused_after_the_leeway() {
    let policy = auth(Some(hs256()));
    let within_leeway = hs_token(&with(claims(), "exp", json!(NOW - 10)), SECRET);
    assert!(try_auth(&policy, &within_leeway).is_ok(), "30 s of leeway covers 10 s of skew");
    let expired = hs_token(&with(claims(), "exp", json!(NOW - 30)), SECRET);
    assert_eq!(try_auth(&policy, &expired), Err(AuthError::Invalid(InvalidToken::Expired)));
}

#[test]
fn a_jwt_without_exp_is_refused() {
    let token = hs_token(&without(claims(), "exp"), SECRET);
    assert_eq!(try_auth(&auth(Some(hs256())), &token), Err(AuthError::Invalid(InvalidToken::Claim("exp"))));
    let token = hs_token(&with(claims(), "exp", json!("tomorrow")), SECRET);
    assert!(matches!(try_auth(&auth(Some(hs256())), &token), Err(AuthError::Invalid(_))));
}

#[test]
fn a_jwt_used_before_nbf_is_refused() {
    let policy = auth(Some(hs256()));
    let token = hs_token(&with(claims(), "nbf", json!(NOW + 120)), SECRET);
    assert_eq!(try_auth(&policy, &token), Err(AuthError::Invalid(InvalidToken::NotYetValid)));
    let token = hs_token(&with(claims(), "nbf", json!(NOW + 10)), SECRET);
    assert!(try_auth(&policy, &token).is_ok(), "within the leeway");
}

#[test]
fn a_jwt_from_another_issuer_or_for_another_audience_is_refused() {
    let policy = auth(Some(hs256()));
    let cases = [
        (with(claims(), "iss", json!("https://evil.example")), InvalidToken::Issuer),
        (without(claims(), "iss"), InvalidToken::Claim("iss")),
        (with(claims(), "aud", json!("other-service")), InvalidToken::Audience),
        (with(claims(), "aud", json!(["other-service", "another"])), InvalidToken::Audience),
        (without(claims(), "aud"), InvalidToken::Claim("aud")),
    ];
    for (claims, reason) in cases {
        let token = hs_token(&claims, SECRET);
        assert_eq!(try_auth(&policy, &token), Err(AuthError::Invalid(reason)), "{claims}");
    }
    let token = hs_token(&with(claims(), "aud", json!(["other-service", AUDIENCE])), SECRET);
    assert!(try_auth(&policy, &token).is_ok(), "an audience list that includes berth");
}

#[test]
fn iss_and_aud_are_not_checked_when_not_configured() {
    let policy = auth(Some(JwtPolicy { issuer: None, audience: None, ..hs256() }));
    let token = hs_token(&with(with(claims(), "iss", json!("anyone")), "aud", json!("anything")), SECRET);
    assert!(try_auth(&policy, &token).is_ok());
}

#[test]
fn an_unsigned_alg_none_jwt_is_refused() {
    let payload = b64url(claims().to_string().as_bytes());
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"HS256","typ":"JWT"}"#] {
        let header = b64url(header.as_bytes());
        for token in [format!("{header}.{payload}."), format!("{header}.{payload}.AAAA")] {
            let result = try_auth(&auth(Some(hs256())), &token);
            assert!(matches!(result, Err(AuthError::Invalid(_))), "{result:?}");
        }
    }
}

#[test]
fn a_valid_rs256_jwt_authenticates() {
    let token = rs_token(&with(claims(), "profiles", json!(["dev"])));
    let id = try_auth(&auth(Some(rs256())), &token).expect("valid rs256 jwt");
    assert_eq!(id.name.as_deref(), Some("alice"));
    assert_eq!(id.profiles, ProfileAccess::Only(vec![name("dev")]));
}

#[test]
fn an_rs256_policy_refuses_an_hs256_token_signed_with_its_public_key() {
    let token = hs_token(&claims(), RSA_PUBLIC_PEM);
    assert_eq!(try_auth(&auth(Some(rs256())), &token), Err(AuthError::Invalid(InvalidToken::Algorithm)));
    let token = rs_token(&claims());
    assert_eq!(try_auth(&auth(Some(hs256())), &token), Err(AuthError::Invalid(InvalidToken::Algorithm)));
}

#[test]
fn an_unusable_rs256_key_is_an_operator_error() {
    let policy = auth(Some(JwtPolicy { key: SecretString("-----BEGIN PUBLIC KEY-----\nnope\n".into()), ..rs256() }));
    assert_eq!(try_auth(&policy, &rs_token(&claims())), Err(AuthError::Key));
}

#[test]
fn the_profiles_claim_limits_the_profiles_of_a_jwt() {
    let policy = auth(Some(JwtPolicy { profiles_claim: "berth/profiles".into(), ..hs256() }));
    let one = hs_token(&with(claims(), "berth/profiles", json!("dev")), SECRET);
    assert_eq!(try_auth(&policy, &one).map(|i| i.profiles), Ok(ProfileAccess::Only(vec![name("dev")])));
    let many = hs_token(&with(claims(), "berth/profiles", json!(["dev", "admin"])), SECRET);
    assert_eq!(try_auth(&policy, &many).map(|i| i.profiles), Ok(ProfileAccess::Only(vec![name("dev"), name("admin")])));
    let none = hs_token(&with(claims(), "berth/profiles", json!([])), SECRET);
    assert_eq!(try_auth(&policy, &none).map(|i| i.profiles), Ok(ProfileAccess::Only(Vec::new())));
    let other_claim = hs_token(&with(claims(), "profiles", json!(["dev"])), SECRET);
    assert_eq!(try_auth(&policy, &other_claim).map(|i| i.profiles), Ok(ProfileAccess::Any));
    for bad in [json!(7), json!(["dev", 7]), json!("Not A Name"), json!({"dev": true}), json!(null)] {
        let token = hs_token(&with(claims(), "berth/profiles", bad.clone()), SECRET);
        assert_eq!(try_auth(&policy, &token), Err(AuthError::Invalid(InvalidToken::ProfilesClaim)), "{bad}");
    }
}

#[test]
fn debug_of_an_identity_does_not_show_its_claims() {
    let token = hs_token(&with(claims(), "api_key", json!("sk-live-very-secret")), SECRET);
    let id = try_auth(&auth(Some(hs256())), &token).expect("valid jwt");
    let shown = format!("{id:?} {id:#?}");
    assert!(shown.contains("alice"), "{shown}");
    assert!(!shown.contains("sk-live-very-secret"), "{shown}");
    assert!(!shown.contains("api_key"), "{shown}");
}

// --- profile choice ---

fn policy_with_profiles() -> Policy {
    let mut policy = Policy::default();
    for p in ["dev", "admin"] {
        policy.profiles.insert(name(p), Profile::with_image("img"));
    }
    policy
}

fn identity(profiles: ProfileAccess) -> Identity {
    Identity { kind: SessionKind::Authenticated, name: None, profiles, claims: Map::new() }
}

#[test]
fn no_requested_profile_chooses_the_default() {
    let policy = policy_with_profiles();
    for requested in [None, Some("")] {
        assert_eq!(choose_profile(&identity(ProfileAccess::DefaultOnly), &policy, requested), Ok(name("default")));
    }
}

#[test]
fn a_requested_profile_must_exist_and_be_allowed() {
    let policy = policy_with_profiles();
    let any = identity(ProfileAccess::Any);
    assert_eq!(choose_profile(&any, &policy, Some("admin")), Ok(name("admin")));
    assert_eq!(choose_profile(&any, &policy, Some("nope")), Err(AuthError::UnknownProfile("nope".into())));
    assert_eq!(choose_profile(&any, &policy, Some("../etc")), Err(AuthError::UnknownProfile("../etc".into())));

    let anonymous = identity(ProfileAccess::DefaultOnly);
    assert_eq!(choose_profile(&anonymous, &policy, Some("dev")), Err(AuthError::ForbiddenProfile(name("dev"))));

    let dev = identity(ProfileAccess::Only(vec![name("dev"), name("gone")]));
    assert_eq!(choose_profile(&dev, &policy, Some("dev")), Ok(name("dev")));
    assert_eq!(choose_profile(&dev, &policy, None), Err(AuthError::ForbiddenProfile(name("default"))));
    assert_eq!(choose_profile(&dev, &policy, Some("admin")), Err(AuthError::ForbiddenProfile(name("admin"))));
    assert_eq!(
        choose_profile(&dev, &policy, Some("secret-project")),
        Err(AuthError::ForbiddenProfile(name("secret-project"))),
        "a limited identity cannot tell which profiles exist"
    );
    assert_eq!(choose_profile(&dev, &policy, Some("gone")), Err(AuthError::UnknownProfile("gone".into())));

    let nothing = identity(ProfileAccess::Only(Vec::new()));
    assert_eq!(choose_profile(&nothing, &policy, None), Err(AuthError::ForbiddenProfile(name("default"))));
}

// --- session environment ---

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn names(env: &[EnvVar]) -> Vec<&str> {
    env.iter().map(|e| e.name.as_str()).collect()
}

#[test]
fn only_allowlisted_client_variables_reach_the_environment() {
    let profile = Profile::with_image("img");
    let client = map(&[("TERM", "xterm-256color"), ("PATH", "/evil"), ("LD_PRELOAD", "/tmp/x.so"), ("term", "x")]);
    let (env, ignored) = session_env(&profile, &identity(ProfileAccess::Any), &client, &BTreeMap::new());
    assert_eq!(env, vec![EnvVar { name: "TERM".into(), value: "xterm-256color".into(), sensitive: false }]);
    assert_eq!(ignored, vec!["LD_PRELOAD", "PATH", "term"]);
}

#[test]
fn an_allowlisted_name_that_the_fixed_env_sets_is_still_refused() {
    let mut profile = Profile::with_image("img");
    profile.client_env = vec!["LD_PRELOAD".into(), "PATH".into(), "LANG".into()];
    profile.env.insert("PATH".into(), "/usr/bin:/bin".into());
    let client = map(&[("LD_PRELOAD", "/tmp/x.so"), ("PATH", "/evil"), ("LANG", "C.UTF-8")]);
    let (env, ignored) = session_env(&profile, &identity(ProfileAccess::Any), &client, &BTreeMap::new());
    assert_eq!(names(&env), vec!["LANG", "LD_PRELOAD"], "the allowlist is the operator's choice");
    assert_eq!(ignored, vec!["PATH"], "the operator's fixed value wins");
}

#[test]
fn oversized_values_and_values_with_nul_are_refused() {
    let profile = Profile::with_image("img");
    let long = "x".repeat(MAX_ENV_VALUE_BYTES + 1);
    let just_fits = "x".repeat(MAX_ENV_VALUE_BYTES);
    let client = map(&[("TERM", &long), ("LANG", "C\0evil"), ("LC_ALL", &just_fits)]);
    let (env, ignored) = session_env(&profile, &identity(ProfileAccess::Any), &client, &BTreeMap::new());
    assert_eq!(names(&env), vec!["LC_ALL"]);
    assert_eq!(ignored, vec!["LANG", "TERM"]);
}

#[test]
fn credentials_come_from_claims_and_hello_as_sensitive_variables() {
    let mut profile = Profile::with_image("img");
    profile.client_env.push("GIT_TOKEN".into());
    profile.credentials = vec![
        CredentialMapping { from: CredentialSource::Claim("sub".into()), env: "BERTH_USER".into() },
        CredentialMapping { from: CredentialSource::Claim("uid".into()), env: "BERTH_UID".into() },
        CredentialMapping { from: CredentialSource::Claim("groups".into()), env: "BERTH_GROUPS".into() },
        CredentialMapping { from: CredentialSource::Claim("missing".into()), env: "BERTH_MISSING".into() },
        CredentialMapping { from: CredentialSource::Hello("git".into()), env: "GIT_TOKEN".into() },
    ];
    let mut id = identity(ProfileAccess::Any);
    id.claims = Map::from_iter([
        ("sub".to_owned(), json!("alice")),
        ("uid".to_owned(), json!(1042)),
        ("groups".to_owned(), json!(["a", "b"])),
    ]);
    let client = map(&[("GIT_TOKEN", "forged"), ("TERM", "xterm")]);
    let hello = map(&[("git", "ghp_secret"), ("aws", "AKIA...")]);
    let (env, ignored) = session_env(&profile, &id, &client, &hello);
    assert_eq!(
        env,
        vec![
            EnvVar { name: "TERM".into(), value: "xterm".into(), sensitive: false },
            EnvVar { name: "BERTH_USER".into(), value: "alice".into(), sensitive: true },
            EnvVar { name: "BERTH_UID".into(), value: "1042".into(), sensitive: true },
            EnvVar { name: "GIT_TOKEN".into(), value: "ghp_secret".into(), sensitive: true },
        ]
    );
    assert_eq!(ignored, vec!["GIT_TOKEN", "aws"], "the client cannot forge a credential; unknown fields are ignored");
    assert!(!format!("{env:?}").contains("ghp_secret"));
}

#[test]
fn a_credential_never_overrides_the_fixed_env() {
    let mut profile = Profile::with_image("img");
    profile.env.insert("TOKEN".into(), "operator".into());
    profile.credentials = vec![CredentialMapping { from: CredentialSource::Hello("t".into()), env: "TOKEN".into() }];
    let (env, ignored) = session_env(&profile, &identity(ProfileAccess::Any), &BTreeMap::new(), &map(&[("t", "x")]));
    assert!(env.is_empty());
    assert_eq!(ignored, vec!["t"]);
}

#[test]
fn an_unusable_hello_credential_is_ignored() {
    let mut profile = Profile::with_image("img");
    profile.credentials = vec![CredentialMapping { from: CredentialSource::Hello("t".into()), env: "TOKEN".into() }];
    let hello = map(&[("t", "bad\0value")]);
    let (env, ignored) = session_env(&profile, &identity(ProfileAccess::Any), &BTreeMap::new(), &hello);
    assert!(env.is_empty());
    assert_eq!(ignored, vec!["t"]);
}

// --- resume secrets ---

#[test]
fn resume_secrets_are_64_hex_digits_and_come_with_their_digest() {
    let (secret, digest) = new_resume_secret().expect("random");
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    // The verifier is the first 128 bits of the secret's SHA-256 (a label value within every engine's limit).
    let full = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    assert_eq!(digest, full[..32]);
    assert!(berth_reconciler::resume_hash_matches(&digest, &secret));
    assert_ne!(new_resume_secret().expect("random").0, secret);
}
