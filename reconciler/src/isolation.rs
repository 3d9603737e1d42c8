//! Which OCI runtime each profile's containers run on, checked against the runtimes the engine registered,
//! and what a runtime cannot honour.
//!
//! gVisor (`runsc`) runs the whole sandbox, its kernel (the Sentry), its file proxy and, on the default ptrace
//! platform, one stub process per process in the sandbox, inside the container's cgroup. Docker's pids limit
//! therefore counts the sandbox's own host threads, not the session's processes: an idle shell costs about 45
//! of them (55 with `init`), each further process about 8 more, and when the limit is reached the Sentry
//! cannot create a thread and the container exits at once with status 2 (a Go runtime panic). A profile on
//! `runsc` therefore runs without `resources.pids`; see docs/decisions/0017-gvisor-runtime-per-profile.md.

use crate::ProfileName;
use crate::policy::Policy;

/// The name gVisor's runtime is registered under.
pub const GVISOR: &str = "runsc";

/// Whether containers on `runtime` run without Docker's pids limit (see the module docs).
pub fn drops_pids_limit(runtime: Option<&str>) -> bool {
    runtime == Some(GVISOR)
}

/// One line per setting a profile's runtime does not apply, for `berth policy check`.
pub fn notes(policy: &Policy) -> Vec<String> {
    policy
        .profiles
        .iter()
        .filter(|(_, p)| drops_pids_limit(p.runtime.as_deref()))
        .map(|(name, p)| {
            format!(
                "note: profiles.{name}: runtime {GVISOR} runs without resources.pids ({}): under gVisor the limit \
                 counts the sandbox's own threads, and reaching it stops the session; memory and cpus still apply",
                p.resources.pids
            )
        })
        .collect()
}

/// A profile names a runtime the engine does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRuntime {
    /// The profile.
    pub profile: ProfileName,
    /// The runtime it names.
    pub runtime: String,
}

/// Every profile whose runtime is not among `registered` (the engine's runtime names), in profile order.
pub fn unknown_runtimes(policy: &Policy, registered: &[String]) -> Vec<UnknownRuntime> {
    policy
        .profiles
        .iter()
        .filter_map(|(name, p)| {
            let rt = p.runtime.as_ref()?;
            (!registered.contains(rt)).then(|| UnknownRuntime { profile: name.clone(), runtime: rt.clone() })
        })
        .collect()
}

/// Whether any profile names a runtime (only then does the engine need asking).
pub fn names_runtimes(policy: &Policy) -> bool {
    policy.profiles.values().any(|p| p.runtime.is_some())
}

/// The error text for `unknown`: one line per profile, then the engine's runtimes.
pub fn describe_unknown(unknown: &[UnknownRuntime], registered: &[String]) -> String {
    let mut names: Vec<&str> = registered.iter().map(String::as_str).collect();
    names.sort_unstable();
    let have = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    unknown
        .iter()
        .map(|u| {
            format!(
                "profiles.{}.runtime: the engine has no runtime named {:?} (its runtimes: {have})",
                u.profile, u.runtime
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Profile;

    fn policy_with(runtime: Option<&str>) -> Policy {
        let mut p = Policy::default();
        let mut profile = Profile::with_image("berth-session:latest");
        profile.runtime = runtime.map(str::to_owned);
        p.profiles.insert("sandboxed".parse().expect("name"), profile);
        p
    }

    #[test]
    fn a_profile_naming_an_unregistered_runtime_is_reported_with_the_engines_runtimes() {
        let policy = policy_with(Some("kata"));
        let registered = vec!["runsc".to_owned(), "runc".to_owned()];
        let unknown = unknown_runtimes(&policy, &registered);
        assert_eq!(
            unknown,
            vec![UnknownRuntime { profile: "sandboxed".parse().expect("name"), runtime: "kata".into() }]
        );
        assert_eq!(
            describe_unknown(&unknown, &registered),
            "profiles.sandboxed.runtime: the engine has no runtime named \"kata\" (its runtimes: runc, runsc)"
        );
        assert!(unknown_runtimes(&policy_with(Some("runsc")), &registered).is_empty());
        assert!(unknown_runtimes(&policy_with(None), &[]).is_empty(), "the engine's default needs no check");
    }

    #[test]
    fn only_gvisor_profiles_drop_the_pids_limit_and_each_says_so() {
        assert!(drops_pids_limit(Some("runsc")));
        assert!(!drops_pids_limit(Some("runc")) && !drops_pids_limit(None));
        let notes = notes(&policy_with(Some("runsc")));
        assert_eq!(notes.len(), 1);
        assert!(notes[0].starts_with("note: profiles.sandboxed: runtime runsc runs without resources.pids (50)"));
        assert!(super::notes(&policy_with(Some("runc"))).is_empty());
    }
}
