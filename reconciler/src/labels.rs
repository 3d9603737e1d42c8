//! Every label key berth writes or reads, in one place, and the parser that turns a container's labels
//! back into typed identity.
//!
//! A container without the managed marker of berth's namespace is not berth's, and is never touched.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::desired::SessionKind;
use crate::ids::{IdError, InstanceId, ProfileName, SessionId};
use crate::time::Timestamp;

/// A label key prefix such as `io.berth`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LabelNamespace(String);

impl Default for LabelNamespace {
    fn default() -> Self {
        Self("io.berth".to_owned())
    }
}

impl LabelNamespace {
    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<namespace>.<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.0)
    }

    /// The keys of the labels in which two containers of one profile, created in one plan, differ (besides the
    /// name): the planner builds one spec per profile and changes only these.
    pub(crate) fn session_keys(&self) -> SessionKeys {
        SessionKeys { session: self.key(SESSION), kind: self.key(KIND), resume_hash: self.key(SECRET_HASH) }
    }

    /// The managed-marker key; Docker list and event filters use `<marker>=true`.
    pub fn marker(&self) -> String {
        self.key(MANAGED)
    }

    /// The owner key.
    pub fn owner_key(&self) -> String {
        self.key(OWNER)
    }

    /// The key that marks a replica's own bookkeeping containers (sentinels and claims); list filters use
    /// `label=<peer key>`. These never carry the managed marker: they are not sessions.
    pub fn peer_key(&self) -> String {
        self.key(PEER)
    }

    /// The key that marks a warm-pool container (its value is the profile); list filters use `label=<pool key>`.
    pub fn pool_key(&self) -> String {
        self.key(POOL)
    }
}

impl fmt::Debug for LabelNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelNamespace({})", self.0)
    }
}

impl fmt::Display for LabelNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A label namespace was not of the form `a.b-c`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label namespace {0:?}: use 1 to 100 characters of a-z, 0-9, '.' and '-'")]
pub struct NamespaceError(pub String);

impl FromStr for LabelNamespace {
    type Err = NamespaceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 100
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !s.starts_with('.')
            && !s.ends_with('.');
        if ok { Ok(Self(s.to_owned())) } else { Err(NamespaceError(s.chars().take(100).collect())) }
    }
}

const MANAGED: &str = "managed";
/// The label keys [`LabelNamespace::session_keys`] gives.
#[derive(Debug, Clone)]
pub(crate) struct SessionKeys {
    pub(crate) session: String,
    pub(crate) kind: String,
    pub(crate) resume_hash: String,
}

const SESSION: &str = "session";
const OWNER: &str = "owner";
const CREATED: &str = "created";
const PROFILE: &str = "profile";
const KIND: &str = "kind";
const POLICY_HASH: &str = "policy-hash";
const SECRET_HASH: &str = "resume-hash";
const EPOCH: &str = "epoch";
const PEER: &str = "peer";
const CLAIMED: &str = "claimed";
const CLAIMED_EPOCH: &str = "claimed-epoch";
const POOL: &str = "pool";

mod pool;
pub use pool::{ClaimedName, PoolLabels, pooled_name};

/// The longest label value every engine berth may run on accepts: Kubernetes' limit (decision 0019).
pub const MAX_LABEL_VALUE: usize = 63;

/// How many bytes of the secret's SHA-256 the resume-hash label keeps: 128 bits, 32 hex digits (decision 0019).
const RESUME_HASH_BYTES: usize = 16;

/// The resume-secret verifier stamped on a session's container, so that any replica can check a resume: the
/// first 128 bits of the SHA-256 of the secret, in hex. The secret is 256 random bits; the verifier never
/// reveals it.
pub fn resume_hash(secret: &str) -> String {
    hex::encode(&Sha256::digest(secret.as_bytes())[..RESUME_HASH_BYTES])
}

/// Whether `secret` matches a stored verifier: the current 32-digit form, or the full 64-digit SHA-256 that
/// containers created before decision 0019 carry. The comparison takes the same time wherever a digit differs.
pub fn resume_hash_matches(stored: &str, secret: &str) -> bool {
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    let presented = match stored.len() {
        32 => &digest[..32],
        64 => &digest[..],
        _ => return false,
    };
    stored.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What a replica's bookkeeping container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// Runs while its replica runs: its liveness signal.
    Sentinel,
    /// Never started: a lock saying its holder has taken over a dead replica's containers.
    Claim,
}

/// The identity on a sentinel or claim container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerLabels {
    /// Sentinel or claim.
    pub role: PeerRole,
    /// The replica that created it (for a claim: the holder).
    pub owner: InstanceId,
    /// Its owner's epoch when created.
    pub epoch: u64,
    /// For a claim: the dead replica, and the highest epoch of its containers the claim covers.
    pub claimed: Option<(InstanceId, u64)>,
}

impl PeerLabels {
    /// The label set for a new sentinel or claim.
    pub fn to_labels(&self, ns: &LabelNamespace) -> BTreeMap<String, String> {
        let role = match self.role {
            PeerRole::Sentinel => "sentinel",
            PeerRole::Claim => "claim",
        };
        let mut out = BTreeMap::from([
            (ns.key(PEER), role.to_owned()),
            (ns.key(OWNER), self.owner.to_string()),
            (ns.key(EPOCH), self.epoch.to_string()),
        ]);
        if let Some((dead, epoch)) = &self.claimed {
            out.insert(ns.key(CLAIMED), dead.to_string());
            out.insert(ns.key(CLAIMED_EPOCH), epoch.to_string());
        }
        out
    }

    /// Reads a sentinel's or claim's labels; `Ok(None)` when the container is not one in this namespace.
    ///
    /// # Errors
    /// A container with the peer key whose other labels are missing or malformed.
    pub fn parse(ns: &LabelNamespace, labels: &HashMap<String, String>) -> Result<Option<Self>, LabelError> {
        let role = match labels.get(&ns.key(PEER)).map(String::as_str) {
            Some("sentinel") => PeerRole::Sentinel,
            Some("claim") => PeerRole::Claim,
            Some(_) => {
                return Err(LabelError::Malformed { key: ns.key(PEER), reason: "expected sentinel or claim".into() });
            }
            None => return Ok(None),
        };
        let get = |suffix: &str| -> Result<&str, LabelError> {
            labels.get(&ns.key(suffix)).map(String::as_str).ok_or_else(|| LabelError::Missing(ns.key(suffix)))
        };
        let bad = |suffix: &str, reason: String| LabelError::Malformed { key: ns.key(suffix), reason };
        let number = |suffix: &str| -> Result<u64, LabelError> {
            get(suffix)?.parse::<u64>().map_err(|e| bad(suffix, e.to_string()))
        };
        let owner = get(OWNER)?.parse().map_err(|e: IdError| bad(OWNER, e.to_string()))?;
        let claimed = match role {
            PeerRole::Sentinel => None,
            PeerRole::Claim => {
                Some((get(CLAIMED)?.parse().map_err(|e: IdError| bad(CLAIMED, e.to_string()))?, number(CLAIMED_EPOCH)?))
            }
        };
        Ok(Some(Self { role, owner, epoch: number(EPOCH)?, claimed }))
    }
}

/// The identity berth stamps on a session container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManagedLabels {
    /// The session the container serves.
    pub session: SessionId,
    /// The instance that created it.
    pub owner: InstanceId,
    /// When berth created it.
    pub created_at: Timestamp,
    /// The profile it runs.
    pub profile: ProfileName,
    /// Anonymous or authenticated.
    pub kind: SessionKind,
    /// Hash of the profile it was created from.
    pub policy_hash: String,
    /// The resume-secret verifier ([`resume_hash`]), so another replica can check a resume.
    pub resume_hash: Option<String>,
    /// The owner's fencing epoch when it created the container.
    pub epoch: u64,
}

/// A container carries berth's marker but its other labels are missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A required label is absent.
    #[error("label {0} is missing")]
    Missing(String),
    /// A label's value does not parse.
    #[error("label {key} is malformed: {reason}")]
    Malformed {
        /// The label key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

impl ManagedLabels {
    /// The full label set for a new container, marker included.
    pub fn to_labels(&self, ns: &LabelNamespace) -> BTreeMap<String, String> {
        let mut out = BTreeMap::from([
            (ns.key(MANAGED), "true".to_owned()),
            (ns.key(SESSION), self.session.to_string()),
            (ns.key(OWNER), self.owner.to_string()),
            (ns.key(CREATED), self.created_at.as_millis().to_string()),
            (ns.key(PROFILE), self.profile.to_string()),
            (ns.key(KIND), self.kind.as_str().to_owned()),
            (ns.key(POLICY_HASH), self.policy_hash.clone()),
            (ns.key(EPOCH), self.epoch.to_string()),
        ]);
        if let Some(h) = &self.resume_hash {
            out.insert(ns.key(SECRET_HASH), h.clone());
        }
        out
    }

    /// Reads a container's labels. `Ok(None)` means the container is not managed in this namespace.
    ///
    /// # Errors
    /// A container that carries the marker but has missing or malformed identity labels.
    pub fn parse(ns: &LabelNamespace, labels: &HashMap<String, String>) -> Result<Option<Self>, LabelError> {
        if labels.get(&ns.key(MANAGED)).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let get = |suffix: &str| -> Result<&str, LabelError> {
            labels.get(&ns.key(suffix)).map(String::as_str).ok_or_else(|| LabelError::Missing(ns.key(suffix)))
        };
        let bad = |suffix: &str, reason: String| LabelError::Malformed { key: ns.key(suffix), reason };
        let id_err = |suffix: &'static str| move |e: IdError| bad(suffix, e.to_string());
        let created = get(CREATED)?;
        let epoch = match labels.get(&ns.key(EPOCH)) {
            Some(v) => v.parse::<u64>().map_err(|e| bad(EPOCH, e.to_string()))?,
            None => 0,
        };
        let hash = get(POLICY_HASH)?;
        if hash.len() > 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(POLICY_HASH, "expected hex digits".into()));
        }
        let resume_hash = match labels.get(&ns.key(SECRET_HASH)) {
            Some(h) if matches!(h.len(), 32 | 64) && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.clone()),
            Some(_) => return Err(bad(SECRET_HASH, "expected 32 (or, from earlier versions, 64) hex digits".into())),
            None => None,
        };
        Ok(Some(Self {
            session: get(SESSION)?.parse().map_err(id_err(SESSION))?,
            owner: get(OWNER)?.parse().map_err(id_err(OWNER))?,
            created_at: Timestamp::from_millis(
                created.parse().map_err(|e: std::num::ParseIntError| bad(CREATED, e.to_string()))?,
            ),
            profile: get(PROFILE)?.parse().map_err(id_err(PROFILE))?,
            kind: get(KIND)?.parse().map_err(|()| bad(KIND, "expected anonymous or authenticated".into()))?,
            policy_hash: hash.to_owned(),
            resume_hash,
            epoch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ManagedLabels {
        ManagedLabels {
            session: SessionId::from_bytes([7; 16]),
            owner: "a".parse().expect("valid"),
            created_at: Timestamp::from_millis(42),
            profile: "default".parse().expect("valid"),
            kind: SessionKind::Anonymous,
            policy_hash: "00ff".into(),
            resume_hash: Some(resume_hash("secret")),
            epoch: 3,
        }
    }

    fn as_hash(m: BTreeMap<String, String>) -> HashMap<String, String> {
        m.into_iter().collect()
    }

    #[test]
    fn labels_round_trip_through_parse() {
        let ns = LabelNamespace::default();
        let parsed = ManagedLabels::parse(&ns, &as_hash(sample().to_labels(&ns))).expect("parses");
        assert_eq!(parsed, Some(sample()));
    }

    #[test]
    fn a_container_without_the_marker_is_not_managed() {
        let ns = LabelNamespace::default();
        let mut labels = as_hash(sample().to_labels(&ns));
        labels.remove(&ns.marker());
        assert_eq!(ManagedLabels::parse(&ns, &labels), Ok(None));
        labels.insert(ns.marker(), "yes".into());
        assert_eq!(ManagedLabels::parse(&ns, &labels), Ok(None));
    }

    #[test]
    fn peer_labels_round_trip_and_are_not_sessions() {
        let ns = LabelNamespace::default();
        let claim = PeerLabels {
            role: PeerRole::Claim,
            owner: "b".parse().expect("valid"),
            epoch: 2,
            claimed: Some(("a".parse().expect("valid"), 7)),
        };
        let labels = as_hash(claim.to_labels(&ns));
        assert_eq!(PeerLabels::parse(&ns, &labels), Ok(Some(claim)));
        assert_eq!(ManagedLabels::parse(&ns, &labels), Ok(None), "a claim is never a session container");
        let theirs: LabelNamespace = "com.lookalike".parse().expect("valid");
        assert_eq!(PeerLabels::parse(&theirs, &labels), Ok(None));
        let mut broken = labels;
        broken.remove(&ns.key(CLAIMED_EPOCH));
        assert!(matches!(PeerLabels::parse(&ns, &broken), Err(LabelError::Missing(_))));
    }

    #[test]
    fn every_label_value_fits_every_engine() {
        let ns = LabelNamespace::default();
        let long: InstanceId = "i".repeat(63).parse().expect("the longest instance id");
        let session = ManagedLabels {
            owner: long.clone(),
            profile: "p".repeat(63).parse().expect("the longest profile name"),
            created_at: Timestamp::from_millis(u64::MAX),
            kind: SessionKind::Authenticated,
            policy_hash: "f".repeat(16),
            epoch: u64::MAX,
            ..sample()
        };
        let claim =
            PeerLabels { role: PeerRole::Claim, owner: long.clone(), epoch: u64::MAX, claimed: Some((long, u64::MAX)) };
        for (key, value) in session.to_labels(&ns).into_iter().chain(claim.to_labels(&ns)) {
            assert!(value.len() <= MAX_LABEL_VALUE, "{key} is {} characters: {value}", value.len());
        }
    }

    #[test]
    fn a_resume_secret_matches_its_hash_in_both_forms_and_nothing_else() {
        let short = resume_hash("the secret");
        assert_eq!(short.len(), 32);
        assert!(resume_hash_matches(&short, "the secret"));
        assert!(!resume_hash_matches(&short, "the secreT"));
        // A container created before the verifier was shortened carries the whole SHA-256.
        let full = hex::encode(Sha256::digest(b"the secret"));
        assert!(resume_hash_matches(&full, "the secret"));
        assert!(!resume_hash_matches(&full, "another"));
        assert!(!resume_hash_matches(&full[..40], "the secret"), "no other length is accepted");
        let ns = LabelNamespace::default();
        for h in [short, full] {
            let mut labels = as_hash(sample().to_labels(&ns));
            labels.insert(ns.key(SECRET_HASH), h.clone());
            let parsed = ManagedLabels::parse(&ns, &labels).expect("parses").expect("managed");
            assert_eq!(parsed.resume_hash, Some(h));
        }
    }

    #[test]
    fn another_namespace_is_invisible() {
        let ours = LabelNamespace::default();
        let theirs: LabelNamespace = "com.lookalike".parse().expect("valid");
        let labels = as_hash(sample().to_labels(&theirs));
        assert_eq!(ManagedLabels::parse(&ours, &labels), Ok(None));
    }

    #[test]
    fn a_marked_container_with_a_bad_session_label_is_an_error() {
        let ns = LabelNamespace::default();
        let mut labels = as_hash(sample().to_labels(&ns));
        labels.insert(ns.key(SESSION), "../x".into());
        assert!(matches!(ManagedLabels::parse(&ns, &labels), Err(LabelError::Malformed { .. })));
        labels.remove(&ns.key(SESSION));
        assert!(matches!(ManagedLabels::parse(&ns, &labels), Err(LabelError::Missing(_))));
    }
}
