//! Session recordings end to end: a real berth, real Docker, a real client. A session's recording is an
//! asciicast v2 file with what the shell printed and its resizes (and input only when the profile asks), a
//! `required` recording that fails ends its session with `recording_failed`, a kill -9 of berth leaves a file
//! that parses, retention removes old recordings, and the admin API lists, downloads and deletes them behind
//! its token. Every test ends with none of its containers left.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth::metrics::RecordingFailureKind;
use berth::reconciler::Policy;
use berth::reconciler::policy::{RecordingMode, Sha256Digest, StaticToken};
use berth::recording::asciicast::{self, Code, Event, Header};
use common::World;
use common::client::{Client, at_prompt};
use common::process::{Berth, TempDir, write_policy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// `w`'s policy with its default profile recorded into `dir`.
fn recorded(w: &World, dir: &Path, mode: RecordingMode, input: bool) -> Policy {
    let mut p = w.policy.clone();
    p.recordings.dir = Some(dir.to_path_buf());
    for profile in p.profiles.values_mut() {
        profile.recording.mode = mode;
        profile.recording.input = input;
    }
    p
}

/// The recordings in `dir` (names of a recording's shape only).
fn casts(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|e| e == "cast"));
    out.sort();
    out
}

/// Waits until `dir` holds one recording whose events satisfy `f`; returns its header and events.
async fn until_recorded(dir: &Path, what: &str, f: impl Fn(&[Event]) -> bool) -> (PathBuf, Header, Vec<Event>) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let [one] = casts(dir).as_slice() {
            let text = std::fs::read_to_string(one).unwrap_or_default();
            if let Ok((h, events)) = asciicast::parse(&text)
                && f(&events)
            {
                return (one.clone(), h, events);
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no recording in {} with {what} within {T:?}", dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn output_of(events: &[Event]) -> String {
    events.iter().filter(|e| e.code == Code::Output).map(|e| e.data.as_str()).collect()
}

/// Releases the client's session and waits until none of the world's containers is left.
async fn release_and_clean(w: &World, c: &mut Client) {
    c.send_json(json!({"type": "release"})).await;
    let _ = c.until_closed(T).await;
    common::eventually(T, "no container left", || w.containers(None).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_recorded_as_asciicast_v2_with_its_output_and_resizes_but_not_its_input() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-output");
    let audit = dir.path().join("audit.jsonl");
    let mut policy = recorded(&w, &dir.path().join("casts"), RecordingMode::BestEffort, false);
    policy.audit.log = Some(audit.clone());
    policy.auth.static_tokens =
        vec![StaticToken { name: "ci".into(), sha256: Sha256Digest::of(b"letmein"), profiles: vec![] }];
    let server = w.serve_with(policy).await;
    let mut c = common::client::connect(server.addr).await;
    c.send_json(json!({"type": "hello", "token": "letmein", "cols": 80, "rows": 24})).await;
    c.until_ready().await;
    c.until_output("$ ").await;
    c.input("echo rec-$((40+2))\r").await;
    c.until_output("rec-42").await;
    c.send_json(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    let casts_dir = dir.path().join("casts");
    let (path, header, events) = until_recorded(&casts_dir, "the echo and the resize", |e| {
        output_of(e).contains("rec-42") && e.iter().any(|e| e.code == Code::Resize && e.size() == Some((100, 30)))
    })
    .await;
    assert_eq!(header.version, 2);
    assert!(header.timestamp > 1_600_000_000, "{header:?}");
    let session = c.session.clone().expect("a session id");
    let name = path.file_name().and_then(|n| n.to_str()).expect("a name").to_owned();
    assert!(name.starts_with(&format!("{session}-")) && name.ends_with("Z.cast"), "{name}");
    assert!(output_of(&events).contains("$ "), "the first prompt is recorded");
    assert!(events.iter().all(|e| e.code != Code::Input), "input is not recorded unless the profile asks");
    assert!(events.windows(2).all(|p| p[0].at <= p[1].at), "times never go back");
    assert_eq!(server.metrics.recordings_active(), 1);
    release_and_clean(&w, &mut c).await;
    common::eventually(T, "the recording closed", || server.metrics.recordings_active() == 0).await;
    // The audit log: a start and an end line for the session, with what it did.
    common::eventually(T, "two audit lines", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().filter(|l| l.contains(&session)).count() == 2)
    })
    .await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!((lines[0]["event"].as_str(), lines[0]["client_ip"].as_str()), (Some("start"), Some("127.0.0.1")));
    assert_eq!((lines[1]["event"].as_str(), lines[1]["reason"].as_str()), (Some("end"), Some("released")));
    assert_eq!(lines[1]["profile"], "default");
    assert_eq!((lines[0]["identity"].as_str(), lines[1]["identity"].as_str()), (Some("ci"), Some("ci")));
    assert_eq!(lines[1]["recording"], name.as_str());
    assert!(lines[1]["bytes_out"].as_u64() > Some(0) && lines[1]["bytes_in"].as_u64() > Some(0), "{lines:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_is_recorded_when_the_profile_asks() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-input");
    let server = w.serve_with(recorded(&w, dir.path(), RecordingMode::BestEffort, true)).await;
    let mut c = at_prompt(server.addr).await;
    c.input("echo typed-$((2+3))\r").await;
    c.until_output("typed-5").await;
    // The file is written behind the session: wait for the output too, not only the input before it.
    until_recorded(dir.path(), "the typed line as input and its output", |e| {
        let typed: String = e.iter().filter(|e| e.code == Code::Input).map(|e| e.data.as_str()).collect();
        typed.contains("echo typed-$((2+3))\r") && output_of(e).contains("typed-5")
    })
    .await;
    release_and_clean(&w, &mut c).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_recording_that_reaches_its_cap_ends_the_session_with_recording_failed() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-required");
    let mut policy = recorded(&w, dir.path(), RecordingMode::Required, false);
    for p in policy.profiles.values_mut() {
        p.recording.max_bytes = 4 << 10;
    }
    let server = w.serve_with(policy).await;
    let mut c = at_prompt(server.addr).await;
    c.input("head -c 20000 /dev/zero | tr '\\0' x; echo\r").await;
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "recording_failed", "{exit}");
    assert!(exit["message"].as_str().is_some_and(|m| m.contains("size cap")), "{exit}");
    let (code, _) = c.until_closed(T).await;
    assert_eq!(code, Some(4000), "the session-ended close");
    assert_eq!(server.metrics.recording_failures(RecordingFailureKind::Capped), 1);
    common::eventually(T, "no container left", || w.containers(None).is_empty()).await;
    let [file] = casts(dir.path()).try_into().expect("one recording");
    let bytes = std::fs::read(&file).expect("the recording");
    assert!(bytes.len() <= 4 << 10 && bytes.ends_with(b"\n"), "capped at a whole line: {}", bytes.len());
    asciicast::parse(&String::from_utf8_lossy(&bytes)).expect("what was recorded parses");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_recording_whose_directory_cannot_be_written_ends_the_session() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-unwritable");
    let server = w.serve_with(recorded(&w, &dir.path().join("casts"), RecordingMode::Required, false)).await;
    // A file where the directory was: nothing can be created under it, even by root.
    std::fs::remove_dir(dir.path().join("casts")).expect("berth created the directory at start");
    std::fs::write(dir.path().join("casts"), b"").expect("a file in its place");
    let mut c = common::client::connect(server.addr).await;
    c.hello().await;
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "recording_failed", "{exit}");
    assert_eq!(server.metrics.recording_failures(RecordingFailureKind::Open), 1);
    common::eventually(T, "no container left", || w.containers(None).is_empty()).await;
    server.stop().await;
}

/// Sets a file's last change `age` ago.
fn age(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).expect("open");
    f.set_modified(SystemTime::now() - age).expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_torn_recordings_are_repaired_and_retention_removes_old_ones_only() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-retention");
    let header = Header::new(80, 24, 1_700_000_000, None).line();
    let write = |name: &str, body: &str, old: Option<Duration>| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{header}{body}")).expect("write");
        if let Some(a) = old {
            age(&p, a);
        }
        p
    };
    let day = Duration::from_secs(86_400);
    let old = write("aaaa-20231101T000000Z.cast", "[0.1, \"o\", \"old\"]\n", Some(10 * day));
    let fresh = write("bbbb-20231114T000000Z.cast", "[0.1, \"o\", \"new\"]\n", None);
    let torn = write("cccc-20231114T000000Z.cast", "[0.1, \"o\", \"whole\"]\n[0.2, \"o\", \"to", None);
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "an operator's file").expect("write");
    age(&foreign, 10 * day);
    let mut policy = w.policy.clone();
    policy.recordings.dir = Some(dir.path().to_path_buf());
    policy.recordings.retention.max_age = Some(7 * day);
    let server = w.serve_with(policy).await;
    common::eventually(T, "the old recording removed and counted", || server.metrics.recordings_removed() == 1).await;
    assert!(!old.exists(), "the old recording is gone");
    assert!(fresh.exists() && foreign.exists(), "newer recordings and files not named like one stay");
    let repaired = std::fs::read_to_string(&torn).expect("the torn recording");
    assert!(repaired.ends_with("[0.1, \"o\", \"whole\"]\n"), "trimmed to its last whole line: {repaired:?}");
    server.stop().await;
    assert!(w.containers(None).is_empty());
}

/// A raw HTTP/1.1 request to the admin API; returns the status line, the head and the body as text.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf)).await.expect("answer in time").expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_downloads_and_deletes_recordings_behind_its_token() {
    common::docker().await;
    let w = World::with_prefix("r");
    let dir = TempDir::new("rec-admin");
    let name = "0123456789abcdef0123456789abcdef-20231114T221320Z.cast";
    let body = format!("{}[0.5, \"o\", \"hello\"]\n", Header::new(80, 24, 1_700_000_000, None).line());
    std::fs::write(dir.path().join(name), &body).expect("write");
    std::fs::write(dir.path().join("secret.txt"), "not a recording").expect("write");
    let mut policy = w.policy.clone();
    policy.recordings.dir = Some(dir.path().to_path_buf());
    policy.server.admin_token_sha256 = Some(Sha256Digest::of(b"s3cret"));
    let server = w.serve_with(policy).await;
    let tok = Some("s3cret");
    assert_eq!(http(server.addr, "GET", "/admin/recordings", None).await.0, 401, "no token, no list");
    assert_eq!(http(server.addr, "GET", &format!("/admin/recordings/{name}"), Some("wrong")).await.0, 401);
    let (status, _, list) = http(server.addr, "GET", "/admin/recordings", tok).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(
        list,
        json!([{"name": name, "session": "0123456789abcdef0123456789abcdef", "started": 1_700_000_000u64,
                "size": body.len(), "active": false}])
    );
    let (status, head, got) = http(server.addr, "GET", &format!("/admin/recordings/{name}"), tok).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/x-asciicast"), "{head}");
    assert!(got.contains("\"hello\"") && got.contains("\"version\":2"), "{got}");
    for escape in ["..%2Fsecret.txt", "%2e%2e%2fpolicy.cast", "secret.txt", ".hidden.cast"] {
        let (status, _, _) = http(server.addr, "GET", &format!("/admin/recordings/{escape}"), tok).await;
        assert_eq!(status, 400, "{escape} is refused");
        let (status, _, _) = http(server.addr, "DELETE", &format!("/admin/recordings/{escape}"), tok).await;
        assert_eq!(status, 400, "{escape} is refused");
    }
    // The CLI, through the same API.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret\n").expect("token file");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("recordings")
            .args(["--admin-url", &format!("http://{}", server.addr)])
            .arg("--token-file")
            .arg(&token_file)
            .args(args)
            .output()
            .expect("the berth binary");
        assert!(out.status.success(), "berth recordings {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ls = tokio::task::block_in_place(|| cli(&["ls"]));
    assert!(ls.contains(name) && ls.contains("20231114T221320Z"), "{ls}");
    let played = tokio::task::block_in_place(|| cli(&["play", name, "--no-wait"]));
    assert_eq!(played, "hello");
    let fast = tokio::task::block_in_place(|| cli(&["play", name, "--speed", "100"]));
    assert_eq!(fast, "hello");
    assert_eq!(http(server.addr, "DELETE", &format!("/admin/recordings/{name}"), None).await.0, 401);
    assert!(dir.path().join(name).exists());
    assert_eq!(http(server.addr, "DELETE", &format!("/admin/recordings/{name}"), tok).await.0, 200);
    assert!(!dir.path().join(name).exists() && dir.path().join("secret.txt").exists());
    assert_eq!(http(server.addr, "GET", &format!("/admin/recordings/{name}"), tok).await.0, 404);
    server.stop().await;
    assert!(w.containers(None).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_of_berth_mid_recording_leaves_a_file_that_parses() {
    common::docker().await;
    let w = World::with_prefix("r");
    let state = TempDir::new("rec-kill");
    let casts_dir = state.path().join("casts");
    let path = write_policy(state.path(), &w, &[("reconcile.startup", "remove_all")]);
    let mut yaml = std::fs::read_to_string(&path).expect("policy");
    yaml = yaml.replace("    unsafe: []\n", "    unsafe: []\n    recording: {mode: best_effort}\n");
    yaml.push_str(&format!("\nrecordings:\n  dir: {}\n", casts_dir.display()));
    std::fs::write(&path, yaml).expect("policy");
    berth::app::load_policy(&path).expect("the edited policy is valid");
    let instance = w.instance.to_string();
    let mut berth = Berth::spawn(&path, &instance, state.path());
    berth.wait_ready(T).await;
    let mut c = at_prompt(berth.addr).await;
    // Output keeps coming while berth dies.
    c.input("i=0; while :; do i=$((i+1)); echo \"line-$i\"; done\r").await;
    c.until_output("line-2000").await;
    // The file is written behind the session (a kill loses what is still queued): wait until it holds some lines.
    common::eventually(T, "recorded lines", || {
        casts(&casts_dir).first().and_then(|f| std::fs::read_to_string(f).ok()).is_some_and(|t| t.contains("line-"))
    })
    .await;
    let status = berth.kill9();
    assert_eq!(status.signal(), Some(9), "berth died of SIGKILL: {status}");
    let [file] = casts(&casts_dir).try_into().expect("one recording");
    let text = String::from_utf8_lossy(&std::fs::read(&file).expect("read")).into_owned();
    let (_, events) = asciicast::parse(&text).expect("the file parses after kill -9");
    assert!(output_of(&events).contains("line-"), "it holds what the shell printed");
    // A restart repairs any torn last line, and (remove_all) removes the container.
    let mut again = Berth::spawn(&path, &instance, state.path());
    common::eventually(T, "no container left", || w.containers(None).is_empty()).await;
    let bytes = std::fs::read(&file).expect("read");
    assert!(bytes.ends_with(b"\n"), "whole lines only after the restart");
    asciicast::parse(&String::from_utf8_lossy(&bytes)).expect("parses");
    let status = again.terminate(T);
    assert!(status.success() || status.code().is_some(), "{status}");
}
