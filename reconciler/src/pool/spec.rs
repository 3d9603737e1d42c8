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

/// How the launcher's announcement begins. It prints the whole announcement once its terminal no longer echoes,
/// followed by a newline: berth writes the settings only after seeing it and the end of its line.
/// An OSC sequence, which terminals ignore: a claim hands the terminals only what follows it, though a replay
/// from the container's log after a restart shows it to the page, which draws nothing.
pub const LAUNCHER_WAITING: &[u8] = b"\x1b]berth;launcher-waiting";

/// Which settings lines a waiting launcher reads, as its announcement says. A pooled container adopted after an
/// upgrade of berth may run an earlier launcher than the one berth installs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LauncherVersion {
    /// `ESC ] berth;launcher-waiting BEL`: reads `berth1` lines (the environment only).
    V1,
    /// `ESC ] berth;launcher-waiting;2 BEL`: reads `berth1` and `berth2` lines (`berth2` adds the terminal size,
    /// which the launcher sets on its terminal before it runs the command, so the claim needs no resize call),
    /// and prints [`LAUNCHER_CLAIMED`] once it has read one, so the settings may go before the claim's rename.
    V2,
    /// `ESC ] berth;launcher-waiting;3 BEL`: as [`LauncherVersion::V2`], and ends [`LAUNCHER_CLAIMED`] with a
    /// newline, so that the engine's log holds the mark at once, even when the command never ends a line (the
    /// log keeps a line only once it ends); the claim reads that newline off with the mark.
    V3,
}

/// What a [`LauncherVersion::V2`] launcher prints (a `V3` one, then a newline) as soon as it has read a settings line, before
/// the command runs: a claim hands the terminals only what follows it, and an earlier run's pooled container
/// whose log holds it took a claim's settings and is never adopted into the pool.
pub const LAUNCHER_CLAIMED: &[u8] = b"\x1b]berth;launcher-claimed\x07";

/// The version of the launcher whose output so far is `seen`, once its announcement and the end of that line are
/// there; `None` before (or when what follows the announcement's start is not a version berth knows).
pub fn launcher_waiting(seen: &[u8]) -> Option<LauncherVersion> {
    let at = seen.windows(LAUNCHER_WAITING.len()).position(|w| w == LAUNCHER_WAITING)? + LAUNCHER_WAITING.len();
    let rest = &seen[at..];
    let (version, tail) = if let Some(tail) = rest.strip_prefix(b"\x07") {
        (LauncherVersion::V1, tail)
    } else if let Some(tail) = rest.strip_prefix(b";2\x07") {
        (LauncherVersion::V2, tail)
    } else if let Some(tail) = rest.strip_prefix(b";3\x07") {
        (LauncherVersion::V3, tail)
    } else {
        return None;
    };
    tail.contains(&b'\n').then_some(version)
}

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
/// already), then `\n`. With a terminal size (columns, rows), for a [`LauncherVersion::V2`] launcher: `berth2`,
/// then ` s:<cols>x<rows>`, then the variables. It carries credentials: it is written to the container and never
/// logged.
pub fn settings_line(session_env: &[EnvVar], size: Option<(u16, u16)>) -> Vec<u8> {
    let mut line = match size {
        Some((cols, rows)) => format!("berth2 s:{cols}x{rows}").into_bytes(),
        None => b"berth1".to_vec(),
    };
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
        let line = String::from_utf8(settings_line(&env, None)).expect("ascii");
        assert_eq!(line, format!("berth1 e:{} e:{}\n", hex::encode("LANG=C.UTF-8"), hex::encode("TOKEN=a b\nc")));
        assert_eq!(settings_line(&[], None), b"berth1\n");
        let line = String::from_utf8(settings_line(&env[..1], Some((132, 43)))).expect("ascii");
        assert_eq!(line, format!("berth2 s:132x43 e:{}\n", hex::encode("LANG=C.UTF-8")));
    }

    #[test]
    fn the_announcement_gives_the_launchers_version_once_its_line_has_ended() {
        let mut seen = b"\r\n".to_vec();
        assert_eq!(launcher_waiting(&seen), None);
        seen.extend_from_slice(b"\x1b]berth;launcher-waiting\x07");
        assert_eq!(
            launcher_waiting(&seen),
            None,
            "the line has not ended: a restarted berth would not find it in the log"
        );
        seen.extend_from_slice(b"\r");
        assert_eq!(launcher_waiting(&seen), None);
        seen.extend_from_slice(b"\n");
        assert_eq!(launcher_waiting(&seen), Some(LauncherVersion::V1));
        assert_eq!(launcher_waiting(b"\x1b]berth;launcher-waiting;2\x07\r\n"), Some(LauncherVersion::V2));
        assert_eq!(launcher_waiting(b"\x1b]berth;launcher-waiting;3\x07\r\n"), Some(LauncherVersion::V3));
        assert_eq!(launcher_waiting(b"\x1b]berth;launcher-waiting;9\x07\r\n"), None, "an unknown version");
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
