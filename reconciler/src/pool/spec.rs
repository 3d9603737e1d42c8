//! What a warm-pool container is made of, and the one line that turns it into a session's (decision 0025).
//!
//! A pooled container is a cold session's container minus everything only a session knows: its name and labels
//! are the pool's, its environment is the profile's fixed one, and berth's launcher runs as the entrypoint with
//! the profile's command as arguments. At a claim berth writes [`settings_line`] to the launcher's stdin; the
//! launcher sets that environment and execs the command. The launcher is `launcher/main.rs`; the format here and
//! its parser there are tested against each other.

use crate::desired::EnvVar;
use crate::labels::{PoolLabels, pooled_name};
use crate::plan::ContainerSpec;
use crate::policy::{Policy, Profile};

/// Where the launcher is mounted in a pooled container.
pub const LAUNCHER_PATH: &str = "/sbin/berth-launch";

/// What the launcher prints once its terminal no longer echoes, followed by a newline: berth writes the settings
/// only after seeing it and the end of its line.
/// An OSC sequence, which terminals ignore: a claim hands the terminals only what follows it, though a replay
/// from the container's log after a restart shows it to the page, which draws nothing.
pub const LAUNCHER_WAITING: &[u8] = b"\x1b]berth;launcher-waiting\x07";

/// The spec of a new pooled container of `profile`, named with `nonce` and served by the launcher at
/// `launcher` on the engine's host. `None` when the profile cannot keep a pool ([`Profile::not_poolable`]).
pub fn pooled_spec(
    profile: &Profile,
    labels: &PoolLabels,
    policy: &Policy,
    nonce: u64,
    launcher: &str,
) -> Option<ContainerSpec> {
    if profile.not_poolable().is_some() {
        return None;
    }
    Some(ContainerSpec {
        name: pooled_name(&policy.docker.name_prefix, nonce),
        image: profile.image.clone(),
        command: profile.command.clone(),
        env: profile.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: v.clone(), sensitive: false }).collect(),
        labels: labels.to_labels(&policy.docker.namespace),
        user: profile.user.clone(),
        working_dir: profile.working_dir.clone(),
        resources: profile.resources.clone(),
        security: profile.security.clone(),
        network: profile.network.clone(),
        healthcheck: profile.healthcheck.clone(),
        logs: profile.logs.clone(),
        runtime: profile.runtime.clone(),
        launcher: Some(launcher.to_owned()),
    })
}

/// The settings line for a session: `berth1`, then ` e:<hex of NAME=value>` per variable of the session's own
/// environment (allowed client values and mapped credentials; the profile's fixed values are in the container
/// already), then `\n`. It carries credentials: it is written to the container and never logged.
pub fn settings_line(session_env: &[EnvVar]) -> Vec<u8> {
    let mut line = b"berth1".to_vec();
    for var in session_env {
        line.extend_from_slice(b" e:");
        line.extend_from_slice(hex::encode(format!("{}={}", var.name, var.value)).as_bytes());
    }
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    #[test]
    fn a_settings_line_is_hex_words_after_the_version() {
        let env = [
            EnvVar { name: "LANG".into(), value: "C.UTF-8".into(), sensitive: false },
            EnvVar { name: "TOKEN".into(), value: "a b\nc".into(), sensitive: true },
        ];
        let line = String::from_utf8(settings_line(&env)).expect("ascii");
        assert_eq!(line, format!("berth1 e:{} e:{}\n", hex::encode("LANG=C.UTF-8"), hex::encode("TOKEN=a b\nc")));
        assert_eq!(settings_line(&[]), b"berth1\n");
    }

    #[test]
    fn a_pooled_spec_has_the_pool_identity_and_only_the_fixed_environment() {
        let mut policy = Policy::default();
        let mut profile = Profile::with_image("berth-session:latest");
        profile.env.insert("FIXED".into(), "1".into());
        assert_eq!(
            pooled_spec(&profile, &labels(&profile), &policy, 1, "/var/lib/berth/berth-launch"),
            None,
            "no command: not poolable"
        );
        profile.command = Some(vec!["/bin/sh".into(), "-i".into()]);
        policy.docker.name_prefix = "b".into();
        let spec = pooled_spec(&profile, &labels(&profile), &policy, 255, "/x/berth-launch").expect("poolable");
        assert_eq!(spec.name, "b-pool-00000000000000ff");
        assert_eq!(spec.launcher.as_deref(), Some("/x/berth-launch"));
        assert_eq!(spec.command, profile.command);
        assert_eq!(spec.env, vec![EnvVar { name: "FIXED".into(), value: "1".into(), sensitive: false }]);
        assert!(!spec.is_marked(&policy.docker.namespace), "a pooled container is no session's yet");
        assert_eq!(spec.labels.get("io.berth.pool").map(String::as_str), Some("default"));
    }

    fn labels(profile: &Profile) -> PoolLabels {
        PoolLabels {
            profile: "default".parse().expect("valid"),
            owner: "a".parse().expect("valid"),
            epoch: 1,
            created_at: Timestamp::from_millis(5),
            policy_hash: profile.hash(),
        }
    }
}
