//! The policy file and the admin API against a real berth on the in-memory engine: what a reload may change,
//! a file caught mid-write, the admin API's Host and Origin checks, and the shipped policies checked as shipped.
//! Nothing here depends on Docker itself; the file watcher and the listeners are real.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth::app::{Server, load_policy};
use berth::reconciler::policy::Sha256Digest;
use berth::reload::ReloadStatus;
use berth::runtime::fake::FakeRuntime;
use common::client::connect;

const T: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "s3cret-admin-token";
const USER_TOKEN: &str = "a-user-token";

fn hex_sha(s: &str) -> String {
    hex::encode(Sha256Digest::of(s.as_bytes()).0)
}

/// A policy with anonymous sessions off, a user token, `max_sessions`, and `server` lines of its own.
fn policy_text(server: &str, max_sessions: usize) -> String {
    format!(
        "apiVersion: berth.dev/v1\nkind: Policy\n\
         server:\n  listen: 127.0.0.1:0\n{server}\
         auth:\n  anonymous: false\n  static_tokens:\n    - {{name: ci, sha256: {}}}\n\
         limits:\n  max_sessions: {max_sessions}\n  connections_per_minute: 1000\n  connection_burst: 1000\n",
        hex_sha(USER_TOKEN)
    )
}

fn admin_lines(token: bool) -> String {
    let mut s = "  admin_listen: 127.0.0.2:0\n".to_owned();
    if token {
        s.push_str(&format!("  admin_token_sha256: {}\n", hex_sha(ADMIN_TOKEN)));
    }
    s
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("berth-policy-{}", common::rand_hex(6)));
        std::fs::create_dir_all(&d).expect("temp dir");
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces the file the safe way: a complete file beside it, renamed onto it.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

async fn start(dir: &TempDir, text: &str) -> (Server, PathBuf) {
    let path = dir.0.join("policy.yaml");
    save(&path, text);
    let policy = load_policy(&path).expect("valid policy");
    let instance = format!("p{}", common::rand_hex(4)).parse().expect("instance id");
    let server = Server::start_on(FakeRuntime::default(), policy, instance, Some(path.clone())).await.expect("start");
    let mut ready = server.handle.readiness();
    tokio::time::timeout(T, ready.wait_for(|r| r.is_ready())).await.expect("ready").expect("alive");
    (server, path)
}

/// Waits for the next reload status after `after` (Unix ms).
async fn next_status(server: &Server, after: u64) -> ReloadStatus {
    let mut rx = server.reload.clone();
    let waited = tokio::time::timeout(T, rx.wait_for(|s| s.at > after)).await;
    waited.expect("the watcher reported the change").expect("alive").clone()
}

/// A raw HTTP/1.1 request with the given extra header lines; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf)).await.expect("answered").expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_the_admin_listener_and_its_token_keeps_both_until_a_restart() {
    let dir = TempDir::new();
    let (server, path) = start(&dir, &policy_text(&admin_lines(true), 100)).await;
    let admin = server.admin_addr.expect("admin listener");
    assert_eq!(http(admin, "GET", "/admin/sessions", &[]).await.0, 401);

    // The edit removes the admin listener and its token, and changes a limit that applies at once.
    let before = server.reload.borrow().at;
    save(&path, &policy_text("", 7));
    let status = next_status(&server, before).await;
    assert_eq!(status.last_error, None);
    assert_eq!(server.policy.borrow().limits.max_sessions, 7, "what a reload can apply, it applies");

    // The listener is still open, and still needs the token, whatever the Host says.
    assert_eq!(http(admin, "GET", "/admin/sessions", &[]).await.0, 401, "no token");
    assert_eq!(http(admin, "GET", "/admin/policy", &[("Host", "evil.example")]).await.0, 401, "no token");
    let (code, body) = http(admin, "GET", "/admin/policy", &[("Authorization", &bearer())]).await;
    assert_eq!(code, 200, "{body}");

    // And the change that waits for a restart is reported.
    assert_eq!(status.restart_pending, ["server.admin_listen", "server.admin_token_sha256"]);
    assert!(body.contains("server.admin_token_sha256"), "the pending keys are shown: {body}");
    assert!(server.metrics.render().contains("berth_policy_restart_pending 2"), "{}", server.metrics.render());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_written_in_place_is_never_applied_half_written() {
    let dir = TempDir::new();
    let full = policy_text("", 100);
    let (server, path) = start(&dir, &full).await;
    let hash = server.policy.borrow().hash();

    // Cut to its header and server section, written where it is: a writer caught mid-write.
    let half = full.split("auth:").next().expect("a server section").to_owned();
    let before = server.reload.borrow().at;
    std::fs::write(&path, &half).expect("truncated write");
    let status = next_status(&server, before).await;
    assert!(!server.policy.borrow().auth.anonymous, "anonymous sessions stay off");
    assert_eq!(server.policy.borrow().hash(), hash, "the half-written file is not applied");
    assert!(status.not_applied.is_some(), "{status:?}");
    assert!(server.metrics.render().contains(r#"berth_policy_reloads_total{result="in_place"} 1"#));
    let mut anonymous = connect(server.addr).await;
    anonymous.hello().await;
    let (code, err) = anonymous.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4003), Some("unauthorized")), "no anonymous session");

    // Completed in place a moment later: still not applied, since nothing tells a finished write apart.
    std::fs::write(&path, policy_text("", 50)).expect("completed write");
    let status = next_status(&server, status.at).await;
    assert!(status.not_applied.is_some(), "{status:?}");
    assert_eq!(server.policy.borrow().hash(), hash);

    // Renamed into place, the same file applies.
    save(&path, &policy_text("", 50));
    let status = next_status(&server, status.at).await;
    assert_eq!((status.last_error.as_deref(), status.not_applied.as_deref()), (None, None));
    assert_eq!(server.policy.borrow().limits.max_sessions, 50);
    assert!(!server.policy.borrow().auth.anonymous);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_without_a_token_refuses_rebound_hosts_and_cross_site_requests() {
    let dir = TempDir::new();
    let (server, _path) = start(&dir, &policy_text(&admin_lines(false), 100)).await;
    let admin = server.admin_addr.expect("admin listener");
    let own = admin.to_string();
    let local = format!("localhost:{}", admin.port());
    assert_eq!(http(admin, "GET", "/admin/policy", &[("Host", &own)]).await.0, 200);
    assert_eq!(http(admin, "GET", "/admin/policy", &[("Host", &local)]).await.0, 200);

    // DNS rebinding: the browser names the attacker's host.
    let (code, body) = http(admin, "GET", "/admin/policy", &[("Host", "evil.example")]).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("policy_hash"), "{body}");
    assert_eq!(http(admin, "GET", "/admin/sessions", &[("Host", "evil.example:9090")]).await.0, 403);

    // Cross-site requests: a form post, and anything a page sends with an Origin.
    let form = [("Origin", "http://evil.example"), ("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(http(admin, "POST", "/admin/reconcile", &form).await.0, 403);
    assert_eq!(http(admin, "POST", "/admin/reconcile", &[("Content-Type", "text/plain")]).await.0, 403);
    assert_eq!(http(admin, "GET", "/admin/policy", &[("Origin", "http://evil.example")]).await.0, 403);
    let same = format!("http://{own}");
    assert_eq!(http(admin, "GET", "/admin/policy", &[("Origin", &same)]).await.0, 403);

    // The CLI's own requests still work.
    assert_eq!(http(admin, "POST", "/admin/reconcile", &[]).await.0, 202);

    // The replay page is served beside the admin API, so that its requests stay on its origin; the terminal
    // page is not.
    for path in ["/replay", "/assets/replay.js", "/assets/replay.css", "/assets/xterm.js"] {
        let (code, body) = http(admin, "GET", path, &[("Host", &own)]).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    assert!(http(admin, "GET", "/replay", &[("Host", &own)]).await.1.contains("/assets/replay.js"));
    assert_eq!(http(admin, "GET", "/", &[("Host", &own)]).await.0, 404, "no terminal page on the admin listener");
    assert_eq!(http(admin, "GET", "/assets/app.js", &[("Host", &own)]).await.0, 200, "assets are static");
    server.stop().await;
}

fn berth_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(args).output().expect("run berth");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn policy_diff_says_the_admin_listener_and_its_token_need_a_restart() {
    let dir = TempDir::new();
    let (old, new) = (dir.0.join("old.yaml"), dir.0.join("new.yaml"));
    std::fs::write(&old, policy_text(&admin_lines(true), 100)).expect("write");
    std::fs::write(&new, policy_text("", 100)).expect("write");
    let (ok, out) = berth_cli(&["policy", "diff", &old.display().to_string(), &new.display().to_string()]);
    assert!(ok, "{out}");
    for key in ["server.admin_listen", "server.admin_token_sha256"] {
        let line = out.lines().skip_while(|l| !l.starts_with(key)).nth(1).unwrap_or_default();
        assert!(line.contains("needs a restart"), "{key}:\n{out}");
    }
}

/// Every policy shipped in `manifests/` passes `berth policy check` on a fresh checkout, with no file to create.
#[test]
fn every_shipped_policy_checks_as_shipped() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut files = vec![manifests.join("policy.yaml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(manifests.join("examples"))
        .expect("manifests/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    files.extend(examples);
    for file in files {
        let (ok, out) = berth_cli(&["policy", "check", &file.display().to_string()]);
        // Notes on settings the file acknowledges as unsafe may come first; the verdict is the last line.
        assert!(ok && out.trim().lines().last() == Some("ok"), "{} does not check as shipped:\n{out}", file.display());
        assert!(out.lines().all(|l| l == "ok" || l.starts_with("note: ")), "{}:\n{out}", file.display());
    }
}

/// `berth policy check` says what a warm pool holds against the caps; a pool for a profile whose settings the launcher cannot deliver is refused with the reason.
#[test]
fn policy_check_explains_the_warm_pool() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/warm-pool.yaml");
    let (ok, out) = berth_cli(&["policy", "check", &path.display().to_string()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("note: profiles.default.pool: 10 containers wait, counted against limits.max_sessions (210)"),
        "{out}"
    );
    let dir = TempDir::new();
    let broken = dir.0.join("no-command.yaml");
    let text = std::fs::read_to_string(&path).expect("read").replace("    command: [/bin/sh, -i]\n", "");
    std::fs::write(&broken, text).expect("write");
    let (ok, out) = berth_cli(&["policy", "check", &broken.display().to_string()]);
    assert!(!ok, "{out}");
    assert!(out.contains("profiles.default.pool.size: this profile cannot keep a pool"), "{out}");
    assert!(out.contains("set command to the shell to run"), "{out}");
}

/// The placeholder key in the JWT example is a real RSA public key: berth refuses tokens with it for their
/// signature, not for an unusable key.
#[test]
fn the_jwt_example_key_verifies_signatures() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/jwt.yaml");
    let policy = load_policy(&path).expect("checks as shipped");
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    match berth::auth::authenticate(&policy.auth, Some(token), 0) {
        Err(berth::auth::AuthError::Invalid(_)) => {}
        other => panic!("expected a refused signature, got {other:?}"),
    }
}
