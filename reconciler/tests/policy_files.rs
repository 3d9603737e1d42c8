//! The policy files shipped in `manifests/` parse as shipped (reading files as `berth policy check` does, so an
//! example that names a file nobody has fails here), the default one is exactly the built-in default, and a
//! corrupted copy is refused with the error located where the corruption is.

use std::path::{Path, PathBuf};

use berth_reconciler::Policy;
use berth_reconciler::policy::JwtAlgorithm;
use berth_reconciler::policy_file::{PolicyErrors, parse_policy, parse_policy_with};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses as `berth policy check` does: a `key_file` is read from the disk.
fn parse_manifest(path: &Path) -> Result<Policy, PolicyErrors> {
    parse_policy_with(&read(path), &path.display().to_string(), &|p| std::fs::read_to_string(p))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The line (1-based) holding `needle`, which must occur once.
fn line_of(text: &str, needle: &str) -> usize {
    let lines: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(lines.len(), 1, "{needle:?} should occur once");
    lines[0]
}

fn corrupt(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} should occur once");
    text.replacen(from, to, 1)
}

#[test]
fn every_shipped_policy_file_parses() {
    let mut files = yaml_files(&manifests());
    files.extend(yaml_files(&manifests().join("examples")));
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        if let Err(e) = parse_manifest(&file) {
            panic!("{} does not parse:\n{e}", file.display());
        }
    }
}

#[test]
fn the_default_manifest_is_exactly_the_built_in_default_policy() {
    let policy = parse_manifest(&manifests().join("policy.yaml")).expect("parses");
    assert_eq!(policy, Policy::default());
}

#[test]
fn the_examples_configure_what_their_names_promise() {
    let demo = parse_manifest(&manifests().join("examples/public-demo.yaml")).expect("parses");
    assert!(demo.auth.anonymous && demo.auth.jwt.is_none() && demo.auth.static_tokens.is_empty());
    assert!(demo.limits.rate_exempt.is_empty(), "a public berth exempts nobody from the connection rate");
    assert!(demo.limits.connections_per_minute < Policy::default().limits.connections_per_minute);

    let jwt = parse_manifest(&manifests().join("examples/jwt.yaml")).expect("parses");
    assert!(!jwt.auth.anonymous);
    let key = jwt.auth.jwt.as_ref().map(|j| (j.algorithm, j.key.0.starts_with("-----BEGIN PUBLIC KEY-----")));
    assert_eq!(key, Some((JwtAlgorithm::Rs256, true)), "an inline public key: the file checks as shipped");

    let locked = parse_manifest(&manifests().join("examples/locked-down.yaml")).expect("parses");
    assert!(!locked.auth.anonymous && locked.auth.jwt.is_none());
    let profile = &locked.profiles[&locked.default_profile];
    assert_eq!(profile.network, "none");
    assert_eq!(profile.client_env, ["TERM"]);
    assert!(profile.security.read_only_root && profile.security.cap_drop_all && profile.security.no_new_privileges);
    assert!(
        profile.resources.memory_bytes
            < Policy::default().profiles.values().next().expect("one").resources.memory_bytes
    );
}

#[test]
fn no_shipped_policy_needs_another_file() {
    let mut files = yaml_files(&manifests());
    files.extend(yaml_files(&manifests().join("examples")));
    for file in files {
        // This parser reads no files: a `key_file` would be refused.
        if let Err(e) = parse_policy(&read(&file), &file.display().to_string()) {
            panic!("{} needs a file that is not shipped:\n{e}", file.display());
        }
    }
}

#[test]
fn the_gvisor_example_runs_its_default_profile_on_runsc_and_notes_what_it_drops() {
    let policy = parse_manifest(&manifests().join("examples/gvisor.yaml")).expect("parses");
    assert_eq!(policy.profiles[&policy.default_profile].runtime.as_deref(), Some("runsc"));
    let notes = berth_reconciler::isolation::notes(&policy);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("profiles.sandboxed: runtime runsc runs without resources.pids"), "{notes:?}");
}

#[test]
fn the_warm_pool_example_keeps_a_pool_of_10_under_limits_that_let_200_sessions_through() {
    let policy = parse_manifest(&manifests().join("examples/warm-pool.yaml")).expect("parses");
    let profile = &policy.profiles[&policy.default_profile];
    assert_eq!(profile.pool.size, 10);
    assert_eq!(profile.not_poolable(), None);
    let l = &policy.limits;
    assert!(l.max_sessions >= 200 + profile.pool.size, "the pool counts against max_sessions");
    assert!(l.max_anonymous >= 200 && l.max_per_ip >= 200 && policy.server.max_pending_per_ip >= 200);
}

#[test]
fn a_pool_is_refused_for_a_profile_whose_settings_the_launcher_cannot_deliver() {
    let text = read(&manifests().join("examples/warm-pool.yaml"));
    let broken = corrupt(&text, "    command: [/bin/sh, -i]\n", "");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!(e.line, line_of(&broken, "size: 10"), "{err}");
    assert!(e.message.starts_with("profiles.default.pool.size: this profile cannot keep a pool"), "{err}");
    assert!(e.message.contains("set command"), "{err}");
    let off = corrupt(&broken, "      size: 10\n", "      size: 0\n");
    assert!(parse_policy(&off, "copy.yaml").is_ok(), "size 0 keeps no pool, so nothing needs delivering");
    let young = corrupt(&text, "      max_age: 30m\n", "      max_age: 1s\n");
    let err = parse_policy(&young, "copy.yaml").expect_err("refused");
    assert!(err.errors[0].message.starts_with("profiles.default.pool.max_age"), "{err}");
}

#[test]
fn a_bad_duration_in_a_copy_of_the_default_is_located() {
    let text = read(&manifests().join("policy.yaml"));
    let broken = corrupt(&text, "  hello_timeout: 10s\n", "  hello_timeout: 10 seconds\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!((e.line, e.column), (line_of(&text, "hello_timeout:"), 18), "{err}");
    assert!(e.message.starts_with("server.hello_timeout: \"10 seconds\""), "{err}");
    assert!(err.to_string().starts_with(&format!("copy.yaml:{}:18: server.hello_timeout", e.line)), "{err}");
}

#[test]
fn pending_caps_larger_than_the_caps_they_sit_under_are_refused() {
    let text = read(&manifests().join("policy.yaml"));
    let broken = corrupt(&text, "  max_pending_per_ip: 32\n", "  max_pending_per_ip: 300\n");
    let broken = corrupt(&broken, "  max_connections: 1024\n", "  max_connections: 100\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    let messages: Vec<&str> = err.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{err}");
    assert!(messages[0].starts_with("server.max_pending: 256 is more than server.max_connections (100)"), "{err}");
    assert!(messages[1].starts_with("server.max_pending_per_ip: 300 is more than server.max_pending"), "{err}");
}

#[test]
fn rate_exempt_takes_networks_and_addresses_and_refuses_the_rest() {
    let text = read(&manifests().join("policy.yaml"));
    let listed = corrupt(&text, "  rate_exempt: [127.0.0.0/8, \"::1\"]\n", "  rate_exempt: [10.1.2.3/8, fd00::1]\n");
    let p = parse_policy(&listed, "copy.yaml").expect("valid");
    let nets: Vec<String> = p.limits.rate_exempt.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "fd00::1/128"]);
    let broken = corrupt(&text, "  rate_exempt: [127.0.0.0/8, \"::1\"]\n", "  rate_exempt: [localhost]\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    assert!(err.errors[0].message.starts_with("limits.rate_exempt: \"localhost\" is not a network"), "{err}");
}

#[test]
fn an_unknown_key_in_a_copy_of_the_default_is_located_and_named() {
    let text = read(&manifests().join("policy.yaml"));
    let broken = corrupt(&text, "  ping_interval: 20s\n", "  ping_intervall: 20s\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = &err.errors[0];
    assert_eq!((e.line, e.column), (line_of(&text, "ping_interval:"), 3), "{err}");
    assert!(e.message.contains("unknown key `ping_intervall`: did you mean `ping_interval`?"), "{err}");
}

#[test]
fn several_corruptions_are_all_reported_in_file_order() {
    let text = read(&manifests().join("policy.yaml"));
    let broken = corrupt(&text, "      cpus: 1\n", "      cpus: .nan\n");
    let broken = corrupt(&broken, "  max_sessions: 100\n", "  max_sessions: -5\n");
    let broken = corrupt(&broken, "  name_prefix: berth\n", "  name_prefix: Berth_\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    let located: Vec<(usize, &str)> =
        err.errors.iter().map(|e| (e.line, e.message.split(':').next().unwrap_or_default())).collect();
    assert_eq!(
        located,
        [
            (line_of(&text, "cpus:"), "profiles.default.resources.cpus"),
            (line_of(&text, "max_sessions:"), "limits.max_sessions"),
            (line_of(&text, "name_prefix: berth"), "docker.name_prefix"),
        ],
        "{err}"
    );
}

#[test]
fn a_yaml_syntax_error_in_a_copy_is_located() {
    let text = read(&manifests().join("policy.yaml"));
    let broken = corrupt(&text, "  stall_timeout: 60s\n", "  stall_timeout: [60s\n");
    let err = parse_policy(&broken, "copy.yaml").expect_err("refused");
    assert_eq!(err.errors.len(), 1, "{err}");
    assert!(err.errors[0].line >= line_of(&text, "stall_timeout:"), "{err}");
}
