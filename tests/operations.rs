//! Operators' surface against a real berth and real Docker: hot reload under load, and the admin API.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::World;
use common::client::{self, Client, connect};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn policy_yaml(w: &World, image: &str, max_sessions: usize, extra: &str) -> String {
    format!(
        "apiVersion: berth.dev/v1\nkind: Policy\n\
         server:\n  listen: 127.0.0.1:0\n{extra}\
         profiles:\n  default:\n    image: {image}\n\
         limits:\n  max_sessions: {max_sessions}\n  max_anonymous: 100\n  max_per_ip: 100\n  \
         connections_per_minute: 1000\n  connection_burst: 1000\n  queue_wait: 0s\n\
         reconcile:\n  resync_interval: 2s\n  concurrency: 6\n\
         docker:\n  namespace: {}\n  name_prefix: {}\n",
        w.ns.as_str(),
        w.policy.docker.name_prefix
    )
}

/// Replaces the file the way editors do: write a temporary file, then rename it over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("berth-ops-{}", common::rand_hex(6)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn run(c: &mut Client, cmd: &str, expect: &str) {
    let from = c.output.len();
    c.input(&format!("{cmd}\r")).await;
    c.until_output_from(from, expect, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_keeps_running_sessions_and_applies_valid_edits() {
    common::docker().await;
    let w = World::new();
    let dir = temp_dir();
    let path = dir.join("policy.yaml");
    save(&path, &policy_yaml(&w, "berth-session:latest", 100, ""));
    let policy = berth::app::load_policy(&path).expect("valid policy");
    let server =
        berth::app::Server::start_with(policy, w.instance.clone(), None, Some(path.clone())).await.expect("start");
    let mut ready = server.handle.readiness();
    tokio::time::timeout(T, ready.wait_for(|r| r.is_ready())).await.expect("ready").expect("alive");

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(client::ready(server.addr).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        run(c, &format!("export N={i}; echo got$((N+100))"), &format!("got{}", i + 100)).await;
    }

    // 1. An invalid edit changes nothing and is reported with line and column.
    let hash_before = server.policy.borrow().hash();
    let mut reload = server.reload.clone();
    save(&path, "apiVersion: berth.dev/v1\nkind: Policy\nlimits:\n  max_sessions: many\n");
    let status = tokio::time::timeout(T, reload.wait_for(|r| r.last_error.is_some()))
        .await
        .expect("reported")
        .expect("alive")
        .clone();
    let err = status.last_error.expect("error");
    assert!(err.contains("policy.yaml:4:17"), "located error: {err}");
    assert_eq!(server.policy.borrow().hash(), hash_before, "the old policy stays in force");
    assert!(server.metrics.render().contains(r#"berth_policy_reloads_total{result="error"} 1"#));
    run(&mut clients[0], "echo still$((1+1))", "still2").await;

    // 2. A valid edit lowering the cap refuses new sessions but keeps the 20 running.
    save(&path, &policy_yaml(&w, "berth-session:latest", 20, ""));
    tokio::time::timeout(T, reload.wait_for(|r| r.last_error.is_none())).await.expect("reloaded").expect("alive");
    assert_eq!(server.policy.borrow().limits.max_sessions, 20);
    let mut refused = connect(server.addr).await;
    refused.hello().await;
    let (code, err) = refused.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4029), Some("full")));
    for (i, c) in clients.iter_mut().enumerate() {
        run(c, "echo n=$N", &format!("n={i}")).await;
    }

    // 3. An image change starts new sessions on the new image; old ones are untouched.
    save(&path, &policy_yaml(&w, "berth-session:v2", 30, ""));
    let mut p = server.policy.subscribe();
    tokio::time::timeout(T, p.wait_for(|p| p.limits.max_sessions == 30)).await.expect("reloaded").expect("alive");
    let mut fresh = client::ready(server.addr).await;
    run(&mut fresh, "cat /etc/berth-image", "v2").await;
    for c in clients.iter_mut() {
        run(c, "cat /etc/berth-image", "latest").await;
    }
    assert_eq!(w.containers(Some("running")).len(), 21);
    // Drift is visible: 20 containers carry the old profile hash.
    let mut drift = 0;
    for _ in 0..60 {
        let m = server.metrics.render();
        drift = m
            .lines()
            .find_map(|l| l.strip_prefix("berth_containers_policy_drift "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1);
        if drift == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(drift, 20);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw HTTP request to the server; returns (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn json_body(body: &str) -> Value {
    // Bodies may be chunked; the JSON is the longest line that parses.
    body.lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).next().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_closed_by_default_and_refuses_requests_without_its_token() {
    common::docker().await;
    let w = World::new();
    let open_server = w.serve().await;
    let (status, _) = http(open_server.addr, "GET", "/admin/sessions", None).await;
    assert_eq!(status, 404, "no token configured: no admin API on the public listener");
    open_server.stop().await;

    let mut policy = w.policy.clone();
    policy.server.admin_token_sha256 = Some(berth::reconciler::policy::Sha256Digest::of(b"s3cret"));
    let server = w.serve_with(policy).await;
    assert_eq!(http(server.addr, "GET", "/admin/sessions", None).await.0, 401);
    assert_eq!(http(server.addr, "GET", "/admin/sessions", Some("wrong")).await.0, 401);
    let (status, body) = http(server.addr, "GET", "/admin/sessions", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body), Value::Array(vec![]));

    // The "why" view shows a session's recent decisions.
    let mut c = client::ready(server.addr).await;
    let id = c.session.clone().expect("session");
    run(&mut c, "echo hi", "hi").await;
    let (status, body) = http(server.addr, "GET", &format!("/admin/sessions/{id}"), Some("s3cret")).await;
    assert_eq!(status, 200);
    let detail = json_body(&body);
    assert_eq!(detail["session"]["status"]["phase"], "running");
    let log: Vec<String> = detail["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| format!("{} {}", d["kind"].as_str().unwrap_or(""), d["detail"].as_str().unwrap_or("")))
        .collect();
    for want in [
        "planned create",
        "outcome create ok",
        "planned attach",
        "outcome attach ok",
        "planned start",
        "outcome start ok",
    ] {
        assert!(log.iter().any(|l| l.starts_with(want)), "missing {want:?} in {log:#?}");
    }
    // A converged world: the dry run plans nothing.
    let (status, body) = http(server.addr, "GET", "/admin/plan", Some("s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(json_body(&body), serde_json::json!({"actions": [], "ends": []}));
    // Ending a session through the admin API.
    let (status, _) = http(server.addr, "DELETE", &format!("/admin/sessions/{id}"), Some("s3cret")).await;
    assert_eq!(status, 202);
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "released");
    server.stop().await;
}
