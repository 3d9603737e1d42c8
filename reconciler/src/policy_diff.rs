//! What a policy change does: `berth policy diff OLD NEW`, and what a reload may apply. Pure set arithmetic over
//! the two policies' flattened keys, each change classified by whom it reaches ([`REACH`], one table for both).

mod reach;

use std::collections::BTreeMap;

use serde::Serialize;

pub use self::reach::REACH;
use crate::policy::Policy;

/// Whom a changed key reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Sessions opened after the reload; running containers keep what they were created with (drift shows
    /// in the admin API and `berth_containers_policy_drift`).
    NewSessions,
    /// Connections opened after the reload (a client that reconnects to a running session included); an open
    /// connection keeps the value it started with.
    NewConnections,
    /// New and existing sessions alike (limits, timeouts, controller settings).
    AllSessions,
    /// Only a restart applies it (listeners and the admin API's auth, label namespace, name prefix, startup
    /// handling); a reload keeps the running value.
    Restart,
}

impl Reach {
    /// The reach of a key as [`diff`] names it (`profiles.default.resources.memory_bytes`): the row of the key
    /// itself, else of the nearest mapping above it, with any profile name read as `<name>`. A key in no row
    /// at all needs a restart, so that an unlisted key is never applied half-way.
    pub fn of(key: &str) -> Self {
        reach_row(key).map_or(Self::Restart, |(_, r)| r)
    }

    /// In words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NewSessions => "new sessions only; running sessions keep their containers",
            Self::NewConnections => "new connections; an open connection keeps the old value until it reconnects",
            Self::AllSessions => "new and existing sessions",
            Self::Restart => "needs a restart; a reload keeps the current value",
        }
    }
}

/// The [`REACH`] row that covers `key`.
fn reach_row(key: &str) -> Option<(&'static str, Reach)> {
    let normal = match key.strip_prefix("profiles.") {
        Some(rest) => match rest.split_once('.') {
            Some((_, tail)) => format!("profiles.<name>.{tail}"),
            None => "profiles".to_owned(),
        },
        None => key.to_owned(),
    };
    let mut candidate = normal.as_str();
    loop {
        if let Some(row) = REACH.iter().find(|(k, _)| *k == candidate) {
            return Some(*row);
        }
        candidate = candidate.rsplit_once('.')?.0;
    }
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Dotted key path.
    pub key: String,
    /// Old value as JSON text, `None` when added.
    pub old: Option<String>,
    /// New value as JSON text, `None` when removed.
    pub new: Option<String>,
    /// Whom it reaches.
    pub reach: Reach,
}

/// A serialized `Duration` (`{"secs": .., "nanos": ..}`), written as the policy file writes it (`30s`, `1h30m`).
fn as_duration(m: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    if m.len() != 2 {
        return None;
    }
    let secs = m.get("secs")?.as_u64()?;
    let nanos = u32::try_from(m.get("nanos")?.as_u64()?).ok()?;
    Some(crate::policy_file::human_duration(std::time::Duration::new(secs, nanos)))
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) if let Some(d) = as_duration(m) => {
            out.insert(prefix.to_owned(), d);
        }
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// Every key that differs between `old` and `new`. Secret values (JWT keys) are compared but never shown.
pub fn diff(old: &Policy, new: &Policy) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &serde_json::to_value(old).unwrap_or_default(), &mut a);
    flatten("", &serde_json::to_value(new).unwrap_or_default(), &mut b);
    let mut out: Vec<Change> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change { key: k.clone(), old: a.get(k).cloned(), new: b.get(k).cloned(), reach: Reach::of(k) })
        .collect();
    let key_of = |p: &Policy| p.auth.jwt.as_ref().map(|j| j.key.0.clone());
    if key_of(old) != key_of(new) {
        out.push(Change {
            key: "auth.jwt.key".into(),
            old: Some("\"<hidden>\"".into()),
            new: Some("\"<hidden>\"".into()),
            reach: Reach::of("auth.jwt.key"),
        });
    }
    out
}

/// The keys changed between `old` and `new` that only a restart applies.
pub fn restart_only(old: &Policy, new: &Policy) -> Vec<String> {
    diff(old, new).into_iter().filter(|c| c.reach == Reach::Restart).map(|c| c.key).collect()
}

/// Keeps in `new` the running value of every key that only a restart applies, each group as a whole: the
/// listeners with the admin API's token (an admin listener never runs without the auth it was opened with),
/// Docker naming, and startup handling.
///
/// # Errors
/// The restart-only keys still changed after that, when [`REACH`] names one this function does not keep:
/// the caller must then refuse the whole reload rather than apply part of a restart-only change.
pub fn hold_restart_only(new: &mut Policy, running: &Policy) -> Result<(), Vec<String>> {
    new.server.listen = running.server.listen;
    new.server.admin_listen = running.server.admin_listen;
    new.server.admin_token_sha256 = running.server.admin_token_sha256;
    new.docker.namespace = running.docker.namespace.clone();
    new.docker.name_prefix = running.docker.name_prefix.clone();
    new.reconcile.startup = running.reconcile.startup;
    new.reconcile.stale_age = running.reconcile.stale_age;
    new.recordings.dir = running.recordings.dir.clone();
    new.audit.log = running.audit.log.clone();
    let left = restart_only(running, new);
    if left.is_empty() { Ok(()) } else { Err(left) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_unchanged_policy_has_no_changes() {
        assert!(diff(&Policy::default(), &Policy::default()).is_empty());
    }

    #[test]
    fn changes_are_classified_by_whom_they_reach() {
        let old = Policy::default();
        let mut new = old.clone();
        new.limits.max_sessions = 5;
        new.sessions.idle_timeout = Duration::from_secs(60);
        new.server.listen = "0.0.0.0:9000".parse().expect("addr");
        if let Some(p) = new.profiles.values_mut().next() {
            p.image = "berth-session:v2".into();
        }
        let changes = diff(&old, &new);
        let reach = |k: &str| changes.iter().find(|c| c.key == k).map(|c| c.reach);
        assert_eq!(reach("limits.max_sessions"), Some(Reach::AllSessions));
        assert_eq!(reach("sessions.idle_timeout"), Some(Reach::AllSessions));
        let idle = changes.iter().find(|c| c.key == "sessions.idle_timeout").expect("listed");
        assert_eq!(
            (idle.old.as_deref(), idle.new.as_deref()),
            (Some("30m"), Some("1m")),
            "durations read as in the file"
        );
        assert_eq!(reach("server.listen"), Some(Reach::Restart));
        assert_eq!(reach("profiles.default.image"), Some(Reach::NewSessions));
        assert_eq!(changes.len(), 4, "{changes:#?}");
    }

    #[test]
    fn the_reach_table_lists_every_key_the_policy_file_accepts_once() {
        let accepted = crate::policy_file::keys();
        let listed: Vec<&str> = REACH.iter().map(|(k, _)| *k).collect();
        let missing: Vec<&String> = accepted.iter().filter(|k| !listed.contains(&k.as_str())).collect();
        assert!(missing.is_empty(), "add these keys to REACH in policy_diff/reach.rs: {missing:#?}");
        let unknown: Vec<&&str> = listed.iter().filter(|k| !accepted.iter().any(|a| a == *k)).collect();
        assert!(unknown.is_empty(), "REACH lists keys the policy file refuses: {unknown:#?}");
        let unique: std::collections::BTreeSet<&&str> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "REACH lists a key twice");
    }

    /// A policy with every optional part set, so that every value the diff can name is present.
    fn full_policy() -> Policy {
        use crate::policy::{
            CredentialMapping, CredentialSource, HealthCheck, JwtAlgorithm, JwtPolicy, SecretString, Sha256Digest,
            StaticToken,
        };
        let mut p = Policy::default();
        p.server.admin_listen = Some("127.0.0.1:9090".parse().expect("addr"));
        p.server.admin_token_sha256 = Some(Sha256Digest::of(b"admin"));
        p.auth.static_tokens.push(StaticToken { name: "ci".into(), sha256: Sha256Digest::of(b"t"), profiles: vec![] });
        p.auth.jwt = Some(JwtPolicy {
            algorithm: JwtAlgorithm::Hs256,
            key: SecretString("k".repeat(40)),
            issuer: Some("i".into()),
            audience: Some("a".into()),
            profiles_claim: "profiles".into(),
            leeway: Duration::from_secs(30),
        });
        p.peers.image = Some("busybox".into());
        for profile in p.profiles.values_mut() {
            profile.command = Some(vec!["bash".into()]);
            profile.env.insert("FOO".into(), "bar".into());
            profile
                .credentials
                .push(CredentialMapping { from: CredentialSource::Claim("sub".into()), env: "U".into() });
            profile.working_dir = Some("/tmp".into());
            profile.security.seccomp = Some("unconfined".into());
            profile.security.apparmor = Some("docker-default".into());
            profile.healthcheck = Some(HealthCheck {
                command: vec!["true".into()],
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                retries: 1,
                start_period: Duration::ZERO,
            });
        }
        p
    }

    #[test]
    fn every_value_of_the_policy_has_a_row_of_its_own_or_of_a_mapping_in_a_section() {
        let mut flat = BTreeMap::new();
        flatten("", &serde_json::to_value(full_policy()).expect("serializes"), &mut flat);
        assert!(flat.len() > 70, "{flat:#?}");
        for key in flat.keys() {
            let (row, _) = reach_row(key).unwrap_or_else(|| panic!("{key} has no row in REACH"));
            // A section's own row is only a fallback: a value of the policy that falls through to it is a key
            // the file does not have, and the table cannot say whom it reaches.
            assert!(row.contains('.') || row == key, "{key} only matches the section row {row}; give it a row");
        }
    }

    #[test]
    fn a_reload_keeps_the_admin_listener_together_with_its_token() {
        let running = full_policy();
        let mut new = running.clone();
        new.server.admin_listen = None;
        new.server.admin_token_sha256 = None;
        new.server.listen = "127.0.0.1:1".parse().expect("addr");
        new.docker.name_prefix = "other".into();
        new.reconcile.startup = crate::policy::StartupMode::RemoveAll;
        new.limits.max_sessions = 7;
        let file = new.clone();
        assert_eq!(
            restart_only(&running, &file),
            [
                "docker.name_prefix",
                "reconcile.startup",
                "server.admin_listen",
                "server.admin_token_sha256",
                "server.listen"
            ]
        );
        hold_restart_only(&mut new, &running).expect("every restart-only key is kept");
        assert_eq!(new.server, running.server, "the listeners and the admin token stay as they are");
        assert_eq!((new.docker.name_prefix.as_str(), new.reconcile.startup), ("berth", running.reconcile.startup));
        assert_eq!(new.limits.max_sessions, 7, "everything else applies");
        assert!(restart_only(&running, &new).is_empty());
    }

    #[test]
    fn an_unknown_key_needs_a_restart() {
        assert_eq!(Reach::of("server.no_such_key"), Reach::Restart, "the server section's own row");
        assert_eq!(Reach::of("nowhere"), Reach::Restart);
        assert_eq!(Reach::of("profiles.web.resources.memory_bytes"), Reach::NewSessions);
        assert_eq!(Reach::of("profiles.web.env.FOO"), Reach::NewSessions);
    }
}
