//! `docs/policy.md` documents every key the policy parser accepts, and no key it does not.
//!
//! The key list comes from the parser's own raw types (`policy_file::keys`), so adding a key to the code
//! without documenting it, or documenting a key that does not exist, fails here.

use std::collections::BTreeSet;
use std::path::Path;

use berth_reconciler::policy_file::keys;

/// The key in the first cell of each reference-table row: `` | `server.listen` | address | ... | ``.
fn documented_keys(doc: &str) -> Vec<(usize, String, Vec<String>)> {
    doc.lines()
        .enumerate()
        .filter(|(_, line)| line.starts_with("| `"))
        .map(|(i, line)| {
            let cells = cells(line);
            let key = cells[0].trim_matches('`').to_owned();
            (i + 1, key, cells)
        })
        .collect()
}

/// The cells of a Markdown table row; `\|` is a literal bar, not a separator.
fn cells(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in line.trim().trim_start_matches('|').trim_end_matches('|').chars() {
        match c {
            '|' if !escaped => out.push(String::new()),
            _ => out.last_mut().expect("one cell").push(c),
        }
        escaped = c == '\\';
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_parser_accepts_a_nontrivial_set_of_keys() {
    let keys = keys();
    assert!(keys.len() > 50, "{keys:?}");
    assert!(keys.iter().any(|k| k == "profiles.<name>.resources.cpus"), "{keys:?}");
}

#[test]
fn every_accepted_key_is_documented() {
    let documented: BTreeSet<String> = documented_keys(&doc()).into_iter().map(|(_, k, _)| k).collect();
    let missing: Vec<String> = keys().into_iter().filter(|k| !documented.contains(k)).collect();
    assert!(missing.is_empty(), "docs/policy.md has no table row for: {missing:#?}");
}

#[test]
fn every_documented_key_is_accepted() {
    let accepted: BTreeSet<String> = keys().into_iter().collect();
    let unknown: Vec<String> = documented_keys(&doc())
        .into_iter()
        .filter(|(_, k, _)| !accepted.contains(k))
        .map(|(line, k, _)| format!("line {line}: {k}"))
        .collect();
    assert!(unknown.is_empty(), "docs/policy.md documents keys the parser refuses: {unknown:#?}");
}

#[test]
fn every_key_is_documented_once_with_a_type_and_a_meaning() {
    let mut seen = BTreeSet::new();
    for (line, key, cells) in documented_keys(&doc()) {
        assert!(seen.insert(key.clone()), "line {line}: {key} is documented twice");
        assert_eq!(cells.len(), 4, "line {line}: expected | key | type | default | meaning |, got {cells:?}");
        assert!(!cells[1].is_empty() && !cells[3].is_empty(), "line {line}: {key} needs a type and a meaning");
    }
}

/// The keys a bullet of "What a change reaches" names, such as `- **Restart only**: `a`, `b`.`.
fn reach_bullet(doc: &str, title: &str) -> BTreeSet<String> {
    let start = doc.find(&format!("- **{title}**")).unwrap_or_else(|| panic!("no bullet **{title}**"));
    let rest = &doc[start + 2..];
    let end = rest.find("\n- ").or_else(|| rest.find("\n\n")).unwrap_or(rest.len());
    rest[..end].split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn the_restart_only_and_new_connection_keys_are_listed_as_the_reach_table_says() {
    use berth_reconciler::policy_diff::{REACH, Reach};
    let doc = doc();
    for (title, reach) in [("Restart only", Reach::Restart), ("New connections", Reach::NewConnections)] {
        let listed = reach_bullet(&doc, title);
        // Section rows (`server`, `docker`) only cover what the file spells differently; the keys are listed.
        let table: BTreeSet<String> =
            REACH.iter().filter(|(k, r)| *r == reach && k.contains('.')).map(|(k, _)| (*k).to_owned()).collect();
        let listed_keys: BTreeSet<String> = listed.into_iter().filter(|k| k.contains('.')).collect();
        assert_eq!(listed_keys, table, "docs/policy.md, \"{title}\": keep it equal to policy_diff/reach.rs");
    }
}
