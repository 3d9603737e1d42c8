//! The replay page in a real browser against a real berth: the `berth` binary with its default profile
//! recording (`recording.mode: best_effort`, `recordings.dir` in a temp dir) and the admin API on the main
//! listener behind a token, real Docker, and `web/test/replay.mjs` (headless Chromium through playwright-core).
//! The script draws a screen as the session's owner (lines, a `clear`, colours), ends the session through the
//! admin API, replays its recording on `/replay` at 100× skipping to the end, and checks that the replayed screen
//! is the owner's (size, text, colours, cursor). Screenshots of both pages go to `ci-artifacts/`.
//!
//! The browser and node are not optional: when they are missing the test fails and says how to install them.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth::reconciler::policy::Sha256Digest;
use common::World;
use common::browser::browser_tools;
use common::process::{Berth, TempDir, sample, write_policy};
use tokio::io::AsyncReadExt;

/// The whole browser script's bound; its own steps time out well before.
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_in_chromium_to_the_screen_its_owner_saw() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools(root);
    common::docker().await;
    let began = Instant::now();

    // Declared first, so it is dropped last: its containers are removed after berth is gone.
    let w = World::with_prefix("rp");
    let dir = TempDir::new("browser-replay");
    let casts = dir.path().join("casts");
    let token = common::rand_hex(16);
    let policy = write_policy(dir.path(), &w, &[]);
    let mut yaml = std::fs::read_to_string(&policy).expect("policy");
    yaml = yaml.replace(
        "  # admin_token_sha256: <64 hex digits>\n",
        &format!("  admin_token_sha256: {}\n", hex::encode(Sha256Digest::of(token.as_bytes()).0)),
    );
    yaml = yaml.replace("    unsafe: []\n", "    unsafe: []\n    recording: {mode: best_effort}\n");
    yaml.push_str(&format!("\nrecordings:\n  dir: {}\n", casts.display()));
    std::fs::write(&policy, yaml).expect("policy");
    let loaded = berth::app::load_policy(&policy).expect("the edited policy is valid");
    assert!(loaded.server.admin_token_sha256.is_some(), "the admin API is on, behind the token");
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    berth.wait_ready(Duration::from_secs(30)).await;

    let artifacts = root.join("ci-artifacts");
    std::fs::create_dir_all(&artifacts).expect("creating ci-artifacts/");
    let owner_png = artifacts.join("replay-owner.png");
    let replay_png = artifacts.join("replay.png");
    for png in [&owner_png, &replay_png] {
        let _ = std::fs::remove_file(png);
    }
    let url = format!("http://{}/", berth.addr);
    let script = root.join("web/test/replay.mjs");
    let ran = Instant::now();
    // The token is an argument of the test's own child, never in a URL berth sees (the page reads it from
    // the fragment).
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&token)
        .arg(&owner_png)
        .arg(&replay_png)
        .current_dir(root.join("web"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node");
    let mut stdout = node.stdout.take().expect("piped stdout");
    let mut stderr = node.stderr.take().expect("piped stderr");
    let drive = async {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        (node.wait().await.expect("node exits"), out, err)
    };
    let (status, out, err) = match tokio::time::timeout(SCRIPT_LIMIT, drive).await {
        Ok(done) => done,
        Err(_) => panic!("{} did not finish within {SCRIPT_LIMIT:?} (node was killed)", script.display()),
    };
    eprintln!("--- node {} {url} ({:?}, {status})\n{out}{err}---", script.display(), ran.elapsed());
    assert!(status.success(), "the replay browser test failed ({status}); its output is above");
    assert!(!berth.log().contains(&token), "the admin token never reaches berth's log");
    for png in [&owner_png, &replay_png] {
        let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "no screenshot at {}", png.display());
        eprintln!("screenshot: {} ({size} bytes)", png.display());
    }

    // The session was released through the admin API: its container goes, and berth leaves nothing behind.
    common::eventually(Duration::from_secs(30), "the session's container removed", || w.containers(None).is_empty())
        .await;
    let text = berth.metrics().await;
    assert_eq!(sample(&text, r#"berth_sessions{phase="running"}"#), Some(0.0), "no session is left");
    let status = berth.terminate(Duration::from_secs(30));
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    assert!(w.containers(None).is_empty(), "no container of the test is left");
    eprintln!("whole test took {:?}", began.elapsed());
}
