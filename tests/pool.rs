//! The warm pool against a real Docker engine (decision 0025): a pooled container built from the launcher waits
//! for its settings without echoing them, a claim renames it to the session's name (which a later list reads
//! back), and the session's environment reaches the shell. Bounded, and no container is left behind.

mod common;

use std::time::Duration;

use berth::reconciler::desired::EnvVar;
use berth::reconciler::pool::{LAUNCHER_CLAIMED, LAUNCHER_WAITING, pooled_spec, settings_line};
use berth::reconciler::{ClaimedName, ContainerId, PoolLabels, SessionId, SessionKind, Timestamp, resume_hash};
use berth::reconciler::{Policy, ProfileName};
use berth::runtime::{AttachIo, Runtime};
use futures::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

/// Reads the attach stream into `seen` until it holds `needle`, or fails the test after `LIMIT`.
async fn until(io: &mut AttachIo, seen: &mut Vec<u8>, needle: &[u8]) {
    let found = tokio::time::timeout(LIMIT, async {
        while !seen.windows(needle.len()).any(|w| w == needle) {
            match io.output.next().await {
                Some(Ok(b)) => seen.extend_from_slice(&b),
                other => panic!("the stream ended before {:?}: {other:?}", String::from_utf8_lossy(needle)),
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no {:?} within {LIMIT:?}; saw {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(seen)
    );
}

/// What a pooled container is made of, without a berth: the launcher installed in a directory of this test's
/// (removed on drop), and pool labels of the world's instance for the policy's default profile.
struct Parts {
    dir: std::path::PathBuf,
    launcher: String,
    labels: PoolLabels,
    profile: berth::reconciler::policy::Profile,
}

impl Parts {
    fn new(world: &common::World, policy: &Policy, created_at: Timestamp) -> Self {
        let profile = policy.profiles.get(&policy.default_profile).expect("the default profile").clone();
        let dir = std::env::temp_dir().join(format!("berth-pool-test-{}", world.instance));
        let launcher = berth::launcher::install(&dir).expect("install the launcher").display().to_string();
        let labels = PoolLabels {
            profile: policy.default_profile.clone(),
            owner: world.instance.clone(),
            epoch: 1,
            created_at,
            policy_hash: profile.hash(),
        };
        Self { dir, launcher, labels, profile }
    }

    fn spec(&self, policy: &Policy, nonce: u64) -> berth::reconciler::ContainerSpec {
        pooled_spec(&self.profile, &self.labels, policy, nonce, &self.launcher).expect("poolable")
    }

    /// Creates, attaches to and starts a pooled container, and reads its stream until its launcher waits.
    async fn waiting(&self, rt: &impl Runtime, policy: &Policy, nonce: u64) -> (ContainerId, AttachIo, Vec<u8>) {
        let id = rt.create(&self.spec(policy, nonce)).await.expect("create");
        let mut io = rt.attach(&id, false).await.expect("attach");
        rt.start(&id).await.expect("start");
        let mut seen = Vec::new();
        until(&mut io, &mut seen, b"launcher-waiting;3\x07\r\n").await;
        (id, io, seen)
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A world for tests of the parts alone, its default profile running `command`.
fn bare_world(command: &[&str]) -> (common::World, Policy) {
    let world = common::World::with_prefix("p");
    let mut policy = world.policy.clone();
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(command.iter().map(|a| (*a).to_owned()).collect());
    (world, policy)
}

#[tokio::test]
async fn a_pooled_container_takes_its_settings_silently_and_is_recognised_as_its_sessions_after_the_claim() {
    let rt = common::docker().await;
    let (world, mut policy) = bare_world(&["/bin/sh", "-i"]);
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.env.insert("FIXED".into(), "from-the-profile".into());
    let parts = Parts::new(&world, &policy, Timestamp::from_millis(1));
    let labels = parts.labels.clone();

    let id = rt.create(&parts.spec(&policy, 1)).await.expect("create");
    let result = async {
        let mut io = rt.attach(&id, false).await.expect("attach");
        rt.start(&id).await.expect("start");
        let mut seen = Vec::new();
        until(&mut io, &mut seen, LAUNCHER_WAITING).await;

        let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].labels.clone(), listed[0].claimed.clone()), (labels.clone(), None));
        assert!(world.containers(None).is_empty(), "a pooled container carries no session marker");

        // The claim: the rename is the commit point, then the settings line.
        let claimed = ClaimedName {
            session: SessionId::generate().expect("id"),
            kind: SessionKind::Authenticated,
            resume_hash: Some(resume_hash("the secret")),
        };
        rt.rename(&id, &claimed.render(&policy.docker.name_prefix)).await.expect("rename");
        let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
        assert_eq!(listed[0].claimed.as_ref(), Some(&claimed), "the claim reads back from the name");
        let identity = claimed.managed_labels(&listed[0].labels);
        assert_eq!((identity.session, identity.kind), (claimed.session, SessionKind::Authenticated));

        let env = [EnvVar { name: "TOKEN".into(), value: "s3cret value".into(), sensitive: true }];
        let line = settings_line(&env, None);
        io.input.write_all(&line).await.expect("write settings");
        io.input.write_all(b"echo \"[$TOKEN|$FIXED]\"\n").await.expect("write a command");
        io.input.flush().await.expect("flush");
        until(&mut io, &mut seen, b"[s3cret value|from-the-profile]").await;
        let text = String::from_utf8_lossy(&seen);
        let hex = String::from_utf8_lossy(&line[7..20]).into_owned();
        assert!(!text.contains(&hex) && !text.contains("berth1"), "the settings line was echoed: {text:?}");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(90), result).await;
    rt.remove(&id).await.expect("remove");
    outcome.expect("bounded");
    let left = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[tokio::test]
async fn a_claim_never_takes_a_name_already_taken() {
    let rt = common::docker().await;
    let (world, policy) = bare_world(&["/bin/sh", "-i"]);
    let parts = Parts::new(&world, &policy, Timestamp::from_millis(1));
    let a = rt.create(&parts.spec(&policy, 1)).await.expect("create");
    let b = rt.create(&parts.spec(&policy, 2)).await.expect("create");
    let name =
        ClaimedName { session: SessionId::generate().expect("id"), kind: SessionKind::Anonymous, resume_hash: None }
            .render(&policy.docker.name_prefix);
    let first = rt.rename(&a, &name).await;
    let second = rt.rename(&b, &name).await;
    for id in [&a, &b] {
        rt.remove(id).await.expect("remove");
    }
    first.expect("the first claim");
    assert!(matches!(second, Err(berth::runtime::RuntimeError::Conflict(_))), "{second:?}");
    assert!(rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list").is_empty());
}

/// A pooled container whose launcher gets anything but a settings line never runs its command: it exits with
/// status 120, so a claim whose settings went missing (a crash between the rename and the line) ends its session
/// rather than giving a shell without the session's settings.
#[tokio::test]
async fn a_launcher_given_anything_but_a_settings_line_exits_without_running_the_command() {
    let rt = common::docker().await;
    let (world, policy) = bare_world(&["/bin/sh", "-c", "echo RAN"]);
    let parts = Parts::new(&world, &policy, Timestamp::from_millis(1));
    let (id, mut io, mut seen) = parts.waiting(&rt, &policy, 1).await;
    let result = async {
        io.input.write_all(b"ls -la /\n").await.expect("write what a user might type");
        io.input.flush().await.expect("flush");
        until(&mut io, &mut seen, b"no valid settings line").await;
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let listed = rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list");
            if listed.iter().any(|c| c.state == berth::reconciler::ContainerState::Exited) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the launcher did not exit: {listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let exit = world.cli(&["inspect", "--format", "{{.State.ExitCode}}", id.as_str()]);
        assert_eq!(exit, "120");
        assert!(!String::from_utf8_lossy(&seen).contains("RAN"), "the command ran");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(90), result).await;
    rt.remove(&id).await.expect("remove");
    outcome.expect("bounded");
    assert!(rt.list_pool(&world.ns, &policy.docker.name_prefix).await.expect("list").is_empty());
}

// ----- the pool through a whole berth -----

/// A world whose default profile keeps a pool of `size`, removed at shutdown.
fn pooled_world(size: usize) -> (common::World, Policy) {
    let world = common::World::with_prefix("q");
    let mut policy = world.policy.clone();
    policy.reconcile.shutdown = berth::reconciler::policy::ShutdownMode::Remove;
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(vec!["/bin/sh".into(), "-i".into()]);
    profile.pool.size = size;
    (world, policy)
}

/// A whole berth on a world whose default profile keeps a pool of `size`, once the pool is full.
async fn pooled_server(size: usize) -> (common::World, berth::app::Server, ProfileName) {
    let (world, policy) = pooled_world(size);
    let profile = policy.default_profile.clone();
    let server = world.serve_with(policy).await;
    pool_ready(&server, &profile, size as i64).await;
    (world, server, profile)
}

/// Waits until `profile`'s pool has `n` ready containers, or fails the test after `LIMIT`.
async fn pool_ready(server: &berth::app::Server, profile: &ProfileName, n: i64) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while server.metrics.pool(profile).1 < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool of {profile} has {:?}, not {n} ready",
            server.metrics.pool(profile)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(server: &berth::app::Server, series: &str) -> i64 {
    let text = server.metrics.render();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as i64)
}

/// Pooled (claimed) and unclaimed containers of the world, by name.
fn pooled_names(world: &common::World) -> Vec<String> {
    let filter = format!("label={}", world.ns.pool_key());
    world.cli(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).lines().map(str::to_owned).collect()
}

async fn stop_and_assert_no_leftovers(world: &common::World, server: berth::app::Server) {
    tokio::time::timeout(LIMIT, server.stop()).await.expect("berth stops");
    assert_eq!(pooled_names(world), Vec::<String>::new(), "pooled containers left");
    assert_eq!(world.containers(None), Vec::<String>::new(), "session containers left");
}

async fn open(server: &berth::app::Server, lang: &str) -> common::client::Client {
    let mut c = common::client::connect(server.addr).await;
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "env": {"LANG": lang}})).await;
    c.until_ready().await;
    c.until_output("$ ").await;
    c
}

#[tokio::test]
async fn a_pooled_session_gets_its_prompt_and_its_environment_and_the_pool_refills() {
    let (world, server, profile) = pooled_server(2).await;

    let mut c = open(&server, "pooled-lang").await;
    c.input("echo \"[$LANG]\"\n").await;
    c.until_output("[pooled-lang]").await;
    let text = String::from_utf8_lossy(&c.output).into_owned();
    assert!(!text.contains("berth") && !text.contains("launcher-"), "launcher traffic reached the client: {text:?}");
    assert_eq!(metric(&server, "berth_pool_claims_total{profile=\"default\"}"), 1);
    assert_eq!(metric(&server, "berth_pool_misses_total{profile=\"default\"}"), 0);
    assert_eq!(metric(&server, "berth_time_to_first_output_seconds_count{start=\"pool\"}"), 1);
    assert_eq!(metric(&server, "berth_time_to_first_output_seconds_count{start=\"cold\"}"), 0);
    let session = c.session.clone().expect("a session id");
    let names = pooled_names(&world);
    assert!(names.iter().any(|n| n.contains(&format!("{session}--anonymous--"))), "{names:?}");
    // The claimed container left the pool, which refills to its size.
    pool_ready(&server, &profile, 2).await;
    assert_eq!(pooled_names(&world).len(), 3);
    // The shell's exit ends the session with its code, as for a cold one, and its container goes; the pool stays.
    c.input("exit 3\r").await;
    let exit = c.until_json("exit", LIMIT).await;
    assert_eq!((exit["reason"].as_str(), exit["code"].as_i64()), (Some("exited"), Some(3)), "{exit}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while pooled_names(&world).len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "the claimed container stayed: {:?}", pooled_names(&world));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pooled_names(&world).iter().all(|n| n.contains("-pool-")), "{:?}", pooled_names(&world));
    stop_and_assert_no_leftovers(&world, server).await;
}

#[tokio::test]
async fn a_pooled_session_starts_at_the_hellos_size_without_a_resize_call_and_resizes_after() {
    let (world, server, _) = pooled_server(1).await;
    let resizes = "berth_docker_api_calls_total{op=\"resize\",result=\"ok\"}";
    let before = metric(&server, resizes);

    let mut c = common::client::connect(server.addr).await;
    c.send_json(json!({"type": "hello", "cols": 132, "rows": 43})).await;
    c.until_ready().await;
    c.until_output("$ ").await;
    c.input("echo size-$(stty size | tr ' ' x)\r").await;
    c.until_output("size-43x132").await;
    assert_eq!(metric(&server, "berth_pool_claims_total{profile=\"default\"}"), 1);
    assert_eq!(metric(&server, resizes), before, "the launcher set the size: no resize call");

    // A resize after that is the engine's, as for a cold session.
    c.send_json(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    c.input("while [ \"$(stty size)\" != \"30 100\" ]; do sleep 0.1; done; echo resized-$(stty size | tr ' ' x)\r")
        .await;
    c.until_output("resized-30x100").await;
    assert_eq!(metric(&server, resizes), before + 1, "one resize call");
    drop(c);
    stop_and_assert_no_leftovers(&world, server).await;
}

#[tokio::test]
async fn a_burst_larger_than_the_pool_claims_the_pool_first_and_starts_the_rest_cold() {
    let (world, server, _) = pooled_server(2).await;
    let clients =
        futures::future::join_all((0..4).map(|i| open(&server, if i % 2 == 0 { "even" } else { "odd" }))).await;
    assert_eq!(clients.len(), 4);
    assert_eq!(metric(&server, "berth_pool_claims_total{profile=\"default\"}"), 2);
    assert_eq!(metric(&server, "berth_pool_misses_total{profile=\"default\"}"), 2);
    assert_eq!(metric(&server, "berth_time_to_first_output_seconds_count{start=\"pool\"}"), 2);
    assert_eq!(metric(&server, "berth_time_to_first_output_seconds_count{start=\"cold\"}"), 2);
    assert_eq!(world.containers(None).len(), 2, "two cold sessions carry the session marker");
    drop(clients);
    stop_and_assert_no_leftovers(&world, server).await;
}

#[tokio::test]
async fn a_profile_change_drains_the_pool_while_claimed_sessions_go_on() {
    let (world, policy) = pooled_world(2);
    let profile = policy.default_profile.clone();
    let server = world.serve_with(policy.clone()).await;
    pool_ready(&server, &profile, 2).await;
    let mut c = open(&server, "before").await;
    let before: Vec<String> = pooled_names(&world).into_iter().filter(|n| n.contains("-pool-")).collect();

    let mut changed = policy.clone();
    changed.profiles.get_mut(&profile).expect("profile").env.insert("GENERATION".into(), "2".into());
    server.policy.send_replace(std::sync::Arc::new(changed));
    // The old pool goes, a new one fills from the new profile.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now: Vec<String> = pooled_names(&world).into_iter().filter(|n| n.contains("-pool-")).collect();
        if now.len() == 2 && now.iter().all(|n| !before.contains(n)) && server.metrics.pool(&profile).1 == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pool was not drained and refilled: {before:?} -> {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&server, "berth_pool_removed_total{reason=\"drained\"}") >= 2);
    // The claimed session goes on, on the profile it was claimed under.
    c.input("echo \"[$LANG|${GENERATION:-old}]\"\n").await;
    c.until_output("[before|old]").await;
    let mut d = open(&server, "after").await;
    d.input("echo \"[$LANG|$GENERATION]\"\n").await;
    d.until_output("[after|2]").await;
    drop((c, d));
    stop_and_assert_no_leftovers(&world, server).await;
}

// ----- kill -9 with pooled and claimed containers -----

/// A restart finds an earlier run's two pooled containers, both waiting by their names, but one of them took a
/// claim's settings before the run stopped (the claim writes them while its rename is under way): that one is
/// removed, the other adopted, and the pool refills to its size. The command (`cat`) never prints a line of its
/// own: the launcher's mark must reach the engine's log by itself.
#[tokio::test]
async fn a_restart_never_adopts_a_pooled_container_whose_launcher_took_a_claims_settings() {
    let rt = common::docker().await;
    let (world, mut policy) = pooled_world(2);
    policy.reconcile.startup = berth::reconciler::policy::StartupMode::Adopt;
    let profile = policy.profiles.values_mut().next().expect("the default profile");
    profile.command = Some(vec!["/bin/cat".into()]);
    // Young enough for the pool's `max_age`: only the settings can make the restart remove it.
    let parts = Parts::new(&world, &policy, berth::clock::now().sub(Duration::from_secs(5)));
    let mut earlier = Vec::new();
    for nonce in [1, 2] {
        earlier.push(parts.waiting(&rt, &policy, nonce).await);
    }
    // The second one took its settings, and its launcher said so; no rename followed.
    let (taken, io, seen) = &mut earlier[1];
    io.input.write_all(&settings_line(&[], Some((80, 24)))).await.expect("write settings");
    io.input.flush().await.expect("flush");
    until(io, seen, LAUNCHER_CLAIMED).await;
    let taken = taken.clone();
    let kept = earlier[0].0.clone();
    drop(earlier);
    // What a restart reads: the engine's log holds the mark (its line ended by the launcher, not by `cat`).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !world.cli(&["logs", taken.as_str()]).contains("launcher-claimed") {
        assert!(tokio::time::Instant::now() < deadline, "the engine's log never showed the launcher's mark");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let server = world.serve_with(policy.clone()).await;
    pool_ready(&server, &policy.default_profile, 2).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while world.cli(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={taken}")]).contains(taken.as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "the container that took a claim's settings is still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = world.cli(&["ps", "-aq", "--no-trunc", "--filter", &format!("label={}", world.ns.pool_key())]);
    assert!(ids.contains(kept.as_str()), "the clean one is adopted: {ids}");
    assert_eq!(ids.lines().count(), 2, "the pool refilled to its size: {ids}");
    assert_eq!(metric(&server, "berth_pool_removed_total{reason=\"failed\"}"), 1, "the taken one, as failed");
    stop_and_assert_no_leftovers(&world, server).await;
}

/// Waits until a metric of the real process reads `value`, or fails the test after `limit`.
async fn process_metric(berth: &common::process::Berth, series: &str, value: f64, limit: Duration) {
    berth.wait_metric(series, value, std::time::Instant::now() + limit, series).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_the_claimed_container_is_its_sessions_again_and_the_pool_is_adopted() {
    use common::process::{Berth, TempDir, write_pooled_policy};
    common::docker().await;
    let world = common::World::with_prefix("q");
    let dir = TempDir::new("pool");
    let edits = [
        ("sessions.resume_grace", "30s"),
        ("reconcile.startup", "adopt"),
        ("reconcile.shutdown", "remove"),
        ("reconcile.resync_interval", "2s"),
    ];
    let path = write_pooled_policy(dir.path(), &world, &edits, 2);
    let ready = r#"berth_pool_ready{profile="default"}"#;

    let mut b = Berth::spawn(&path, world.instance.as_str(), dir.path());
    b.wait_ready(LIMIT).await;
    process_metric(&b, ready, 2.0, LIMIT).await;
    let c = common::client::open_marked(b.addr, LIMIT).await;
    let (session, secret) = (c.session.clone().expect("session"), c.secret.clone().expect("secret"));
    process_metric(&b, r#"berth_pool_claims_total{profile="default"}"#, 1.0, LIMIT).await;
    process_metric(&b, ready, 2.0, LIMIT).await;
    let before = pooled_names(&world);
    assert_eq!(before.len(), 3, "one claimed, two waiting: {before:?}");
    let claimed: Vec<&String> = before.iter().filter(|n| n.contains(&format!("{session}--anonymous--"))).collect();
    assert_eq!(claimed.len(), 1, "{before:?}");

    let status = b.kill9();
    drop(c);
    assert!(!status.success());
    assert_eq!(pooled_names(&world).len(), 3, "the containers outlive the process");

    let mut b = Berth::spawn(&path, world.instance.as_str(), dir.path());
    b.wait_ready(LIMIT).await;
    process_metric(&b, r#"berth_sessions{phase="running"}"#, 1.0, LIMIT).await;
    process_metric(&b, ready, 2.0, LIMIT).await;
    // `reconcile.startup: adopt`: the same containers, the pool's and the claimed one, and nothing new.
    let mut now = pooled_names(&world);
    now.sort();
    let mut was = before.clone();
    was.sort();
    assert_eq!(now, was, "the earlier run's pool is adopted, not replaced");
    let text = b.metrics().await;
    assert_eq!(common::process::sample(&text, r#"berth_pool_removed_total{reason="startup"}"#), Some(0.0));

    // The client comes back to the same shell.
    let mut c = common::client::connect_with(b.addr, &format!("?session={session}"), &[]).await.expect("connect");
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}}))
        .await;
    c.until_ready().await;
    let from = c.output.len();
    c.input("echo \"mark:$MARK\"\r").await;
    c.until_output_from(from, "mark:42", LIMIT).await;
    drop(c);

    let status = b.terminate(LIMIT);
    assert!(status.success(), "berth exits 0 after SIGTERM: {status}; its log:\n{}", b.log_tail(40));
    assert_eq!(pooled_names(&world), Vec::<String>::new(), "pooled or claimed containers left");
    assert_eq!(world.containers(None), Vec::<String>::new());
}

/// A recorded profile keeps its recordings with a pool: the claimed session's recording begins at the claim (its
/// stream reaches the terminal without an attach action), holds the session's output, and none of the launcher's.
#[tokio::test]
async fn a_pooled_session_of_a_recorded_profile_is_recorded_from_its_claim() {
    let (world, mut policy) = pooled_world(1);
    let dir = common::process::TempDir::new("pool-rec");
    policy.recordings.dir = Some(dir.path().to_path_buf());
    for p in policy.profiles.values_mut() {
        p.recording.mode = berth::reconciler::policy::RecordingMode::Required;
    }
    let profile = policy.default_profile.clone();
    let server = world.serve_with(policy).await;
    pool_ready(&server, &profile, 1).await;
    let mut c = open(&server, "rec").await;
    assert_eq!(metric(&server, "berth_pool_claims_total{profile=\"default\"}"), 1, "the session was pooled");
    c.input("echo pooled-$((40+2))\r").await;
    c.until_output("pooled-42").await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let (name, text) = loop {
        let casts: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let [one] = casts.as_slice() {
            let text = std::fs::read_to_string(one).unwrap_or_default();
            if text.contains("pooled-42") {
                break (one.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned(), text);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recording with the echo in {}: {casts:?}",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let session = c.session.clone().expect("a session id");
    assert!(name.starts_with(&format!("{session}-")), "{name}");
    let (_, events) = berth::recording::asciicast::parse(&text).expect("a valid asciicast v2 file");
    let output: String = events.iter().map(|e| e.data.as_str()).collect();
    assert!(output.contains("$ "), "the first prompt is recorded: {output:?}");
    let waiting = String::from_utf8_lossy(LAUNCHER_WAITING);
    assert!(
        !output.contains(waiting.trim()) && !output.contains("launcher-claimed") && !output.contains("berth1"),
        "launcher traffic recorded: {output:?}"
    );
    c.send_json(json!({"type": "release"})).await;
    let _ = c.until_closed(LIMIT).await;
    stop_and_assert_no_leftovers(&world, server).await;
}
