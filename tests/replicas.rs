//! Two berth replicas (the real binary) sharing one Docker engine behind a real HAProxy, all on loopback:
//! a replica killed with SIGKILL is taken over by the survivor within the lease timeout plus one resync; a
//! rolling restart under typing clients loses no session; a replica restarted with its identity adopts its own
//! containers while its peer leaves them alone; a look-alike with another label namespace is never touched; and a
//! viewer of a shared session reaches the replica that holds it by the same `?session=` routing as a resume.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::World;
use common::client::{Client, Event, connect, resume_until_ready};
use common::lb::{Haproxy, free_port};
use common::process::{Berth, TempDir, sample, write_policy};

const T: Duration = Duration::from_secs(30);
const RESYNC: Duration = Duration::from_secs(2);
/// Allowance for a loaded two-core machine: process start, list, claim, attach.
const MARGIN: Duration = Duration::from_secs(4);

/// One replica: its identity, port, state directory and process. The process is declared first so that it is
/// dropped (and its log printed, when the test fails) before its directory is deleted.
struct Replica {
    berth: Option<Berth>,
    instance: String,
    listen: String,
    dir: TempDir,
    policy: PathBuf,
}

impl Replica {
    fn start(w: &World, name: &str, edits: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(&format!("replica-{name}"));
        let policy = write_policy(dir.path(), w, edits);
        let instance = format!("{}-{name}", w.instance);
        let listen = format!("127.0.0.1:{}", free_port());
        let berth = Berth::spawn_with(&policy, &instance, dir.path(), &listen, None);
        Self { berth: Some(berth), instance, listen, dir, policy }
    }

    /// [`Replica::start`] with sharing on in the default profile (anonymous owners included).
    fn start_sharing(w: &World, name: &str, edits: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(&format!("replica-{name}"));
        let policy = write_policy(dir.path(), w, edits);
        let yaml = std::fs::read_to_string(&policy).expect("reading the policy");
        let off = "    # sharing: {enabled: false, max_viewers: 8, max_grant_ttl: 1h, anonymous: false}";
        assert!(yaml.contains(off), "manifests/policy.yaml shows the sharing keys");
        let on = "    sharing: {enabled: true, max_viewers: 8, max_grant_ttl: 1h, anonymous: true}";
        std::fs::write(&policy, yaml.replace(off, on)).expect("writing the policy");
        let instance = format!("{}-{name}", w.instance);
        let listen = format!("127.0.0.1:{}", free_port());
        let berth = Berth::spawn_with(&policy, &instance, dir.path(), &listen, None);
        Self { berth: Some(berth), instance, listen, dir, policy }
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("running")
    }

    fn addr(&self) -> SocketAddr {
        self.listen.parse().expect("address")
    }

    fn respawn(&mut self) {
        self.berth = Some(Berth::spawn_with(&self.policy, &self.instance, self.dir.path(), &self.listen, None));
    }
}

fn edits<'a>(lease: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut e = vec![
        ("peers.lease_timeout", lease),
        ("reconcile.resync_interval", "2s"),
        ("reconcile.concurrency", "6"),
        ("sessions.resume_grace", "2m"),
        ("limits.max_per_ip", "200"),
        ("limits.connections_per_minute", "10000"),
        ("limits.connection_burst", "1000"),
        ("server.trusted_proxies", "[127.0.0.1]"),
    ];
    e.extend_from_slice(extra);
    e
}

/// [`common::client::open_marked`] within this file's limit.
async fn open_marked(addr: SocketAddr) -> Client {
    common::client::open_marked(addr, T).await
}

/// Session ids of the running containers `owner` created.
fn sessions_of(w: &World, owner: &str) -> Vec<String> {
    let owner_filter = format!("label={}={owner}", w.ns.owner_key());
    let format = format!("{{{{.Label \"{}\"}}}}", w.ns.key("session"));
    w.cli(&["ps", "--filter", &w.marker_filter(), "--filter", &owner_filter, "--format", &format])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sentinel and claim containers of the test's namespace.
fn peer_containers(w: &World) -> Vec<String> {
    let filter = format!("label={}", w.ns.peer_key());
    w.cli(&["ps", "-aq", "--filter", &filter]).lines().map(str::to_owned).collect()
}

/// Resumes through the balancer and checks the replay and the shell: the output from before (`set:42`, replayed
/// from the replica's ring or, after an adoption, from the container's own log) comes first, and the shell still
/// has `MARK=42`.
async fn check_mark(lb: SocketAddr, session: &str, secret: &str, limit: Duration) -> Client {
    let (mut c, _) = resume_until_ready(lb, session, secret, limit).await;
    c.until_output_from(0, "set:42", T).await;
    let from = c.output.len();
    c.input("echo \"mark:$MARK\"\r").await;
    c.until_output_from(from, "mark:42", T).await;
    c
}

/// Releases every session and waits for the test's containers to be gone.
async fn release_all(w: &World, clients: Vec<Client>) {
    for mut c in clients {
        c.send_json(serde_json::json!({"type": "release"})).await;
        let exit = c.until_json("exit", T).await;
        assert_eq!(exit["reason"], "released", "{exit}");
    }
    let until = Instant::now() + T;
    while !w.containers(None).is_empty() {
        assert!(Instant::now() < until, "containers left after every release: {:?}", w.containers(None));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_its_sessions_are_adopted_by_the_survivor_within_the_lease() {
    const N: usize = 40;
    const LEASE: Duration = Duration::from_secs(3);
    common::docker().await;
    let w = World::with_prefix("k");
    let mut a = Replica::start(&w, "a", &edits("3s", &[]));
    let b = Replica::start(&w, "b", &edits("3s", &[]));
    a.berth().wait_ready(T).await;
    b.berth().wait_ready(T).await;
    let lb_dir = TempDir::new("haproxy");
    let lb = Haproxy::start(lb_dir.path(), &[("a", a.addr()), ("b", b.addr())]).await;

    let clients = futures::future::join_all((0..N).map(|_| open_marked(lb.addr))).await;
    let on_a = sessions_of(&w, &a.instance);
    let on_b = sessions_of(&w, &b.instance);
    eprintln!("{} sessions on a, {} on b", on_a.len(), on_b.len());
    assert_eq!(on_a.len() + on_b.len(), N);
    assert!(!on_a.is_empty() && !on_b.is_empty(), "the balancer spread the sessions");
    let (mut a_clients, mut b_clients): (Vec<Client>, Vec<Client>) =
        clients.into_iter().partition(|c| on_a.contains(c.session.as_ref().expect("id")));

    // b's clients type a numbered line every 200 ms from before the crash until after the takeover.
    let a_ids: Vec<(String, String)> =
        a_clients.iter().map(|c| (c.session.clone().expect("id"), c.secret.clone().expect("secret"))).collect();
    let killed = Instant::now();
    let status = a.berth.as_mut().expect("a").kill9();
    assert_eq!(status.signal(), Some(9));
    drop(a_clients.drain(..));
    let mut typed = 0u32;
    let deadline = killed + LEASE + RESYNC + MARGIN;
    loop {
        typed += 1;
        for c in &mut b_clients {
            assert!(c.try_input(&format!("echo \"n:{typed}:$MARK\"\r")).await, "a survivor's connection closed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = b.berth().metrics().await;
        if sample(&text, r#"berth_sessions{phase="running"}"#) == Some(N as f64) {
            break;
        }
        assert!(Instant::now() < deadline, "b did not take a's sessions over within {:?}", deadline - killed);
    }
    let took = killed.elapsed();
    eprintln!("b runs all {N} sessions {took:?} after a's SIGKILL (lease {LEASE:?}, resync {RESYNC:?})");
    assert_eq!(sample(&b.berth().metrics().await, r#"berth_peer_takeovers_total{result="won"}"#), Some(1.0));

    // Not a byte lost for the survivor's own clients: every numbered line came back, in order.
    for c in &mut b_clients {
        let last = format!("n:{typed}:42");
        c.until_output_from(0, &last, T).await;
        let out = String::from_utf8_lossy(&c.output).into_owned();
        let mut at = 0;
        for k in 1..=typed {
            let needle = format!("n:{k}:42\r\n");
            let found = out[at..].find(&needle).unwrap_or_else(|| panic!("line {k} missing from {out:?}"));
            at += found + needle.len();
        }
    }

    // The adopted sessions keep their secrets: the stored hash refuses a wrong one.
    let mut wrong =
        common::client::connect_with(lb.addr, &format!("?session={}", a_ids[0].0), &[]).await.expect("connect");
    wrong
        .send_json(serde_json::json!({"type": "hello", "cols": 80, "rows": 24,
            "resume": {"session": a_ids[0].0, "secret": "not-the-secret"}}))
        .await;
    let (code, err) = wrong.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4004), Some("unknown_session")), "a wrong secret at the adopter");

    // a's clients come back through the balancer (which now sends them to b) to their own shells.
    let mut resumed = Vec::new();
    for (session, secret) in &a_ids {
        resumed.push(check_mark(lb.addr, session, secret, T).await);
    }
    eprintln!("all {} of a's sessions resumed at b with MARK=42, {:?} after the kill", a_ids.len(), killed.elapsed());

    release_all(&w, resumed.into_iter().chain(b_clients).collect()).await;
    // With nothing of a's left, b removes its claim (and a's stopped sentinel) at a following list: only b's
    // own sentinel remains.
    let until = Instant::now() + RESYNC * 2 + MARGIN;
    while peer_containers(&w).len() != 1 {
        assert!(Instant::now() < until, "claim or dead sentinel not cleaned up: {:?}", peer_containers(&w));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = b;
    let status = b.berth.as_mut().expect("b").terminate(T);
    assert!(status.success(), "b exits 0: {status}");
    assert!(w.containers(None).is_empty(), "no session container left");
    assert!(peer_containers(&w).is_empty(), "no sentinel or claim left: {:?}", peer_containers(&w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_typing_clients_resumes_every_shell() {
    const N: usize = 40;
    common::docker().await;
    let w = World::with_prefix("l");
    let mut reps = [Replica::start(&w, "a", &edits("30s", &[])), Replica::start(&w, "b", &edits("30s", &[]))];
    for r in &reps {
        r.berth().wait_ready(T).await;
    }
    let lb_dir = TempDir::new("haproxy");
    let lb = Haproxy::start(lb_dir.path(), &[("a", reps[0].addr()), ("b", reps[1].addr())]).await;
    let clients = futures::future::join_all((0..N).map(|_| open_marked(lb.addr))).await;
    let started = Instant::now();

    // Every client types a line each second and comes back by itself whenever its connection ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let typists: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let stop = stop_rx.clone();
            let lb = lb.addr;
            tokio::spawn(async move {
                let (session, secret) = (c.session.clone().expect("id"), c.secret.clone().expect("secret"));
                let mut reconnects = 0;
                while !*stop.borrow() {
                    let alive = c.try_input("echo tick\r").await
                        && !matches!(c.next(Duration::from_secs(1)).await, Some(Event::Closed(..)));
                    if !alive {
                        let (again, _) = resume_until_ready(lb, &session, &secret, Duration::from_secs(60)).await;
                        c = again;
                        reconnects += 1;
                    }
                }
                (c, reconnects)
            })
        })
        .collect();

    for r in &mut reps {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        let status = r.berth.as_mut().expect("running").terminate(T);
        assert!(status.success(), "{} drains and exits 0: {status}", r.instance);
        r.respawn();
        r.berth().wait_ready(T).await;
        eprintln!("{} replaced in {:?}", r.instance, t.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).expect("typists listen");
    let mut clients = Vec::new();
    let mut reconnects = 0;
    for t in typists {
        let (mut c, n) = t.await.expect("typist");
        reconnects += n;
        // The same shell: the variable set before the restarts is still there.
        let from = c.output.len();
        c.input("echo \"mark:$MARK\"\r").await;
        c.until_output_from(from, "mark:42", T).await;
        clients.push(c);
    }
    eprintln!("rolling restart over {:?}: {N} shells kept, {reconnects} reconnects", started.elapsed());
    assert!(reconnects >= N, "every client was moved at least once ({reconnects} reconnects)");
    for r in &reps {
        let text = r.berth().metrics().await;
        assert_eq!(sample(&text, r#"berth_peer_takeovers_total{result="won"}"#), Some(0.0), "no takeover");
    }
    release_all(&w, clients).await;
    for r in &mut reps {
        let status = r.berth.as_mut().expect("running").terminate(T);
        assert!(status.success(), "{status}");
    }
    assert!(w.containers(None).is_empty(), "no session container left");
    assert!(peer_containers(&w).is_empty(), "no sentinel or claim left: {:?}", peer_containers(&w));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_with_its_identity_adopts_its_containers_and_its_peer_leaves_them() {
    const N: usize = 6;
    common::docker().await;
    let w = World::with_prefix("s");
    let mut a = Replica::start(&w, "a", &edits("10s", &[]));
    let b = Replica::start(&w, "b", &edits("10s", &[]));
    a.berth().wait_ready(T).await;
    b.berth().wait_ready(T).await;
    let clients = futures::future::join_all((0..N).map(|_| open_marked(a.addr()))).await;
    let ids: Vec<(String, String)> =
        clients.iter().map(|c| (c.session.clone().expect("id"), c.secret.clone().expect("secret"))).collect();
    let status = a.berth.as_mut().expect("a").kill9();
    assert_eq!(status.signal(), Some(9));
    drop(clients);
    // While a is away, b sees it down, refuses to serve its sessions, and tells the client to retry; a wrong
    // secret learns nothing (the same refusal as an unknown id).
    let probe = |secret: String| {
        let (addr, session) = (b.addr(), ids[0].0.clone());
        async move {
            let mut c = connect(addr).await;
            c.send_json(serde_json::json!({"type": "hello", "cols": 80, "rows": 24,
                "resume": {"session": session, "secret": secret}}))
                .await;
            c.until_closed(T).await
        }
    };
    let (code, err) = probe(ids[0].1.clone()).await;
    assert_eq!((code, err.as_deref()), (Some(4013), Some("session_elsewhere")));
    let (code, err) = probe("not-the-secret".into()).await;
    assert_eq!((code, err.as_deref()), (Some(4004), Some("unknown_session")));

    a.respawn();
    a.berth().wait_ready(T).await;
    a.berth()
        .wait_metric(r#"berth_sessions{phase="running"}"#, N as f64, Instant::now() + RESYNC + MARGIN, "adopt")
        .await;
    let mut resumed = Vec::new();
    for (session, secret) in &ids {
        resumed.push(check_mark(a.addr(), session, secret, T).await);
    }
    let text = b.berth().metrics().await;
    assert_eq!(sample(&text, r#"berth_peer_takeovers_total{result="won"}"#), Some(0.0), "b took nothing");
    assert_eq!(sample(&text, r#"berth_sessions{phase="running"}"#), Some(0.0), "b serves none of them");
    assert_eq!(sessions_of(&w, &a.instance).len(), N, "the containers are a's, the same ones");
    release_all(&w, resumed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookalike_with_another_label_namespace_is_never_touched() {
    common::docker().await;
    // Two berths with different label namespaces on one engine, even with the same instance id.
    let ours = World::with_prefix("n");
    let mut theirs = World::with_prefix("o");
    theirs.instance = ours.instance.clone();
    let dir_ours = TempDir::new("ns-ours");
    let dir_theirs = TempDir::new("ns-theirs");
    let short =
        [("peers.lease_timeout", "1s"), ("reconcile.resync_interval", "1s"), ("reconcile.startup", "remove_all")];
    let p_ours = write_policy(dir_ours.path(), &ours, &short);
    let p_theirs = write_policy(dir_theirs.path(), &theirs, &short);
    let mut x = Berth::spawn(&p_ours, ours.instance.as_str(), dir_ours.path());
    let mut y = Berth::spawn(&p_theirs, theirs.instance.as_str(), dir_theirs.path());
    x.wait_ready(T).await;
    y.wait_ready(T).await;
    let mine = futures::future::join_all((0..3).map(|_| open_marked(x.addr))).await;
    let other = futures::future::join_all((0..3).map(|_| open_marked(y.addr))).await;
    let before = theirs.containers(Some("running"));
    assert_eq!(before.len(), 3);

    // Ours crashes and comes back removing everything it left; theirs sees nothing of it, and it sees nothing
    // of theirs, whatever the lease.
    assert_eq!(x.kill9().signal(), Some(9));
    drop(mine);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut x = Berth::spawn(&p_ours, ours.instance.as_str(), dir_ours.path());
    x.wait_ready(T).await;
    let until = Instant::now() + T;
    while !ours.containers(None).is_empty() {
        assert!(Instant::now() < until, "ours not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(theirs.containers(Some("running")), before, "theirs untouched");
    let text = y.metrics().await;
    assert_eq!(sample(&text, "berth_peers_down"), Some(0.0), "theirs never saw ours as a peer");
    let mut again = Vec::new();
    for c in &other {
        let (s, k) = (c.session.clone().expect("id"), c.secret.clone().expect("secret"));
        again.push(check_mark(y.addr, &s, &k, T).await);
    }
    drop(other);
    release_all(&theirs, again).await;
    assert!(x.terminate(T).success());
    assert!(y.terminate(T).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_reach_the_replica_that_holds_the_shared_session_through_the_balancer() {
    const N: usize = 4;
    common::docker().await;
    let w = World::with_prefix("s");
    let a = Replica::start_sharing(&w, "a", &edits("10s", &[]));
    let b = Replica::start_sharing(&w, "b", &edits("10s", &[]));
    a.berth().wait_ready(T).await;
    b.berth().wait_ready(T).await;
    let dir = TempDir::new("haproxy-share");
    let lb = Haproxy::start(dir.path(), &[("a", a.addr()), ("b", b.addr())]).await;
    // Owners through the balancer (round robin: both replicas hold some).
    let mut owners = Vec::new();
    for _ in 0..N {
        owners.push(open_marked(lb.addr).await);
    }
    assert!(
        !sessions_of(&w, &a.instance).is_empty() && !sessions_of(&w, &b.instance).is_empty(),
        "the owners' sessions are spread over both replicas"
    );
    let mut viewers = Vec::new();
    for owner in &mut owners {
        owner.send_json(serde_json::json!({"type": "share", "role": "viewer"})).await;
        let shared = owner.until_json("shared", T).await;
        let session = owner.session.clone().expect("session");
        let mut v = common::client::connect_with(lb.addr, &format!("?session={session}"), &[]).await.expect("connect");
        v.send_json(serde_json::json!({"type": "hello", "cols": 80, "rows": 24,
            "join": {"session": session, "grant": shared["grant"]}}))
            .await;
        // Routed to the wrong replica, the join would be refused (4016): the grant lives where the session is.
        v.until_ready().await;
        v.until_output_from(0, "set:42", T).await;
        let from = (owner.output.len(), v.output.len());
        owner.input("echo \"seen:$((MARK+1))\"\r").await;
        owner.until_output_from(from.0, "seen:43", T).await;
        v.until_output_from(from.1, "seen:43", T).await;
        viewers.push(v);
    }
    release_all(&w, owners).await;
    for mut v in viewers {
        assert_eq!(v.until_closed(T).await.0, Some(4000), "a viewer gets the session's end");
    }
}
