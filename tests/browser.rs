//! The web page in a real browser against a real berth: the `berth` binary on its default policy (in a
//! namespace of its own) and real Docker, driven by `web/test/browser.mjs` (headless Chromium through
//! playwright-core). The script opens the page, runs commands, resizes, reloads into the same shell, has berth
//! restarted under the open page (SIGTERM, then the same instance on the same port: the page comes back to the
//! same shell by itself) and takes a screenshot (`ci-artifacts/browser-terminal.png`).
//!
//! The browser and node are not optional: when they are missing the test fails and says how to install them.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::World;
use common::browser::browser_tools;
use common::lb::free_port;
use common::process::{Berth, TempDir, sample, write_policy, write_pooled_policy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The whole browser script's bound; its own steps time out well before.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// One browser at a time: the script's steps have time bounds, and two Chromiums on a small machine share it.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The page on a berth whose profile keeps a warm pool (decision 0025): the page's session claims a pooled
/// container, runs the same script (commands, resize, reload into the same shell), and nothing is left after
/// berth stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_runs_a_pooled_shell_in_chromium() {
    let _one = ONE_BROWSER.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools(root);
    common::docker().await;
    let w = World::with_prefix("b");
    let dir = TempDir::new("browser-pool");
    let policy = write_pooled_policy(dir.path(), &w, &[("reconcile.shutdown", "remove")], 1);
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    berth.wait_ready(Duration::from_secs(30)).await;
    let ready = r#"berth_pool_ready{profile="default"}"#;
    berth.wait_metric(ready, 1.0, Instant::now() + Duration::from_secs(30), "the pool is ready").await;

    let artifacts = root.join("ci-artifacts");
    std::fs::create_dir_all(&artifacts).expect("creating ci-artifacts/");
    let screenshot = artifacts.join("browser-terminal-pooled.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/", berth.addr);
    let script = root.join("web/test/browser.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&screenshot)
        .current_dir(root.join("web"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {SCRIPT_LIMIT:?}", script.display()))
        .expect("running node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("--- node {} {url} ({})\n{stdout}{stderr}---", script.display(), out.status);
    assert!(out.status.success(), "the pooled browser test failed; its output is above");
    let text = berth.metrics().await;
    assert_eq!(
        sample(&text, r#"berth_pool_claims_total{profile="default"}"#),
        Some(1.0),
        "the page's session was pooled"
    );
    assert_eq!(sample(&text, r#"berth_pool_misses_total{profile="default"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"berth_time_to_first_output_seconds_count{start="pool"}"#), Some(1.0));

    let status = berth.terminate(Duration::from_secs(30));
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    assert!(w.containers(None).is_empty(), "no session container is left");
    let pool = w.cli(&["ps", "-aq", "--filter", &format!("label={}", w.ns.pool_key())]);
    assert!(pool.is_empty(), "no pooled or claimed container is left: {pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_runs_a_shell_in_chromium_against_the_real_binary() {
    let _one = ONE_BROWSER.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools(root);
    common::docker().await;
    let began = Instant::now();

    // Declared first, so it is dropped last: its containers are removed after berth is gone.
    let w = World::with_prefix("b");
    let dir = TempDir::new("browser");
    let policy = write_policy(dir.path(), &w, &[]);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut berth = Berth::spawn_with(&policy, w.instance.as_str(), dir.path(), &listen, None);
    berth.wait_ready(Duration::from_secs(30)).await;

    let artifacts = root.join("ci-artifacts");
    std::fs::create_dir_all(&artifacts).expect("creating ci-artifacts/");
    let screenshot = artifacts.join("browser-terminal.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/", berth.addr);
    let script = root.join("web/test/browser.mjs");
    let ran = Instant::now();
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&screenshot)
        .env("BERTH_TEST_RESTART", "1")
        .current_dir(root.join("web"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running node");
    let mut stdin = node.stdin.take().expect("piped stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("piped stdout")).lines();
    let mut stderr = node.stderr.take().expect("piped stderr");
    // The script's lines, and the restart it asks for: berth drains and exits, and the same instance starts
    // again on the same port and state directory (it adopts the page's container).
    let mut stdout = String::new();
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("reading node's output") {
            stdout.push_str(&line);
            stdout.push('\n');
            if line == "RESTART berth" {
                let status = berth.terminate(Duration::from_secs(30));
                assert!(status.success(), "berth exits 0 after SIGTERM: {status}; its log:\n{}", berth.log_tail(40));
                berth = Berth::spawn_with(&policy, w.instance.as_str(), dir.path(), &listen, None);
                berth.wait_ready(Duration::from_secs(30)).await;
                eprintln!("berth restarted under the page");
                stdin.write_all(b"restarted\n").await.expect("answering node");
            }
        }
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err).await;
        (node.wait().await.expect("node exits"), err)
    };
    let (status, err) = match tokio::time::timeout(SCRIPT_LIMIT, drive).await {
        Ok(done) => done,
        Err(_) => panic!("{} did not finish within {SCRIPT_LIMIT:?} (node was killed)", script.display()),
    };
    eprintln!("--- node {} {url} ({:?}, {status})\n{stdout}{err}---", script.display(), ran.elapsed());
    assert!(status.success(), "the browser test failed ({status}); its output is above");
    // The restarted process served the page's comeback: a resume, not a new session.
    let text = berth.metrics().await;
    assert_eq!(
        sample(&text, r#"berth_resumes_total{result="ok"}"#),
        Some(1.0),
        "the page resumed once after the restart"
    );
    assert_eq!(sample(&text, r#"berth_sessions{phase="running"}"#), Some(1.0), "the adopted session, and no other");
    let png = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(png > 0, "no screenshot at {}", screenshot.display());
    eprintln!("screenshot: {} ({png} bytes)", screenshot.display());

    // berth drains on SIGTERM; its default shutdown mode leaves running sessions for the next start to adopt.
    let status = berth.terminate(Duration::from_secs(30));
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    let left = w.containers(None);
    let running = w.containers(Some("running"));
    assert_eq!(left.len(), 1, "exactly the page's one session is left for adoption: {left:?}");
    assert_eq!(running, left, "and its container still runs");

    // The test, not berth, cleans up what the default policy leaves.
    let mut rm = vec!["rm", "-f"];
    rm.extend(left.iter().map(String::as_str));
    w.cli(&rm);
    assert!(w.containers(None).is_empty(), "no container of the test is left");
    eprintln!("whole test took {:?}", began.elapsed());
}

/// A shared session in two pages (web/test/share.mjs): the owner's Share control makes a viewer link, a second
/// page opens it read-only and follows the owner's shell, the owner sees it in presence. Screenshots of both
/// pages go to `ci-artifacts/browser-share-{owner,viewer}.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_session_shows_in_a_second_page_read_only() {
    let _one = ONE_BROWSER.lock().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser_tools(root);
    common::docker().await;
    let w = World::with_prefix("b");
    let dir = TempDir::new("browser-share");
    let policy = write_policy(dir.path(), &w, &[]);
    let yaml = std::fs::read_to_string(&policy).expect("reading the policy");
    let off = "    # sharing: {enabled: false, max_viewers: 8, max_grant_ttl: 1h, anonymous: false}";
    assert!(yaml.contains(off), "manifests/policy.yaml shows the sharing keys");
    let on = "    sharing: {enabled: true, max_viewers: 8, max_grant_ttl: 1h, anonymous: true}";
    std::fs::write(&policy, yaml.replace(off, on)).expect("writing the policy");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut berth = Berth::spawn_with(&policy, w.instance.as_str(), dir.path(), &listen, None);
    berth.wait_ready(Duration::from_secs(30)).await;

    let artifacts = root.join("ci-artifacts");
    std::fs::create_dir_all(&artifacts).expect("creating ci-artifacts/");
    let screenshot = artifacts.join("browser-share.png");
    let url = format!("http://{}/", berth.addr);
    let script = root.join("web/test/share.mjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&screenshot)
        .current_dir(root.join("web"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(SCRIPT_LIMIT, run).await {
        Ok(out) => out.expect("running node"),
        Err(_) => panic!("{} did not finish within {SCRIPT_LIMIT:?} (node was killed)", script.display()),
    };
    eprintln!(
        "--- node {} {url}\n{}{}---",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the shared-session browser test failed; its output is above");
    for who in ["owner", "viewer"] {
        let png = artifacts.join(format!("browser-share-{who}.png"));
        assert!(std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0) > 0, "no screenshot at {}", png.display());
    }
    // The owner typed `exit`: the session ended, and its container goes.
    common::eventually(Duration::from_secs(30), "the ended session's container removed", || {
        w.containers(None).is_empty()
    })
    .await;
    let status = berth.terminate(Duration::from_secs(30));
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
}
