//! The real `berth` binary killed with SIGKILL while it holds live sessions, then started again with the same
//! instance id and state directory. The containers outlive the process; the policy's `reconcile.startup`
//! decides what the new process does with them: `adopt` makes them resumable sessions again (the same shells,
//! with their state) until the resume grace runs out, and `remove_all` removes them at once.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::World;
use common::client::{Client, connect_with};
use common::process::{Berth, TempDir, sample, write_policy};
use serde_json::json;

const SESSIONS: usize = 20;
const RESYNC: Duration = Duration::from_secs(2);
const RESUME_GRACE: Duration = Duration::from_secs(5);
/// Allowance beyond one resync for a loaded machine (the process start, the first list, the attaches).
const MARGIN: Duration = Duration::from_secs(2);
const T: Duration = Duration::from_secs(20);

/// The policy edits both tests share: a fast resync, and room for many sessions from 127.0.0.1.
fn edits(startup: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("sessions.resume_grace", "5s"),
        ("reconcile.startup", startup),
        ("reconcile.resync_interval", "2s"),
        ("reconcile.concurrency", "6"),
        ("limits.max_per_ip", "100"),
        ("limits.connections_per_minute", "1000"),
        ("limits.connection_burst", "100"),
    ]
}

/// [`common::client::open_marked`] within this file's limit.
async fn open_marked(addr: SocketAddr) -> Client {
    common::client::open_marked(addr, T).await
}

/// Opens `n` marked sessions at once; returns each one's (session id, secret) and the clients.
async fn open_many(addr: SocketAddr, n: usize) -> (Vec<(String, String)>, Vec<Client>) {
    let clients = futures::future::join_all((0..n).map(|_| open_marked(addr))).await;
    let ids = clients
        .iter()
        .map(|c| (c.session.clone().expect("a session id"), c.secret.clone().expect("a resume secret")))
        .collect();
    (ids, clients)
}

/// Polls the Docker CLI until the test's containers number `n`, or panics after `limit`; returns them.
async fn wait_containers(w: &World, n: usize, limit: Duration, what: &str) -> Vec<String> {
    let until = Instant::now() + limit;
    loop {
        let now = w.containers(None);
        if now.len() == n {
            return now;
        }
        assert!(Instant::now() < until, "{what}: {} containers, not {n}, after {limit:?}", now.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The name of the container of session `id`.
fn container_name(w: &World, id: &str) -> String {
    format!("{}-{id}", w.policy.docker.name_prefix)
}

/// A resume hello for `(session, secret)`, through the routing hint as the page sends it.
async fn resume(addr: SocketAddr, session: &str, secret: &str) -> Client {
    let mut c = connect_with(addr, &format!("?session={session}"), &[]).await.expect("websocket connect");
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}}))
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_a_restart_adopts_the_running_sessions_and_ends_the_unresumed_after_the_grace() {
    common::docker().await;
    let began = Instant::now();
    // Declared first, so they are dropped last: the containers go after berth does.
    let w = World::with_prefix("p");
    let dir = TempDir::new("process");
    let policy = write_policy(dir.path(), &w, &edits("adopt"));
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    berth.wait_ready(T).await;

    let (ids, clients) = open_many(berth.addr, SESSIONS).await;
    eprintln!("{SESSIONS} sessions ready and marked after {:?}", began.elapsed());
    assert_eq!(w.containers(Some("running")).len(), SESSIONS, "one running container per session");

    // The crash: no drain, no goodbye to the clients.
    let status = berth.kill9();
    assert_eq!(status.signal(), Some(9), "berth died of SIGKILL: {status}");
    drop(clients);
    let running = w.containers(Some("running"));
    assert_eq!(running.len(), SESSIONS, "all {SESSIONS} containers outlive the process: {running:?}");

    // The same instance starts again, on the same state directory.
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    let restarted = berth.listening_at;
    let deadline = restarted + RESYNC + MARGIN;
    berth.wait_metric(r#"berth_sessions{phase="running"}"#, SESSIONS as f64, deadline, "adoption").await;
    eprintln!("{SESSIONS} sessions running again {:?} after the restart", restarted.elapsed());

    // One client comes back to its shell: the same shell, with its variable.
    let (session, secret) = &ids[7];
    let mut c = resume(berth.addr, session, secret).await;
    let s = c.until_json("session", T).await;
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(s["session"], session.as_str());
    c.until_ready().await;
    let from = c.output.len();
    c.input("echo \"mark:$MARK\"\r").await;
    c.until_output_from(from, "mark:42", T).await;
    let resumed_in = restarted.elapsed();
    eprintln!("session {session} resumed, MARK still 42, {resumed_in:?} after the restart");
    assert!(resumed_in <= RESYNC + MARGIN, "the resume took {resumed_in:?}, more than one resync and a margin");

    // Nobody comes back for the other 19: they end when the grace runs out, and only the resumed one is left.
    let left = wait_containers(&w, 1, RESUME_GRACE + Duration::from_secs(15), "after the resume grace").await;
    eprintln!("{} unresumed containers removed {:?} after the restart", SESSIONS - 1, restarted.elapsed());
    let names = w.cli(&["inspect", "--format", "{{.Name}}", &left[0]]);
    assert_eq!(names.trim_start_matches('/'), container_name(&w, session), "the resumed session's container stays");
    let text = berth.metrics().await;
    assert_eq!(
        sample(&text, r#"berth_sessions_ended_total{reason="resume_grace_expired"}"#),
        Some((SESSIONS - 1) as f64),
        "the unresumed sessions ended for their resume grace"
    );
    // Nothing edited the policy file, though berth's log is written beside it: nothing was reloaded.
    for result in ["ok", "error"] {
        let series = format!("berth_policy_reloads_total{{result=\"{result}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    c.input("echo \"alive:$((MARK+1))\"\r").await;
    c.until_output_from(from, "alive:43", T).await;

    // The resumed one ends when its client releases it.
    c.send_json(json!({"type": "release"})).await;
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "released", "{exit}");
    wait_containers(&w, 0, Duration::from_secs(10), "after the release").await;

    let status = berth.terminate(T);
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    assert!(w.containers(None).is_empty(), "nothing is left");
    eprintln!("whole test took {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_a_restart_in_remove_all_mode_removes_every_container_within_one_resync() {
    const N: usize = 5;
    common::docker().await;
    let began = Instant::now();
    let w = World::with_prefix("r");
    let dir = TempDir::new("process");
    let policy = write_policy(dir.path(), &w, &edits("remove_all"));
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    berth.wait_ready(T).await;
    let (ids, clients) = open_many(berth.addr, N).await;

    let status = berth.kill9();
    assert_eq!(status.signal(), Some(9), "berth died of SIGKILL: {status}");
    drop(clients);
    assert_eq!(w.containers(Some("running")).len(), N, "all {N} containers outlive the process");

    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    let restarted = berth.listening_at;
    wait_containers(&w, 0, RESYNC + MARGIN, "remove_all at startup").await;
    eprintln!("{N} containers removed {:?} after the restart", restarted.elapsed());
    // Docker stops listing a container before its removal call returns, and berth counts the removals when the
    // whole bulk removal has returned: wait for the count.
    let series = r#"berth_containers_removed_total{reason="startup"}"#;
    berth.wait_metric(series, N as f64, Instant::now() + T, "each was removed by the startup rule").await;
    let text = berth.metrics().await;
    assert_eq!(sample(&text, r#"berth_sessions{phase="running"}"#), Some(0.0), "no session was adopted");

    // Their secrets open nothing now.
    let (session, secret) = &ids[0];
    let mut c = resume(berth.addr, session, secret).await;
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4004), Some("unknown_session")));

    let status = berth.terminate(T);
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    assert!(w.containers(None).is_empty(), "nothing is left");
    eprintln!("whole test took {:?}", began.elapsed());
}
