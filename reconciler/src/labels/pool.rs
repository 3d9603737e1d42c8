//! The identity of warm-pool containers (decision 0025): the labels a pooled container is created with, and the
//! name a claim renames it to, which is how the claim survives a crash.
//!
//! Docker cannot change a container's labels, but it renames atomically. A pooled container is created with
//! [`PoolLabels`] and a pool name; a claim renames it to a [`ClaimedName`] that carries the session, its kind and
//! its resume verifier, so that after a restart (or on another replica) the container reads as that session's.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    CREATED, EPOCH, LabelError, LabelNamespace, MANAGED, ManagedLabels, OWNER, PEER, POLICY_HASH, POOL, PROFILE,
};
use crate::desired::SessionKind;
use crate::ids::{InstanceId, ProfileName, SessionId};
use crate::time::Timestamp;

/// The labels of a warm-pool container. They never carry the managed marker: until a claim names its session,
/// a pooled container is not a session container, and the session planner never counts it as an orphan.
/// Pooled containers are listed with `label=<ns>.pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolLabels {
    /// The profile it was created for.
    pub profile: ProfileName,
    /// The replica whose pool it is.
    pub owner: InstanceId,
    /// The owner's fencing epoch when it created the container.
    pub epoch: u64,
    /// When berth created it; `pool.max_age` counts from here.
    pub created_at: Timestamp,
    /// The hash of the profile it was created from: a pool whose profile changed is drained.
    pub policy_hash: String,
}

impl PoolLabels {
    /// The full label set for a new pooled container.
    pub fn to_labels(&self, ns: &LabelNamespace) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ns.key(POOL), self.profile.to_string()),
            (ns.key(OWNER), self.owner.to_string()),
            (ns.key(EPOCH), self.epoch.to_string()),
            (ns.key(CREATED), self.created_at.as_millis().to_string()),
            (ns.key(POLICY_HASH), self.policy_hash.clone()),
        ])
    }

    /// Reads a container's labels. `Ok(None)` means it is not a pooled container of this namespace (a session
    /// container, a peer's bookkeeping container, or anyone else's).
    ///
    /// # Errors
    /// A container that carries the pool key but has missing or malformed labels.
    pub fn parse(ns: &LabelNamespace, labels: &HashMap<String, String>) -> Result<Option<Self>, LabelError> {
        let Some(profile) = labels.get(&ns.key(POOL)) else {
            return Ok(None);
        };
        if labels.contains_key(&ns.key(MANAGED)) || labels.contains_key(&ns.key(PEER)) {
            return Err(LabelError::Malformed {
                key: ns.key(POOL),
                reason: "a pooled container carries neither the managed marker nor the peer key".into(),
            });
        }
        let get = |suffix: &str| -> Result<&str, LabelError> {
            labels.get(&ns.key(suffix)).map(String::as_str).ok_or_else(|| LabelError::Missing(ns.key(suffix)))
        };
        let bad = |suffix: &str, reason: String| LabelError::Malformed { key: ns.key(suffix), reason };
        let number = |suffix: &'static str| -> Result<u64, LabelError> {
            get(suffix)?.parse::<u64>().map_err(|e| bad(suffix, e.to_string()))
        };
        let hash = get(POLICY_HASH)?;
        if hash.is_empty() || hash.len() > 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(POLICY_HASH, "expected hex digits".into()));
        }
        Ok(Some(Self {
            profile: profile.parse().map_err(|e: crate::ids::IdError| bad(PROFILE, e.to_string()))?,
            owner: get(OWNER)?.parse().map_err(|e: crate::ids::IdError| bad(OWNER, e.to_string()))?,
            epoch: number(EPOCH)?,
            created_at: Timestamp::from_millis(number(CREATED)?),
            policy_hash: hash.to_owned(),
        }))
    }
}

/// What a claim renames a pooled container to: `<prefix>-<session>--<kind>--<verifier>`, the verifier being the
/// resume hash or `none`. The session part alone is the name a cold session's container gets, so the two never
/// collide, and a name filter is never needed to find either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimedName {
    /// The session that claimed the container.
    pub session: SessionId,
    /// Its kind.
    pub kind: SessionKind,
    /// Its resume verifier ([`super::resume_hash`]), when it has a secret.
    pub resume_hash: Option<String>,
}

/// The verifier part of a claimed name for a session without a resume secret.
const NO_VERIFIER: &str = "none";

impl ClaimedName {
    /// The container name under `prefix` (`docker.name_prefix`).
    pub fn render(&self, prefix: &str) -> String {
        let verifier = self.resume_hash.as_deref().unwrap_or(NO_VERIFIER);
        format!("{prefix}-{}--{}--{verifier}", self.session, self.kind.as_str())
    }

    /// Reads a container name (Docker's, with or without its leading `/`). `None` when it is not a claimed
    /// name under `prefix`: a pooled container still waiting, or anything else.
    pub fn parse(prefix: &str, name: &str) -> Option<Self> {
        let rest = name.strip_prefix('/').unwrap_or(name).strip_prefix(prefix)?.strip_prefix('-')?;
        let mut parts = rest.split("--");
        let (session, kind, verifier) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let resume_hash = match verifier {
            NO_VERIFIER => None,
            h if h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
                Some(h.to_owned())
            }
            _ => return None,
        };
        Some(Self { session: session.parse().ok()?, kind: kind.parse().ok()?, resume_hash })
    }

    /// The session identity of a claimed pooled container: what its labels would say had it been created cold
    /// for this session. The controller reads claimed containers through this, after a restart too.
    pub fn managed_labels(&self, pool: &PoolLabels) -> ManagedLabels {
        ManagedLabels {
            session: self.session,
            owner: pool.owner.clone(),
            created_at: pool.created_at,
            profile: pool.profile.clone(),
            kind: self.kind,
            policy_hash: pool.policy_hash.clone(),
            resume_hash: self.resume_hash.clone(),
            epoch: pool.epoch,
        }
    }
}

/// The name of a pooled container before any claim: `<prefix>-pool-<nonce>`, the nonce (16 hex digits) drawn
/// by whoever creates it. Never a [`ClaimedName`].
pub fn pooled_name(prefix: &str, nonce: u64) -> String {
    format!("{prefix}-pool-{nonce:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{PeerLabels, PeerRole, resume_hash};

    fn sample() -> PoolLabels {
        PoolLabels {
            profile: "default".parse().expect("valid"),
            owner: "a".parse().expect("valid"),
            epoch: 2,
            created_at: Timestamp::from_millis(1_000),
            policy_hash: "00ff00ff00ff00ff".into(),
        }
    }

    fn as_hash(m: BTreeMap<String, String>) -> HashMap<String, String> {
        m.into_iter().collect()
    }

    #[test]
    fn pool_labels_round_trip_and_are_neither_sessions_nor_peers() {
        let ns = LabelNamespace::default();
        let labels = as_hash(sample().to_labels(&ns));
        assert_eq!(PoolLabels::parse(&ns, &labels), Ok(Some(sample())));
        assert_eq!(ManagedLabels::parse(&ns, &labels), Ok(None), "the session planner never sees a pooled one");
        assert_eq!(PeerLabels::parse(&ns, &labels), Ok(None));
        let theirs: LabelNamespace = "com.lookalike".parse().expect("valid");
        assert_eq!(PoolLabels::parse(&theirs, &labels), Ok(None));
    }

    #[test]
    fn session_and_peer_containers_are_not_pooled() {
        let ns = LabelNamespace::default();
        let peer = PeerLabels { role: PeerRole::Sentinel, owner: "a".parse().expect("valid"), epoch: 1, claimed: None };
        assert_eq!(PoolLabels::parse(&ns, &as_hash(peer.to_labels(&ns))), Ok(None));
    }

    #[test]
    fn a_pooled_container_with_broken_labels_is_an_error() {
        let ns = LabelNamespace::default();
        let mut labels = as_hash(sample().to_labels(&ns));
        labels.remove(&ns.key(CREATED));
        assert!(matches!(PoolLabels::parse(&ns, &labels), Err(LabelError::Missing(_))));
        let mut labels = as_hash(sample().to_labels(&ns));
        labels.insert(ns.key(POLICY_HASH), "not hex".into());
        assert!(matches!(PoolLabels::parse(&ns, &labels), Err(LabelError::Malformed { .. })));
        let mut labels = as_hash(sample().to_labels(&ns));
        labels.insert(ns.marker(), "true".into());
        assert!(matches!(PoolLabels::parse(&ns, &labels), Err(LabelError::Malformed { .. })), "both kinds at once");
    }

    #[test]
    fn a_claimed_name_round_trips_and_gives_the_session_identity() {
        let session = SessionId::from_bytes([9; 16]);
        for (kind, verifier) in
            [(SessionKind::Anonymous, None), (SessionKind::Authenticated, Some(resume_hash("the secret")))]
        {
            let claimed = ClaimedName { session, kind, resume_hash: verifier.clone() };
            let name = claimed.render("berth");
            assert_eq!(ClaimedName::parse("berth", &name), Some(claimed.clone()));
            assert_eq!(ClaimedName::parse("berth", &format!("/{name}")), Some(claimed.clone()), "Docker's form");
            assert_eq!(ClaimedName::parse("other", &name), None);
            let labels = claimed.managed_labels(&sample());
            assert_eq!(labels.session, session);
            assert_eq!(labels.kind, kind);
            assert_eq!(labels.resume_hash, verifier);
            assert_eq!((labels.owner, labels.epoch, labels.policy_hash), (sample().owner, 2, sample().policy_hash));
        }
    }

    #[test]
    fn pool_and_cold_names_are_never_claimed_names() {
        let session = SessionId::from_bytes([9; 16]);
        assert_eq!(ClaimedName::parse("berth", &pooled_name("berth", 7)), None);
        assert_eq!(ClaimedName::parse("berth", &format!("berth-{session}")), None);
        assert_eq!(ClaimedName::parse("berth", &format!("berth-{session}--anonymous--none--x")), None);
        assert_eq!(ClaimedName::parse("berth", &format!("berth-{session}--root--none")), None);
        assert_eq!(ClaimedName::parse("berth", &format!("berth-{session}--anonymous--ABC")), None);
        assert_eq!(pooled_name("berth", 7), "berth-pool-0000000000000007");
    }
}
