//! Several controllers on one (fake) engine: a dead replica is taken over by exactly one survivor, after the
//! lease and not before; a live one is never touched; and a replica that finds a claim on itself lets go of the
//! claimed sessions (fencing) and stamps a higher epoch on what it creates next; and while a sentinel is slow
//! to start, its replica creates nothing and its peers wait for it. `replicas.rs` does the same with the real
//! binary, real Docker and HAProxy.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use berth::controller::{self, ControllerConfig, Handle, SessionRequest, Ticket};
use berth::metrics::{Metrics, TakeoverResult};
use berth::reconciler::peers::PeerContainer;
use berth::reconciler::plan::RemoveReason;
use berth::reconciler::{ContainerState, LabelNamespace, PeerLabels, PeerRole, Phase, Policy, SessionKind};
use berth::runtime::Runtime;
use berth::runtime::fake::FakeRuntime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_millis(600);

fn policy() -> Policy {
    let mut p = Policy::default();
    p.reconcile.resync_interval = Duration::from_millis(100);
    p.peers.lease_timeout = LEASE;
    p
}

struct Replica {
    handle: Handle,
    metrics: Arc<Metrics>,
    task: JoinHandle<()>,
}

async fn start(fake: &FakeRuntime, instance: &str) -> Replica {
    start_with(fake, instance, policy()).await
}

async fn start_with(fake: &FakeRuntime, instance: &str, policy: Policy) -> Replica {
    let (tx, rx) = watch::channel(Arc::new(policy));
    std::mem::forget(tx);
    let metrics = Arc::new(Metrics::new());
    let cfg = ControllerConfig { instance: instance.parse().expect("valid"), epoch: 1, audit: None };
    let (handle, _terms, task) = controller::spawn(fake.clone(), cfg, rx, metrics.clone());
    let mut r = handle.readiness();
    tokio::time::timeout(Duration::from_secs(5), r.wait_for(|r| r.is_ready())).await.expect("ready").expect("alive");
    Replica { handle, metrics, task }
}

fn request() -> SessionRequest {
    SessionRequest {
        profile: None,
        kind: SessionKind::Anonymous,
        env: vec![],
        resume_hash: Some("ab".repeat(32)),
        client_ip: None,
        id: None,
        identity: None,
        size: None,
    }
}

async fn open(h: &Handle) -> Ticket {
    let mut t = h.open_and_wait(request()).await.expect("admitted");
    tokio::time::timeout(Duration::from_secs(5), t.status.wait_for(|s| s.phase == Phase::Running))
        .await
        .expect("running")
        .expect("alive");
    t
}

async fn peers(fake: &FakeRuntime) -> Vec<PeerContainer> {
    fake.list_peers(&LabelNamespace::default()).await.expect("list")
}

fn takeovers(r: &Replica, result: TakeoverResult) -> u64 {
    r.metrics.takeovers(result)
}

async fn eventually<F: std::future::Future<Output = bool>>(limit: Duration, what: &str, mut f: impl FnMut() -> F) {
    let until = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < until, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_replica_is_taken_over_by_exactly_one_survivor_after_the_lease() {
    let fake = FakeRuntime::default();
    let a = start(&fake, "a").await;
    let b = start(&fake, "b").await;
    let c = start(&fake, "c").await;
    for _ in 0..3 {
        open(&a.handle).await;
    }
    let bs = open(&b.handle).await;

    // a crashes: its controller is gone without a word, and its sentinel stops as Docker stops it when the
    // process's attach stream closes.
    let sentinel = crash(&fake, a, "a").await;
    let died = Instant::now();

    // Not before the lease: nobody has claimed a yet.
    tokio::time::sleep(LEASE / 2).await;
    assert_eq!(
        takeovers(&b, TakeoverResult::Won) + takeovers(&c, TakeoverResult::Won),
        0,
        "claimed before the lease ran out"
    );

    eventually(Duration::from_secs(5), "one survivor holds a's three sessions", || async {
        let (nb, nc) = (b.handle.list().await.len(), c.handle.list().await.len());
        (nb, nc) == (4, 0) || (nb, nc) == (1, 3)
    })
    .await;
    let took = died.elapsed();
    assert!(took >= LEASE, "taken over after {took:?}, before the lease of {LEASE:?}");
    assert_eq!(
        takeovers(&b, TakeoverResult::Won) + takeovers(&c, TakeoverResult::Won),
        1,
        "exactly one claim succeeded"
    );
    let (winner, loser) = if takeovers(&b, TakeoverResult::Won) == 1 { (&b, &c) } else { (&c, &b) };
    for s in winner.handle.list().await {
        assert_eq!(s.status.phase, Phase::Running, "{s:?}");
    }
    assert!(loser.handle.list().await.len() <= 1, "the other survivor adopted nothing");
    assert_eq!(fake.count(Some(ContainerState::Running)), 4, "nothing was removed or recreated");
    assert_eq!(bs.status.borrow().phase, Phase::Running);

    // The winner removed a's stopped sentinel; its claim stays while a's containers do.
    eventually(Duration::from_secs(5), "a's sentinel removed", || async {
        !peers(&fake).await.iter().any(|p| p.id == sentinel.id)
    })
    .await;
    let claims: Vec<PeerContainer> =
        peers(&fake).await.into_iter().filter(|p| p.labels.role == PeerRole::Claim).collect();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0].labels.claimed.as_ref().map(|(d, _)| d.as_str()), Some("a"));
}

/// Crashes `r` (its controller vanishes, and its sentinel stops as Docker stops it); returns the sentinel.
async fn crash(fake: &FakeRuntime, r: Replica, instance: &str) -> PeerContainer {
    r.task.abort();
    let sentinel = peers(fake)
        .await
        .into_iter()
        .find(|p| p.labels.role == PeerRole::Sentinel && p.labels.owner.as_str() == instance)
        .expect("its sentinel");
    fake.kill(&sentinel.id, 0);
    sentinel
}

#[tokio::test(start_paused = true)]
async fn with_on_dead_remove_the_survivor_removes_a_dead_replicas_containers_and_then_its_claim() {
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.peers.on_dead = berth::reconciler::policy::OnDeadPeer::Remove;
    let a = start_with(&fake, "a", p.clone()).await;
    let b = start_with(&fake, "b", p).await;
    for _ in 0..3 {
        open(&a.handle).await;
    }
    crash(&fake, a, "a").await;
    eventually(Duration::from_secs(5), "a's containers removed", || async { fake.count(None) == 0 }).await;
    assert_eq!(b.metrics.removed(RemoveReason::DeadPeer), 3);
    assert!(b.handle.list().await.is_empty(), "nothing adopted");
    // Nothing of a is left to cover: b removes its claim, and a's sentinel is gone too; only b's own remains.
    eventually(Duration::from_secs(5), "only b's sentinel left", || async {
        let left = peers(&fake).await;
        left.len() == 1 && left[0].labels.owner.as_str() == "b" && left[0].labels.role == PeerRole::Sentinel
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_finds_a_claim_on_itself_lets_go_and_moves_its_epoch_above_it() {
    let fake = FakeRuntime::default();
    let a = start(&fake, "a").await;
    let first = open(&a.handle).await;
    let container = first.status.borrow().container.clone().expect("container");
    let ns = LabelNamespace::default();
    let epoch = fake.list(&ns).await.expect("list")[0].labels.epoch;
    // a is down for a moment (its sentinel stops), and runs again at a new epoch.
    lose_sentinel(&fake, &a, "a").await;

    // Another replica (say, one that thought a dead meanwhile) holds a claim on a up to the old epoch.
    let claim = PeerLabels {
        role: PeerRole::Claim,
        owner: "b".parse().expect("valid"),
        epoch: 1,
        claimed: Some(("a".parse().expect("valid"), epoch)),
    };
    fake.insert(claim.to_labels(&ns).into_iter().collect(), ContainerState::Created);
    eventually(Duration::from_secs(5), "a lets go of the claimed session", || async {
        a.handle.list().await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.ids().contains(&container), "a did not remove the container it no longer holds");
    assert_eq!(a.metrics.epoch(), i64::try_from(epoch + 1).expect("small"));
    assert_eq!(a.metrics.claims_refused(), 0, "a claim below the running sentinel's epoch is honoured");

    // What a creates now is outside the claim.
    let second = open(&a.handle).await;
    let id = second.status.borrow().container.clone().expect("container");
    let labels = fake.list(&ns).await.expect("list").into_iter().find(|c| c.id == id).expect("listed").labels;
    assert!(labels.epoch > epoch, "new epoch {} not above the claimed {epoch}", labels.epoch);
}

/// Kills `r`'s running sentinel and waits until it runs a new one, at a higher epoch.
async fn lose_sentinel(fake: &FakeRuntime, r: &Replica, instance: &str) {
    let running = |fake: FakeRuntime| async move {
        peers(&fake)
            .await
            .into_iter()
            .find(|p| p.labels.role == PeerRole::Sentinel && p.labels.owner.as_str() == instance && p.running())
    };
    let old = running(fake.clone()).await.expect("a running sentinel");
    fake.kill(&old.id, 137);
    eventually(Duration::from_secs(5), "a new sentinel runs", || async {
        running(fake.clone()).await.is_some_and(|s| s.labels.epoch > old.labels.epoch)
    })
    .await;
    let epoch = r.metrics.epoch();
    assert!(epoch > i64::try_from(old.labels.epoch).expect("small"), "epoch {epoch}");
}

/// A claim container as anyone who reaches the Docker API can create one: `holder` claims `victim` through `epoch`.
fn forge_claim(fake: &FakeRuntime, holder: &str, victim: &str, through: u64) -> berth::reconciler::ContainerId {
    let claim = PeerLabels {
        role: PeerRole::Claim,
        owner: holder.parse().expect("valid"),
        epoch: 1,
        claimed: Some((victim.parse().expect("valid"), through)),
    };
    fake.insert(claim.to_labels(&LabelNamespace::default()).into_iter().collect(), ContainerState::Created)
}

fn removing_policy() -> Policy {
    let mut p = policy();
    p.reconcile.shutdown = berth::reconciler::policy::ShutdownMode::Remove;
    p
}

#[tokio::test(start_paused = true)]
async fn a_live_replica_refuses_a_claim_at_its_running_epoch_keeps_its_sessions_and_removes_the_claim() {
    let fake = FakeRuntime::default();
    let a = start_with(&fake, "a", removing_policy()).await;
    let b = start(&fake, "b").await;
    let sessions = [open(&a.handle).await, open(&a.handle).await];
    let epoch = u64::try_from(a.metrics.epoch()).expect("positive");

    // "x" never ran; its claim names a's running epoch.
    let forged = forge_claim(&fake, "x", "a", epoch);
    eventually(Duration::from_secs(5), "a removes the forged claim", || async {
        !peers(&fake).await.iter().any(|p| p.id == forged)
    })
    .await;
    assert_eq!(a.metrics.claims_refused(), 1, "refused once, and counted");
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(a.handle.list().await.len(), 2, "a kept its sessions");
    for t in &sessions {
        assert_eq!(t.status.borrow().phase, Phase::Running);
    }
    assert_eq!(a.metrics.epoch(), i64::try_from(epoch).expect("small"), "no fencing");
    assert!(b.handle.list().await.is_empty(), "b took nothing over");
    assert_eq!(b.metrics.peers_down(), 0, "nor did it count the forger down");
    assert_eq!(takeovers(&b, TakeoverResult::Won) + takeovers(&a, TakeoverResult::Won), 0);

    // shutdown: remove leaves nothing of a.
    a.handle.shutdown().await;
    assert_eq!(fake.count(None), 0, "a's session containers are gone");
    assert!(peers(&fake).await.iter().all(|p| p.labels.owner.as_str() == "b"), "{:?}", peers(&fake).await);
}

#[tokio::test(start_paused = true)]
async fn shutdown_remove_also_removes_own_containers_that_a_claim_by_a_dead_holder_disowned() {
    let fake = FakeRuntime::default();
    let a = start_with(&fake, "a", removing_policy()).await;
    open(&a.handle).await;
    let epoch = fake.list(&LabelNamespace::default()).await.expect("list")[0].labels.epoch;
    lose_sentinel(&fake, &a, "a").await;
    // A claim below a's running epoch looks like a takeover made while a was down; its holder never runs.
    let claim = forge_claim(&fake, "x", "a", epoch);
    eventually(Duration::from_secs(5), "a lets go", || async { a.handle.list().await.is_empty() }).await;
    assert_eq!(fake.count(None), 1, "the disowned container stays while a runs");

    a.handle.shutdown().await;
    assert_eq!(fake.count(None), 0, "shutdown: remove left a container that nobody manages");
    assert!(!peers(&fake).await.iter().any(|p| p.id == claim), "nor the claim");
}

#[tokio::test(start_paused = true)]
async fn startup_remove_all_removes_own_containers_whatever_a_claim_by_a_dead_holder_says() {
    let fake = FakeRuntime::default();
    let ns = LabelNamespace::default();
    let labels = berth::reconciler::ManagedLabels {
        session: berth::reconciler::SessionId::from_bytes([7; 16]),
        owner: "a".parse().expect("valid"),
        created_at: berth::reconciler::Timestamp::from_millis(0),
        profile: "default".parse().expect("valid"),
        kind: SessionKind::Anonymous,
        policy_hash: "00".into(),
        resume_hash: None,
        epoch: 2,
    };
    fake.insert(labels.to_labels(&ns).into_iter().collect(), ContainerState::Running);
    let claim = forge_claim(&fake, "x", "a", 2);
    let mut p = policy();
    p.reconcile.startup = berth::reconciler::policy::StartupMode::RemoveAll;
    let a = start_with(&fake, "a", p).await;
    eventually(Duration::from_secs(5), "the earlier run's container and the claim removed", || async {
        fake.count(None) == 0 && !peers(&fake).await.iter().any(|p| p.id == claim)
    })
    .await;
    assert!(a.handle.list().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lost_sentinel_is_replaced_at_a_new_epoch_and_only_one_that_stays_away_makes_the_replica_unready() {
    // A lease of 4 s: the replica stays ready for 2 s (half of it) while replacing a lost sentinel (1 s apart).
    const LONG_LEASE: Duration = Duration::from_secs(4);
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.peers.lease_timeout = LONG_LEASE;
    let a = start_with(&fake, "a", p).await;
    let ready = || a.handle.readiness().borrow().is_ready();
    let sentinel = |fake: FakeRuntime| async move {
        peers(&fake).await.into_iter().find(|p| p.labels.role == PeerRole::Sentinel && p.running())
    };
    let first = sentinel(fake.clone()).await.expect("a running sentinel");
    let epoch = a.metrics.epoch();

    // Killed (say, by a careless cleanup): replaced at a higher epoch, and the replica stays ready meanwhile.
    fake.kill(&first.id, 137);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(ready(), "a quick replacement does not turn clients away");
        if let Some(s) = sentinel(fake.clone()).await.filter(|s| s.id != first.id) {
            assert!(s.labels.epoch > first.labels.epoch, "{s:?}");
            break;
        }
        assert!(Instant::now() < until, "no new sentinel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.metrics.epoch() > epoch);

    // One that cannot come back at once (its next three starts fail): unready after half the lease, and ready
    // again as soon as one runs.
    for _ in 0..3 {
        fake.fail_next("run_sentinel", berth::runtime::RuntimeError::NotFound("No such image".into()));
    }
    let second = sentinel(fake.clone()).await.expect("running");
    fake.kill(&second.id, 137);
    let lost = Instant::now();
    let mut r = a.handle.readiness();
    tokio::time::timeout(Duration::from_secs(5), r.wait_for(|r| !r.is_ready())).await.expect("unready").expect("alive");
    assert!(lost.elapsed() >= LONG_LEASE / 2, "unready after {:?}, before half the lease", lost.elapsed());
    assert!(!a.handle.readiness().borrow().sentinel, "for want of a sentinel");
    tokio::time::timeout(Duration::from_secs(10), r.wait_for(|r| r.is_ready()))
        .await
        .expect("ready again")
        .expect("alive");
    assert!(sentinel(fake.clone()).await.is_some(), "a sentinel runs again");
    assert_eq!(fake.calls("run_sentinel"), 2 + 3 + 1, "first, replacement, three failures, success");
}

#[tokio::test(start_paused = true)]
async fn while_a_sentinel_is_slow_to_start_its_replica_creates_nothing_and_peers_take_nothing_over() {
    // A lease longer than the 1 s between a lost sentinel and its replacement; a Docker timeout above the holds.
    const SLOW_LEASE: Duration = Duration::from_millis(1500);
    const HOLD: Duration = Duration::from_millis(2500);
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.peers.lease_timeout = SLOW_LEASE;
    p.reconcile.docker_timeout = Duration::from_secs(4);
    let b = start_with(&fake, "b", p.clone()).await;
    let a_sentinel = |fake: FakeRuntime| async move {
        peers(&fake)
            .await
            .into_iter()
            .filter(|p| p.labels.role == PeerRole::Sentinel && p.labels.owner.as_str() == "a")
            .collect::<Vec<_>>()
    };

    // a starts on an engine that takes its time to start containers: ready, but a new session waits, pending,
    // with nothing created, until the sentinel runs.
    fake.hold_sentinels(true);
    let a = start_with(&fake, "a", p).await;
    let mut t = a.handle.open_and_wait(request()).await.expect("admitted");
    tokio::time::sleep(HOLD).await;
    assert_eq!(t.status.borrow().phase, Phase::Pending, "{:?}", t.status.borrow());
    assert_eq!(fake.count(None), 0, "a created a container before its sentinel ran");
    // b sees a down, but leaves its starting sentinel alone (removing it would fail a's start).
    assert_eq!(b.metrics.peers_down(), 1);
    assert!(a_sentinel(fake.clone()).await.iter().any(PeerContainer::starting), "b removed a's starting sentinel");
    fake.hold_sentinels(false);
    tokio::time::timeout(Duration::from_secs(5), t.status.wait_for(|s| s.phase == Phase::Running))
        .await
        .expect("running once the sentinel runs")
        .expect("alive");
    eventually(Duration::from_secs(5), "b sees a up", || async { b.metrics.peers_down() == 0 }).await;

    // a's sentinel is lost, and its replacement is slow to start: a is down, with a session, for longer than a
    // lease; b waits for the replacement rather than take a's session over.
    fake.hold_sentinels(true);
    let first = a_sentinel(fake.clone()).await.into_iter().find(PeerContainer::running).expect("running");
    fake.kill(&first.id, 137);
    eventually(Duration::from_secs(5), "a's replacement created", || async {
        a_sentinel(fake.clone()).await.iter().any(PeerContainer::starting)
    })
    .await;
    tokio::time::sleep(HOLD - Duration::from_secs(1)).await;
    assert_eq!(b.metrics.peers_down(), 1, "b sees a down");
    fake.hold_sentinels(false);
    eventually(Duration::from_secs(5), "b sees a up again", || async { b.metrics.peers_down() == 0 }).await;
    assert_eq!(
        takeovers(&b, TakeoverResult::Won) + takeovers(&b, TakeoverResult::Error),
        0,
        "b claimed a live replica"
    );
    assert_eq!(a.handle.list().await.len(), 1, "a still serves its session");
    assert!(b.handle.list().await.is_empty(), "b adopted nothing");
    assert_eq!(t.status.borrow().phase, Phase::Running);
}

#[tokio::test(start_paused = true)]
async fn a_replica_stopped_while_its_sentinel_starts_leaves_no_sentinel_behind() {
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.reconcile.docker_timeout = Duration::from_secs(4);
    fake.hold_sentinels(true);
    let a = start_with(&fake, "a", p).await;
    eventually(Duration::from_secs(5), "a's sentinel is being created", || async {
        peers(&fake).await.iter().any(PeerContainer::starting)
    })
    .await;

    // The stop comes while the engine still holds the sentinel's start; the start finishes a second later.
    let release = {
        let fake = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            fake.hold_sentinels(false);
        })
    };
    a.handle.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), a.task).await.expect("the controller stops").expect("no panic");
    release.await.expect("released");
    let left = peers(&fake).await;
    assert!(left.is_empty(), "left behind after a graceful stop: {left:?}");
}
