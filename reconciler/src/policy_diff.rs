//! What a policy change does: `berth policy diff OLD NEW`. Pure set arithmetic over the two policies'
//! flattened keys, each change classified by whom it reaches.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::Policy;

/// Whom a changed key reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Sessions opened after the reload; running containers keep what they were created with (drift shows
    /// in the admin API and `berth_containers_policy_drift`).
    NewSessions,
    /// New and existing sessions alike (limits, timeouts, controller settings).
    AllSessions,
    /// Only a restart applies it (listen addresses, label namespace, name prefix).
    Restart,
}

impl Reach {
    fn of(key: &str) -> Self {
        let restart = ["server.listen", "server.admin_listen", "docker."];
        let new_only = ["profiles.", "default_profile", "auth."];
        if restart.iter().any(|p| key.starts_with(p)) {
            Self::Restart
        } else if new_only.iter().any(|p| key.starts_with(p)) {
            Self::NewSessions
        } else {
            Self::AllSessions
        }
    }

    /// In words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NewSessions => "new sessions only; running sessions keep their containers",
            Self::AllSessions => "new and existing sessions",
            Self::Restart => "needs a restart; a reload keeps the current value",
        }
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
            reach: Reach::NewSessions,
        });
    }
    out
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
}
