//! Which recordings retention removes: those older than the maximum age, then the oldest until the rest fit
//! the total size. Recordings still being written are never removed (they count towards the total).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::Timestamp;

/// A recording on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFile {
    pub name: String,
    pub size: u64,
    /// Its last change.
    pub modified: Timestamp,
}

/// The retention rules; `None` leaves that bound off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_total_bytes: Option<u64>,
}

/// The names to remove, oldest first.
pub fn expired<'a>(
    files: &'a [RecordingFile],
    active: &BTreeSet<&str>,
    rules: Retention,
    now: Timestamp,
) -> Vec<&'a str> {
    let mut by_age: Vec<&RecordingFile> = files.iter().collect();
    by_age.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.name.cmp(&b.name)));
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    let mut out = Vec::new();
    for f in by_age {
        if active.contains(f.name.as_str()) {
            continue;
        }
        let too_old = rules.max_age.is_some_and(|age| now.since(f.modified) > age);
        let over = rules.max_total_bytes.is_some_and(|cap| total > cap);
        if too_old || over {
            total -= f.size;
            out.push(f.name.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, secs: u64) -> RecordingFile {
        RecordingFile { name: name.into(), size, modified: Timestamp::from_secs(secs) }
    }

    #[test]
    fn files_past_the_age_go_and_files_at_it_stay() {
        let files = [file("a", 1, 100), file("b", 1, 200), file("c", 1, 300)];
        let rules = Retention { max_age: Some(Duration::from_secs(200)), max_total_bytes: None };
        assert_eq!(expired(&files, &BTreeSet::new(), rules, Timestamp::from_secs(400)), ["a"]);
        assert_eq!(expired(&files, &BTreeSet::new(), rules, Timestamp::from_secs(300)), Vec::<&str>::new());
    }

    #[test]
    fn the_oldest_go_until_the_rest_fit_and_active_recordings_never_go() {
        let files = [file("new", 40, 300), file("old", 50, 100), file("mid", 30, 200)];
        let rules = Retention { max_age: None, max_total_bytes: Some(70) };
        assert_eq!(expired(&files, &BTreeSet::new(), rules, Timestamp::from_secs(400)), ["old"]);
        let rules = Retention { max_age: None, max_total_bytes: Some(40) };
        assert_eq!(expired(&files, &BTreeSet::new(), rules, Timestamp::from_secs(400)), ["old", "mid"]);
        let active = BTreeSet::from(["old"]);
        assert_eq!(expired(&files, &active, rules, Timestamp::from_secs(400)), ["mid", "new"], "the active one counts");
        assert_eq!(
            expired(&files, &BTreeSet::new(), Retention::default(), Timestamp::from_secs(400)),
            Vec::<&str>::new()
        );
    }
}
