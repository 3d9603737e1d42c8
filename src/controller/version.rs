//! The policy in force, with the hashes that every pass reads computed once per policy version rather than on
//! every pass (the drift gauge compared each running container's label with a fresh hash of its profile).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use berth_reconciler::{Policy, ProfileName};

/// A policy and its hashes.
#[derive(Debug, Clone)]
pub(super) struct PolicyVersion {
    policy: Arc<Policy>,
    hash: String,
    profiles: HashMap<ProfileName, String>,
}

impl PolicyVersion {
    pub(super) fn new(policy: Arc<Policy>) -> Self {
        let hash = policy.hash();
        let profiles = policy.profiles.iter().map(|(name, p)| (name.clone(), p.hash())).collect();
        Self { policy, hash, profiles }
    }

    /// The whole policy's hash (`/readyz`, logs).
    pub(super) fn hash(&self) -> &str {
        &self.hash
    }

    /// A profile's hash, as stamped on the containers made from it; `None` for a profile no longer in the policy.
    pub(super) fn profile_hash(&self, name: &ProfileName) -> Option<&str> {
        self.profiles.get(name).map(String::as_str)
    }
}

impl Deref for PolicyVersion {
    type Target = Policy;

    fn deref(&self) -> &Policy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hashes_are_those_of_the_policy_and_its_profiles() {
        let policy = Arc::new(Policy::default());
        let v = PolicyVersion::new(policy.clone());
        assert_eq!(v.hash(), policy.hash());
        for (name, p) in &policy.profiles {
            assert_eq!(v.profile_hash(name), Some(p.hash().as_str()));
        }
        assert_eq!(v.profile_hash(&"absent".parse().expect("valid")), None);
    }
}
