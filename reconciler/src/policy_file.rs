//! The YAML policy file: parsing, human units and validation into a [`Policy`], with every error located.
//!
//! Parsing runs in two steps: serde reads the raw file (`deny_unknown_fields` everywhere, every leaf a located
//! string), then validation builds the [`Policy`] and collects all errors at once as `origin:line:column: message`.

mod auth;
mod build;
mod ctx;
mod keys;
mod profile;
mod raw;
mod units;

use std::fmt;
use std::path::Path;

use serde_saphyr::{Error as YamlError, Location, MessageFormatter, UserMessageFormatter};

pub(crate) use self::ctx::human_duration;
pub use self::keys::keys;
use crate::policy::Policy;

/// The `apiVersion` this berth reads.
pub const API_VERSION: &str = build::API_VERSION;
/// The `kind` of a policy file.
pub const KIND: &str = build::KIND;

/// One problem in a policy file, located like a compiler diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the text came from, usually its path.
    pub origin: String,
    /// 1-based line, or 0 when unknown.
    pub line: usize,
    /// 1-based column, or 0 when unknown.
    pub column: usize,
    /// What is wrong, starting with the key path (`server.listen: ...`).
    pub message: String,
}

impl PolicyError {
    fn at(origin: &str, at: Option<&Location>, message: String) -> Self {
        let (line, column) = at.map_or((0, 0), |l| (to_usize(l.line()), to_usize(l.column())));
        Self { origin: origin.to_owned(), line, column, message }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.origin, self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for PolicyError {}

/// Every problem found in a policy file, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The problems, sorted by line and column; unlocated ones last.
    pub errors: Vec<PolicyError>,
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Parses and validates a policy file. `origin` names it in errors, and is the directory `auth.jwt.key_file`
/// would be read relative to; this function reads no files, so a policy with `key_file` is refused here:
/// use [`parse_policy_with`].
///
/// # Errors
/// A YAML syntax error or a value of the wrong shape (such as an unknown key) is reported alone; otherwise every
/// invalid value is reported, each with its line and column.
pub fn parse_policy(text: &str, origin: &str) -> Result<Policy, PolicyErrors> {
    parse_policy_with(text, origin, &|_| {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this caller does not read files"))
    })
}

/// Like [`parse_policy`], reading `auth.jwt.key_file` with `read_file`. A relative `key_file` is resolved against
/// the directory of `origin`, and the path given to `read_file` is already resolved.
///
/// # Errors
/// As [`parse_policy`]; a key file that cannot be read is one more located error.
pub fn parse_policy_with(
    text: &str,
    origin: &str,
    read_file: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Policy, PolicyErrors> {
    // Every leaf is read as text and typed during validation, so booleans, numbers and units share one rule
    // set and their errors are collected; serde only refuses unknown keys, wrong shapes and bad YAML.
    let options = serde_saphyr::options! {
        with_snippet: false,
    };
    let raw: raw::RawPolicy = match serde_saphyr::from_str_with_options(text, options) {
        Ok(raw) => raw,
        Err(e) => return Err(PolicyErrors { errors: vec![yaml_error(origin, &e)] }),
    };
    let mut cx = ctx::Ctx::new(origin, read_file);
    let policy = build::policy(&mut cx, &raw);
    if cx.errors.is_empty() {
        return Ok(policy);
    }
    let mut errors = cx.errors;
    errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
    Err(PolicyErrors { errors })
}

/// Turns a serde-saphyr error into a located error with a message for operators.
fn yaml_error(origin: &str, e: &YamlError) -> PolicyError {
    let inner = e.without_snippet();
    let message = match inner {
        YamlError::SerdeUnknownField { field, expected, .. } => {
            let hint = closest(field, expected).map(|c| format!("did you mean `{c}`? ")).unwrap_or_default();
            format!("unknown key `{field}`: {hint}expected one of {}", expected.join(", "))
        }
        YamlError::DuplicateMappingKey { key: Some(key), .. } => format!("duplicate key `{key}`"),
        YamlError::DuplicateMappingKey { key: None, .. } => "duplicate key".to_owned(),
        YamlError::Unexpected { expected: "mapping start", .. } => {
            "expected a mapping of keys to values here, such as `listen: 127.0.0.1:8080`".to_owned()
        }
        YamlError::Unexpected { expected: "sequence start", .. } => {
            "expected a list here, such as `[a, b]` or lines starting with `- `".to_owned()
        }
        YamlError::Unexpected { expected: "string scalar", .. } => {
            "expected a single value here, not a list or a mapping".to_owned()
        }
        YamlError::NullIntoString { .. } => "expected a value here, not null".to_owned(),
        other => UserMessageFormatter.format_message(other).into_owned(),
    };
    let message: String =
        message.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect();
    PolicyError::at(origin, e.location().as_ref(), message)
}

/// The expected key nearest to a misspelt one, when it is near enough to be a likely typo.
fn closest<'e>(field: &str, expected: &[&'e str]) -> Option<&'e str> {
    expected.iter().map(|e| (edit_distance(field, e), *e)).filter(|(d, _)| *d <= 2).min().map(|(_, e)| e)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::ProfileName;
    use crate::policy::Profile;

    const HEADER: &str = "apiVersion: berth.dev/v1\nkind: Policy\n";

    fn parse(body: &str) -> Result<Policy, PolicyErrors> {
        parse_policy(&format!("{HEADER}{body}"), "policy.yaml")
    }

    fn errors(body: &str) -> Vec<String> {
        match parse(body) {
            Ok(p) => panic!("expected errors, parsed {p:?}"),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn name(s: &str) -> ProfileName {
        s.parse().expect("valid profile name")
    }

    #[test]
    fn a_minimal_file_is_valid_and_gets_every_default() {
        let policy = parse("profiles: {default: {image: foo}}\n").expect("valid");
        let mut expected = Policy::default();
        expected.profiles.insert(name("default"), Profile::with_image("foo"));
        assert_eq!(policy, expected);
    }

    #[test]
    fn the_header_alone_is_the_default_policy() {
        assert_eq!(parse(""), Ok(Policy::default()));
        assert_eq!(parse("profiles: {}\n"), Ok(Policy::default()));
    }

    #[test]
    fn human_units_become_durations_bytes_and_nano_cpus() {
        let policy = parse(
            "server:\n  max_message_bytes: 1MiB\n  replay_bytes: 65536\n  ping_interval: 250ms\n\
             sessions:\n  idle_timeout: 1h30m\n  max_lifetime: 4h\n\
             profiles:\n  default:\n    image: foo\n    resources: {memory: 1GiB, cpus: 0.5, pids: 100}\n    logs: {max_size: 64KiB}\n",
        )
        .expect("valid");
        assert_eq!(policy.server.max_message_bytes, 1 << 20);
        assert_eq!(policy.server.replay_bytes, 65_536);
        assert_eq!(policy.server.ping_interval, Duration::from_millis(250));
        assert_eq!(policy.sessions.idle_timeout, Duration::from_secs(5400));
        assert_eq!(policy.sessions.max_lifetime, Duration::from_secs(4 * 3600));
        let p = &policy.profiles[&name("default")];
        assert_eq!(p.resources.memory_bytes, 1 << 30);
        assert_eq!(p.resources.nano_cpus, 500_000_000);
        assert_eq!(p.resources.pids, 100);
        assert_eq!(p.logs.max_size, "64k");
    }

    #[test]
    fn nan_and_infinite_cpus_are_rejected_with_their_location() {
        for bad in [".nan", "NaN", ".inf", "-1", "0"] {
            let errs = errors(&format!("profiles:\n  default:\n    image: foo\n    resources:\n      cpus: {bad}\n"));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("policy.yaml:7:13: profiles.default.resources.cpus: "), "{errs:?}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_line() {
        let errs = errors(
            "server:\n  listen: nowhere\n  hello_timeout: 10\nlimits:\n  max_sessions: 0\n  queue_wait: soon\n\
             default_profile: missing\n",
        );
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(errs[0].starts_with("policy.yaml:4:11: server.listen: "), "{errs:#?}");
        assert!(errs[1].starts_with("policy.yaml:5:18: server.hello_timeout: "), "{errs:#?}");
        assert!(errs[2].starts_with("policy.yaml:7:17: limits.max_sessions: "), "{errs:#?}");
        assert!(errs[3].starts_with("policy.yaml:8:15: limits.queue_wait: "), "{errs:#?}");
        assert!(errs[4].starts_with("policy.yaml:9:18: default_profile: no profile is named"), "{errs:#?}");
    }

    #[test]
    fn an_unknown_key_is_rejected_and_the_allowed_keys_are_named() {
        let errs = errors("profiles:\n  default:\n    image: foo\n    imgae: bar\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("policy.yaml:6:5: unknown key `imgae`: did you mean `image`?"), "{errs:?}");
        assert!(errs[0].contains("client_env"), "{errs:?}");
    }

    #[test]
    fn dangerous_client_env_names_are_rejected_with_a_reason() {
        let errs = errors(
            "profiles:\n  default:\n    image: foo\n    env: {MY_EDITOR: vi}\n    credentials: [{hello: key, env: API_KEY}]\n\
             \x20   client_env: [TERM, LD_PRELOAD, PATH, PYTHONPATH, MY_EDITOR, API_KEY, ok-not]\n",
        );
        assert_eq!(errs.len(), 6, "{errs:#?}");
        assert!(errs.iter().all(|e| e.starts_with("policy.yaml:8:")), "{errs:#?}");
        assert!(errs[0].contains("LD_PRELOAD must not be set by clients: it makes the dynamic loader"), "{errs:#?}");
        assert!(errs[1].contains("PATH must not be set by clients"), "{errs:#?}");
        assert!(errs[2].contains("PYTHONPATH must not be set by clients"), "{errs:#?}");
        assert!(errs[3].contains("MY_EDITOR is set in profiles.default.env"), "{errs:#?}");
        assert!(errs[4].contains("API_KEY is set from credentials"), "{errs:#?}");
        assert!(errs[5].contains("not an environment variable name"), "{errs:#?}");
    }

    #[test]
    fn the_default_client_env_may_not_override_a_fixed_variable() {
        let errs = errors("profiles:\n  default:\n    image: foo\n    env: {TERM: dumb}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("policy.yaml:4:3: profiles.default.client_env: by default TERM"), "{errs:?}");
    }

    #[test]
    fn yaml_syntax_errors_are_located() {
        let errs = errors("server:\n  listen: [\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("policy.yaml:"), "{errs:?}");
        assert_ne!(errs[0].split(':').nth(1), Some("0"), "{errs:?}");
    }

    #[test]
    fn a_missing_header_is_reported_at_the_start() {
        let errs = match parse_policy("profiles: {}\n", "p.yaml") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            errs,
            "p.yaml:1:1: apiVersion: missing: a policy file starts with apiVersion: berth.dev/v1\n\
             p.yaml:1:1: kind: missing: a policy file has kind: Policy"
        );
    }

    #[test]
    fn static_tokens_are_stored_hashed_and_never_echoed() {
        let good = "ab".repeat(32);
        let policy = parse(&format!(
            "auth:\n  anonymous: false\n  static_tokens:\n    - {{name: ci, sha256: {good}, profiles: [default]}}\n"
        ))
        .expect("valid");
        assert_eq!(policy.auth.static_tokens[0].sha256.0, [0xab; 32]);
        let errs = errors("auth:\n  static_tokens:\n    - {name: ci, sha256: hunter2-the-token}\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("expected 64 hex digits") && !errs[0].contains("hunter2"), "{errs:?}");
    }

    #[test]
    fn jwt_keys_come_inline_or_from_a_file_next_to_the_policy() {
        let secret = "s".repeat(40);
        let read = |p: &Path| {
            assert_eq!(p, Path::new("/etc/berth/jwt.key"));
            Ok(format!("{}\n", "s".repeat(40)))
        };
        let text = format!("{HEADER}auth:\n  jwt: {{algorithm: HS256, key_file: jwt.key}}\n");
        let policy = parse_policy_with(&text, "/etc/berth/policy.yaml", &read).expect("valid");
        let jwt = policy.auth.jwt.expect("jwt");
        assert_eq!(jwt.key.0, secret);
        assert_eq!(jwt.profiles_claim, "profiles");
        let errs = errors("auth:\n  jwt: {algorithm: HS256, key: short}\n");
        assert!(errs[0].contains("at least 32 bytes") && !errs[0].contains("short"), "{errs:?}");
        let errs = errors("auth:\n  jwt: {algorithm: HS256, key_file: jwt.key}\n");
        assert!(errs[0].contains("cannot read jwt.key"), "{errs:?}");
    }

    #[test]
    fn hardening_settings_refuse_host_networking_and_unbounded_pids() {
        let errs = errors("profiles:\n  default:\n    image: foo\n    network: host\n    resources: {pids: -1}\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn recording_keys_parse_and_resolve_paths_beside_the_policy_file() {
        use crate::policy::RecordingMode;
        let policy = parse_policy(
            &format!(
                "{HEADER}profiles:\n  default:\n    image: foo\n    recording: {{mode: required, input: true, max_size: 1MiB}}\n\
                 recordings:\n  dir: rec\n  retention: {{max_age: 7d, max_total_size: 10GiB}}\naudit:\n  log: /var/log/berth-audit.jsonl\n"
            ),
            "/etc/berth/policy.yaml",
        )
        .expect("valid");
        let rec = policy.profiles[&name("default")].recording;
        assert_eq!((rec.mode, rec.input, rec.max_bytes), (RecordingMode::Required, true, 1 << 20));
        assert_eq!(policy.recordings.dir.as_deref(), Some(std::path::Path::new("/etc/berth/rec")));
        assert_eq!(policy.recordings.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(policy.recordings.retention.max_total_bytes, Some(10 << 30));
        assert_eq!(policy.audit.log.as_deref(), Some(std::path::Path::new("/var/log/berth-audit.jsonl")));
        assert_eq!(
            policy.profiles[&name("default")].hash(),
            parse("profiles: {default: {image: foo}}\n").expect("valid").profiles[&name("default")].hash(),
            "recording does not shape the container",
        );
        let off = parse("profiles: {default: {image: foo}}\n").expect("valid");
        assert!(off.profiles[&name("default")].recording.is_off() && off.recordings.dir.is_none());
    }

    #[test]
    fn bad_recording_values_are_all_reported_and_a_recording_profile_needs_a_directory() {
        let errs = errors(
            "profiles:\n  default:\n    image: foo\n    recording: {mode: always, input: maybe, max_size: 1KiB}\n  \
             rec:\n    image: foo\n    recording: {mode: best_effort}\nrecordings:\n  retention: {max_age: 1s, max_total_size: lots}\n",
        );
        assert_eq!(errs.len(), 6, "{errs:#?}");
        for (err, key) in errs.iter().zip([
            "profiles.default.recording.mode: \"always\" is not a recording mode",
            "profiles.default.recording.input: ",
            "profiles.default.recording.max_size: ",
            "profiles.rec.recording.mode: is best_effort but recordings.dir is unset",
            "recordings.retention.max_age: ",
            "recordings.retention.max_total_size: ",
        ]) {
            assert!(err.contains(key), "{err} should say {key}");
        }
    }

    #[test]
    fn sharing_keys_parse_with_defaults_off_and_bad_values_are_all_reported() {
        let policy = parse(
            "profiles:\n  default:\n    image: foo\n    sharing: {enabled: true, max_viewers: 3, max_grant_ttl: 2h, anonymous: true}\n",
        )
        .expect("valid");
        let s = policy.profiles[&name("default")].sharing;
        assert_eq!(
            (s.enabled, s.max_viewers, s.max_grant_ttl, s.anonymous),
            (true, 3, Duration::from_secs(7200), true)
        );
        assert_eq!(
            policy.profiles[&name("default")].hash(),
            parse("profiles: {default: {image: foo}}\n").expect("valid").profiles[&name("default")].hash(),
            "sharing does not shape the container",
        );
        let off = parse("profiles: {default: {image: foo}}\n").expect("valid");
        assert!(off.profiles[&name("default")].sharing.is_off(), "off by default");
        let errs = errors(
            "profiles:\n  default:\n    image: foo\n    sharing: {enabled: maybe, max_viewers: 0, max_grant_ttl: 1s}\n",
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
        for (err, key) in errs.iter().zip([
            "profiles.default.sharing.enabled: ",
            "profiles.default.sharing.max_viewers: ",
            "profiles.default.sharing.max_grant_ttl: ",
        ]) {
            assert!(err.contains(key), "{err} should say {key}");
        }
    }
}
