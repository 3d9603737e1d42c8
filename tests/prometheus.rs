//! The operators' deployment files, checked by the tools that will read them: promtool on the alert rules
//! and their unit tests, a real Prometheus scraping a real berth and evaluating those rules, the Grafana
//! dashboard's queries against the metrics berth exports, `systemd-analyze` on the unit, HAProxy and nginx on
//! the load balancer configs, and the compose file's mounts.
//!
//! The tools come from scripts/setup.sh (`BERTH_SETUP_TEST_TOOLS=1`, as scripts/test.sh runs it). A missing
//! tool fails the test with that advice; nothing is skipped.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::World;
use common::process::{TempDir, http_get};
use serde_json::Value;

/// How long Prometheus gets to start, scrape berth and evaluate the rules.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// The alerts berth-rules.yml must define, each with a runbook section in docs/operations.md.
const ALERTS: [&str; 10] = [
    "BerthDockerDown",
    "BerthContainerLeak",
    "BerthReconcileErrors",
    "BerthNearCapacity",
    "BerthPolicyReloadFailing",
    "BerthStuckSessions",
    "BerthPolicyDrift",
    "BerthSentinelDown",
    "BerthPeerTakenOver",
    "BerthPoolEmpty",
];

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

/// A command for a tool these tests need, or a failure that says how to install it.
fn tool(name: &str) -> Command {
    let found =
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    assert!(
        found,
        "`{name}` is not installed. This test needs it and was not skipped: run scripts/test.sh (or \
         BERTH_SETUP_TEST_TOOLS=1 scripts/setup.sh), which installs it."
    );
    let mut c = Command::new(name);
    c.current_dir(env!("CARGO_MANIFEST_DIR")).stdin(Stdio::null());
    c
}

/// Runs `cmd` and returns its output, failing the test with everything it printed unless it succeeded.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every metric name a fresh berth exposes on /metrics (histograms as `_bucket`, `_sum` and `_count`).
fn exported_metric_names() -> BTreeSet<String> {
    let metrics = berth::metrics::Metrics::new();
    // A berth whose policy keeps a warm pool creates that profile's pool series when it starts.
    metrics.set_pool(&"default".parse().expect("profile name"), 10, 0);
    metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// PromQL words that are not metric names: keywords, and aggregations (which may be followed by `by (...)`
/// rather than directly by their parenthesis).
const PROMQL_WORDS: [&str; 26] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names a PromQL expression reads. A small scanner, enough for dashboards and rules: it skips
/// strings, label matchers `{...}`, ranges `[...]`, label lists after `by`/`without`/`on`/`ignoring`/`group_*`,
/// numbers and durations, Grafana variables (`$instance`), and words followed by `(` (functions).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: u8| -> usize {
        let mut j = from;
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), b'\\') => j += 1,
                (Some(_), _) => {}
                (None, c @ (b'"' | b'\'' | b'`')) => quote = Some(c),
                (None, c) if c == close => return j + 1,
                (None, _) => {}
            }
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_to(i + 1, c);
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
        } else if c == b'$' {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let mut k = i;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let call = k < b.len() && b[k] == b'(';
            let lower = word.to_ascii_lowercase();
            if call && ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                i = skip_to(k + 1, b')');
            } else if !call && !PROMQL_WORDS.contains(&lower.as_str()) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Fails unless every metric `expr` reads starts with `berth_` and is exported by a fresh berth.
fn assert_reads_only_berth_metrics(what: &str, expr: &str, exported: &BTreeSet<String>) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{what}: found no metric in {expr:?}");
    for n in &names {
        assert!(n.starts_with("berth_"), "{what}: {expr:?} reads {n}, which is not one of berth's metrics");
        assert!(exported.contains(n), "{what}: {expr:?} reads {n}, which a fresh berth does not expose on /metrics");
    }
}

#[test]
fn the_promql_scanner_finds_metric_names_and_nothing_else() {
    let e = r#"histogram_quantile(0.99, sum by (le, op) (rate(berth_x_bucket{op=~"a|b", instance=~"$instance"}[$__rate_interval])))
        / on (instance) group_left max without (phase) (berth_y offset 5m) > 1e3 and time() - berth_z"#;
    let want: BTreeSet<String> = ["berth_x_bucket", "berth_y", "berth_z"].map(String::from).into();
    assert_eq!(metric_names(e), want);
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn operations_anchors() -> BTreeSet<String> {
    read("docs/operations.md")
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn the_operations_guide_documents_every_metric() {
    let doc = read("docs/operations.md");
    let families: BTreeSet<String> = berth::metrics::Metrics::new()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE berth_"))
        .filter_map(|l| l.split(' ').next())
        .map(|n| format!("berth_{n}"))
        .collect();
    assert!(families.len() > 20, "metric families: {families:?}");
    for f in &families {
        assert!(doc.contains(&format!("| `{f}` |")), "docs/operations.md does not describe {f} in its metrics table");
    }
}

#[test]
fn the_operations_guide_lists_exactly_the_docker_operations() {
    let doc = read("docs/operations.md");
    let row = doc.lines().find(|l| l.starts_with("| `berth_docker_api_calls_total` |")).expect("the row");
    let listed = row.split('|').nth(3).expect("the labels column");
    let listed = listed.split(';').next().expect("the op values").trim();
    let documented: Vec<&str> =
        listed.trim_start_matches("`op`:").split(',').map(|v| v.trim().trim_matches('`')).collect();
    let ops: Vec<&str> = berth::runtime::DockerOp::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(documented, ops, "docs/operations.md's op values and DockerOp::ALL");
}

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_scrape_config() {
    run_ok(tool("promtool").args(["check", "rules", "manifests/prometheus/berth-rules.yml"]));
    let out = run_ok(tool("promtool").args(["test", "rules", "manifests/prometheus/berth-rules.test.yml"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"), "promtool test rules: {out:?}");
    run_ok(tool("promtool").args(["check", "config", "manifests/prometheus/prometheus.yml"]));

    let config = yaml("manifests/prometheus/prometheus.yml");
    assert_eq!(config["rule_files"], serde_json::json!(["berth-rules.yml"]));
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let berth = jobs.iter().find(|j| j["job_name"] == "berth").expect("a scrape job named berth");
    assert_eq!(berth["metrics_path"], "/metrics");
    assert_eq!(berth["scrape_interval"], "15s");

    // The unit tests exercise at least the two alerts that matter most.
    let tests = yaml("manifests/prometheus/berth-rules.test.yml");
    let tested: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for alert in ["BerthDockerDown", "BerthContainerLeak"] {
        assert!(tested.contains(alert), "berth-rules.test.yml does not test {alert}");
    }
}

#[test]
fn every_alert_reads_only_berth_metrics_and_links_its_runbook() {
    let exported = exported_metric_names();
    let anchors = operations_anchors();
    let rules = yaml("manifests/prometheus/berth-rules.yml");
    let mut seen = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            let expr = rule["expr"].as_str().expect("expr");
            assert_reads_only_berth_metrics(name, expr, &exported);
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity:?}");
            for key in ["summary", "description", "runbook"] {
                let v = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(!v.trim().is_empty(), "{name}: no {key} annotation");
            }
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            let section = runbook
                .strip_prefix("docs/operations.md#")
                .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not a docs/operations.md section"));
            assert!(anchors.contains(section), "{name}: docs/operations.md has no heading for #{section}");
            seen.push(name.to_owned());
        }
    }
    seen.sort();
    let mut want = ALERTS.map(String::from).to_vec();
    want.sort();
    assert_eq!(seen, want, "the alerts in berth-rules.yml");
    let docker_down = rules["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["alert"] == "BerthDockerDown")
        .expect("BerthDockerDown");
    assert_eq!(docker_down["labels"]["severity"], "critical");
}

/// Every `expr` in a Grafana dashboard (panels, rows' nested panels, targets).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("manifests/grafana/berth-dashboard.json")).expect("the dashboard is valid JSON")
}

#[test]
fn the_dashboard_queries_only_metrics_a_fresh_berth_exports() {
    let exported = exported_metric_names();
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", d["schemaVersion"]);
    assert_eq!(d["uid"], "berth");
    let mut exprs = Vec::new();
    dashboard_exprs(&d["panels"], &mut exprs);
    for e in &exprs {
        assert_reads_only_berth_metrics("dashboard", e, &exported);
    }
    // The instance variable's query names a metric too.
    for var in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str().or(var["query"].as_str())
            && let Some(inner) = q.strip_prefix("label_values(").and_then(|q| q.split(',').next())
        {
            assert!(exported.contains(inner.trim()), "variable {}: {q}", var["name"]);
        }
    }
    // The panels operators asked for, by what they read.
    let all = exprs.join("\n");
    for needle in [
        "berth_sessions{",
        "berth_containers{",
        "histogram_quantile(0.5, sum by (le) (rate(berth_reconcile_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(berth_reconcile_duration_seconds_bucket",
        "sum by (kind, result) (rate(berth_actions_total",
        "histogram_quantile(0.99, sum by (le, op) (rate(berth_docker_api_call_duration_seconds_bucket",
        "berth_docker_up",
        "sum by (reason) (rate(berth_admissions_rejected_total",
        "histogram_quantile(0.5, sum by (le) (rate(berth_time_to_first_output_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(berth_time_to_first_output_seconds_bucket",
        "berth_websocket_connections{",
        "rate(berth_terminal_bytes_total",
        "berth_policy_reloads_total",
        "sum by (profile) (berth_pool_ready{",
        "sum by (profile) (rate(berth_pool_misses_total",
        "sum by (role) (berth_session_viewers{",
        "sum by (reason) (rate(berth_recording_failures_total",
    ] {
        assert!(all.contains(needle), "no dashboard panel queries {needle}");
    }
    let titles: Vec<&str> =
        d["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
    let unique: BTreeSet<&&str> = titles.iter().collect();
    assert_eq!(unique.len(), titles.len(), "panel titles repeat: {titles:?}");
}

/// `(section, key, value)` for every assignment in a systemd unit file.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("berth.service: not `key=value`: {line}"));
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

#[test]
fn the_systemd_unit_is_hardened_and_systemd_accepts_it() {
    let text = read("manifests/systemd/berth.service");
    assert!(
        !text.contains("$("),
        "berth.service must not contain shell command substitutions: systemd passes them on literally"
    );
    let entries = unit_entries(&text);
    let get = |section: &str, key: &str| -> Vec<&str> {
        entries.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
    };
    let one = |key: &str| -> &str {
        match get("Service", key).as_slice() {
            [v] => v,
            other => panic!("berth.service: [Service] {key} should be set once, found {other:?}"),
        }
    };
    assert_eq!(one("User"), "berth");
    assert_eq!(one("SupplementaryGroups"), "docker");
    assert!(
        one("ExecStart").starts_with("/usr/local/bin/berth serve --policy /etc/berth/policy.yaml"),
        "ExecStart: {}",
        one("ExecStart")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("StateDirectory"), "berth");
    assert_eq!(one("RestartPreventExitStatus"), "64", "invalid configuration (exit 64) must not restart in a loop");
    let stop = one("TimeoutStopSec").trim_end_matches('s').parse::<u64>().expect("TimeoutStopSec in seconds");
    assert!(stop > 10, "TimeoutStopSec must exceed the default reconcile.shutdown_grace (10s)");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
    ] {
        assert_eq!(one(key), value, "berth.service: {key}");
    }
    assert!(get("Install", "WantedBy").contains(&"multi-user.target"));

    // systemd's own parser: the unit as written, with ExecStart pointed at the binary under test (verify
    // insists that it exists). verify exits 0 even on unknown keys or bad values, so any output fails.
    let dir = TempDir::new("unit");
    let unit = dir.path().join("berth.service");
    let exe = env!("CARGO_BIN_EXE_berth");
    std::fs::write(&unit, text.replace("/usr/local/bin/berth", exe)).expect("writing the unit");
    let out = run_ok(tool("systemd-analyze").arg("verify").arg(&unit));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.trim().is_empty(), "systemd-analyze verify berth.service complained:\n{said}");
    // And its exposure score: 2.0 or less ("OK" is below 4.5).
    run_ok(tool("systemd-analyze").args(["security", "--offline=yes", "--threshold=20"]).arg(&unit));
}

#[test]
fn the_compose_file_mounts_the_docker_socket_and_the_policy_with_a_stable_instance() {
    let text = read("manifests/compose/docker-compose.yml");
    assert!(!text.contains("$("), "docker-compose.yml must not contain shell command substitutions");
    let compose = yaml("manifests/compose/docker-compose.yml");
    let berth = &compose["services"]["berth"];
    let volumes: Vec<&str> =
        berth["volumes"].as_array().expect("berth volumes").iter().filter_map(Value::as_str).collect();
    assert!(volumes.contains(&"/var/run/docker.sock:/var/run/docker.sock"), "berth volumes: {volumes:?}");
    let compose_dir = repo("manifests/compose");
    let policy = volumes
        .iter()
        .find_map(|v| v.strip_suffix(":/etc/berth/policy.yaml:ro"))
        .unwrap_or_else(|| panic!("no read-only mount of /etc/berth/policy.yaml in {volumes:?}"));
    berth::app::load_policy(&compose_dir.join(policy)).unwrap_or_else(|e| panic!("the mounted policy {policy}: {e}"));

    let command: Vec<&str> =
        berth["command"].as_array().expect("berth command").iter().filter_map(Value::as_str).collect();
    assert_eq!(command.first(), Some(&"serve"), "berth command: {command:?}");
    let after = |flag: &str| command.iter().position(|a| *a == flag).and_then(|i| command.get(i + 1)).copied();
    assert_eq!(after("--policy"), Some("/etc/berth/policy.yaml"));
    let instance = after("--instance").unwrap_or_else(|| panic!("no --instance in {command:?}"));
    instance.parse::<berth::reconciler::InstanceId>().unwrap_or_else(|e| panic!("--instance {instance}: {e}"));

    let prometheus = &compose["services"]["prometheus"];
    let mounts: Vec<&str> =
        prometheus["volumes"].as_array().expect("prometheus volumes").iter().filter_map(Value::as_str).collect();
    for file in ["prometheus.yml", "berth-rules.yml"] {
        let host = mounts
            .iter()
            .find_map(|m| m.strip_suffix(&format!(":/etc/prometheus/{file}:ro")))
            .unwrap_or_else(|| panic!("prometheus does not mount {file}: {mounts:?}"));
        assert!(compose_dir.join(host).is_file(), "{host} (from manifests/compose) does not exist");
    }
    let dockerfile = read("manifests/images/berth/Dockerfile");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/berth"]"#), "the berth image's entrypoint");
}

#[test]
fn the_load_balancer_configs_are_valid_and_route_by_session() {
    let haproxy = read("manifests/lb/haproxy.cfg");
    run_ok(tool("haproxy").args(["-c", "-f", "manifests/lb/haproxy.cfg"]));
    for needle in [
        // The stickiness tests/common/lb.rs runs in tests/replicas.rs and tests/scale_out.rs.
        "stick-table type string len 32",
        "stick match urlp(session)",
        "stick store-response res.hdr(berth-session)",
        "option redispatch",
        "timeout tunnel",
        "http-request set-header X-Forwarded-For %[src]",
        "uri /readyz",
    ] {
        assert!(haproxy.contains(needle), "haproxy.cfg lacks {needle:?}");
    }

    let nginx = read("manifests/lb/nginx.conf");
    let dir = TempDir::new("nginx");
    let globals = format!(
        "pid {}; error_log {};",
        dir.path().join("nginx.pid").display(),
        dir.path().join("error.log").display()
    );
    run_ok(tool("nginx").arg("-t").arg("-c").arg(repo("manifests/lb/nginx.conf")).arg("-g").arg(globals));
    for needle in [
        "hash $arg_session consistent;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_read_timeout 1h;",
    ] {
        assert!(nginx.contains(needle), "nginx.conf lacks {needle:?}");
    }
}

/// A Prometheus server process, killed by its pid when dropped (also while a failed test unwinds).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path`, parsed as Prometheus's JSON envelope; `Err` while it is not answering yet.
    async fn api(&mut self, path: &str) -> Result<Value, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        let (code, body) = http_get(self.addr, path).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{path}: {code} {body}"));
        }
        Ok(v["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn instant_value(data: &Value) -> Option<f64> {
    data["result"].get(0)?["value"].get(1)?.as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_real_berth_and_evaluates_the_rules() {
    let world = World::with_prefix("m");
    let server = world.serve().await;
    let dir = TempDir::new("prometheus");
    let rules = repo("manifests/prometheus/berth-rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: berth\n    metrics_path: /metrics\n    static_configs:\n      \
             - targets: ['{berth}']\n",
            rules = rules.display(),
            berth = server.addr,
        ),
    )
    .expect("writing prometheus.yml");
    // Never the default :9090, where a packaged Prometheus may already run.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let log = dir.path().join("prometheus.log");
    let log_file = std::fs::File::create(&log).expect("creating the log");
    let child = tool("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file)
        .spawn()
        .expect("starting prometheus");
    let mut prom = Prometheus { child, addr, log };
    let deadline = Instant::now() + PROMETHEUS_WAIT;

    // The target is up.
    let scrape_url = format!("http://{}/metrics", server.addr);
    loop {
        let targets = prom.api("/api/v1/targets").await;
        let health = targets.as_ref().ok().and_then(|d| {
            d["activeTargets"].as_array()?.iter().find(|t| t["scrapeUrl"] == scrape_url.as_str()).cloned()
        });
        if health.as_ref().is_some_and(|t| t["health"] == "up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the berth target never became up: {health:?} {targets:?}\nprometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // berth_docker_up is 1, and the session series exist, through Prometheus.
    loop {
        let up = prom.api(&format!("/api/v1/query?query={}", encode("berth_docker_up"))).await;
        let sessions = prom.api(&format!("/api/v1/query?query={}", encode("berth_sessions"))).await;
        let phases = sessions.as_ref().ok().and_then(|d| d["result"].as_array().map(Vec::len)).unwrap_or(0);
        if up.as_ref().ok().and_then(instant_value) == Some(1.0) && phases >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "berth_docker_up == 1 and the berth_sessions series never showed up: {up:?} {sessions:?}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every rule of berth-rules.yml is loaded and evaluates without error against berth's real series.
    loop {
        let data = prom.api("/api/v1/rules").await.unwrap_or_default();
        let rules: Vec<&Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let ok: BTreeSet<&str> =
            rules.iter().filter(|r| r["health"] == "ok").filter_map(|r| r["name"].as_str()).collect();
        if ALERTS.iter().all(|a| ok.contains(a)) {
            let firing: Vec<&str> =
                rules.iter().filter(|r| r["state"] != "inactive").filter_map(|r| r["name"].as_str()).collect();
            assert!(firing.is_empty(), "alerts pending or firing on a healthy, idle berth: {firing:?}");
            break;
        }
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(bad.is_empty(), "rules failed to evaluate: {bad:?}");
        assert!(Instant::now() < deadline, "the rules were never all evaluated: {data}\n{}", prom.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every dashboard query parses and runs, with Grafana's variables filled in.
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut exprs);
    for e in &exprs {
        let q = e.replace("$__rate_interval", "1m").replace("$instance", ".*");
        prom.api(&format!("/api/v1/query?query={}", encode(&q)))
            .await
            .unwrap_or_else(|err| panic!("the dashboard query {e:?} fails in Prometheus: {err}"));
    }
    let capacity = prom.api(&format!("/api/v1/query?query={}", encode("berth_session_capacity"))).await;
    assert_eq!(
        capacity.as_ref().ok().and_then(instant_value),
        Some(world.policy.limits.max_sessions as f64),
        "berth_session_capacity is limits.max_sessions: {capacity:?}"
    );

    drop(prom);
    server.stop().await;
}
