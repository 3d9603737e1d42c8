//! The controller's logic against the in-memory fake engine: retries, give-ups, idle passes, an engine that
//! is down. The fake proves the logic; `controller_docker.rs` proves the product.

use std::sync::Arc;
use std::time::Duration;

use berth::controller::{self, ControllerConfig, Handle, SessionRequest, Ticket};
use berth::metrics::Metrics;
use berth::reconciler::{ContainerState, EndReason, Phase, Policy, SessionKind};
use berth::runtime::fake::FakeRuntime;
use berth::runtime::faulty::{Faults, FaultyRuntime, Op};
use berth::runtime::{Runtime, RuntimeError};
use tokio::sync::watch;

fn policy() -> Policy {
    let mut p = Policy::default();
    p.reconcile.resync_interval = Duration::from_millis(200);
    p.reconcile.backoff_base = Duration::from_millis(10);
    p.reconcile.backoff_max = Duration::from_millis(100);
    p
}

async fn start<R: Runtime>(fake: &R, p: Policy) -> (Handle, Arc<Metrics>) {
    let (_tx, rx) = watch::channel(Arc::new(p));
    std::mem::forget(_tx);
    let metrics = Arc::new(Metrics::new());
    let cfg = ControllerConfig { instance: "fake".parse().expect("valid"), epoch: 1, audit: None };
    let (handle, _terms, _task) = controller::spawn(fake.clone(), cfg, rx, metrics.clone());
    let mut r = handle.readiness();
    tokio::time::timeout(Duration::from_secs(5), r.wait_for(|r| r.is_ready())).await.expect("ready").expect("alive");
    (handle, metrics)
}

async fn open(h: &Handle) -> Ticket {
    h.open_and_wait(SessionRequest {
        profile: None,
        kind: SessionKind::Anonymous,
        env: vec![],
        resume_hash: None,
        client_ip: None,
        id: None,
        identity: None,
        size: None,
    })
    .await
    .expect("admitted")
}

async fn until(t: &mut Ticket, phase: Phase) -> berth::reconciler::Status {
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        t.status.wait_for(|s| s.phase == phase).await.map(|s| s.clone())
    })
    .await;
    match res {
        Ok(Ok(s)) => s,
        _ => panic!("no {phase:?}; last {:?}", *t.status.borrow()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_image_ends_the_session_with_create_failed_at_once() {
    let fake = FakeRuntime::default();
    let (h, _) = start(&fake, policy()).await;
    fake.fail_next("create", RuntimeError::NotFound("No such image: nope".into()));
    let mut t = open(&h).await;
    let s = until(&mut t, Phase::Gone).await;
    assert!(
        matches!(s.reason, Some(EndReason::CreateFailed { ref error }) if error.contains("No such image")),
        "{s:?}"
    );
    assert_eq!(fake.calls("create"), 1, "a permanent error is not retried");
}

#[tokio::test(start_paused = true)]
async fn transient_create_failures_are_retried_with_backoff_until_success() {
    let fake = FakeRuntime::default();
    let (h, m) = start(&fake, policy()).await;
    for _ in 0..3 {
        fake.fail_next("create", RuntimeError::Other("500: daemon busy".into()));
    }
    let mut t = open(&h).await;
    until(&mut t, Phase::Running).await;
    assert_eq!(fake.calls("create"), 4);
    assert_eq!(fake.count(Some(ContainerState::Running)), 1);
    let text = m.render();
    assert!(text.contains(r#"berth_actions_total{kind="create",result="error"} 3"#), "{text}");
}

#[tokio::test(start_paused = true)]
async fn repeated_create_failures_give_up_after_the_policy_limit() {
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.reconcile.max_create_attempts = 2;
    let (h, _) = start(&fake, p).await;
    for _ in 0..5 {
        fake.fail_next("create", RuntimeError::Other("500: daemon busy".into()));
    }
    let mut t = open(&h).await;
    let s = until(&mut t, Phase::Gone).await;
    assert!(matches!(s.reason, Some(EndReason::CreateFailed { .. })));
    assert_eq!(fake.calls("create"), 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_resync_makes_one_list_call_and_no_writes() {
    let fake = FakeRuntime::default();
    let (h, _) = start(&fake, policy()).await;
    let mut t = open(&h).await;
    until(&mut t, Phase::Running).await;
    let writes = |f: &FakeRuntime| ["create", "start", "stop", "remove", "attach"].map(|op| f.calls(op));
    let before = (fake.calls("list"), writes(&fake), fake.calls("inspect"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = (fake.calls("list"), writes(&fake), fake.calls("inspect"));
    let lists = after.0 - before.0;
    assert!((3..=7).contains(&lists), "about one list per 200 ms resync, got {lists}");
    assert_eq!(after.1, before.1, "no writes while nothing changes");
    assert_eq!(after.2, before.2, "no inspects while nothing changes");
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_is_down_is_retried_without_a_hot_loop_and_recovers() {
    let fake = FakeRuntime::default();
    let (h, _) = start(&fake, policy()).await;
    let mut r = h.readiness();
    fake.set_down(true);
    tokio::time::timeout(Duration::from_secs(2), r.wait_for(|r| !r.docker_up))
        .await
        .expect("down noticed")
        .expect("alive");
    let pings_before = fake.calls("ping");
    let lists_before = fake.calls("list");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pings = fake.calls("ping") - pings_before;
    let lists = fake.calls("list") - lists_before;
    assert!(pings <= 12, "backoff holds while the engine is down: {pings} pings in 2 s");
    assert!(lists <= 12, "resync lists stay at the resync rate: {lists} in 2 s");
    fake.set_down(false);
    tokio::time::timeout(Duration::from_secs(10), r.wait_for(|r| r.docker_up)).await.expect("up again").expect("alive");
    let mut t = open(&h).await;
    until(&mut t, Phase::Running).await;
}

#[tokio::test(start_paused = true)]
async fn the_dry_run_plan_is_what_the_controller_then_does() {
    use berth::reconciler::{Action, ManagedLabels, SessionId, Timestamp};
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.reconcile.backoff_base = Duration::from_millis(400);
    p.reconcile.backoff_max = Duration::from_millis(400);
    let ns = p.docker.namespace.clone();
    let (h, _) = start(&fake, p).await;
    // An orphan appears after startup (ours by label, no session), and its first removal fails.
    let labels = ManagedLabels {
        session: SessionId::from_bytes([9; 16]),
        owner: "fake".parse().expect("valid"),
        created_at: Timestamp::from_millis(1000),
        profile: "default".parse().expect("valid"),
        kind: SessionKind::Anonymous,
        policy_hash: "00".into(),
        resume_hash: None,
        epoch: 1,
    };
    let orphan = fake.insert(labels.to_labels(&ns).into_iter().collect(), ContainerState::Running);
    fake.fail_next("remove", RuntimeError::Other("500: device busy".into()));
    h.resync().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.calls("remove") < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("first removal attempted");
    // While it backs off, the dry run shows the plan the controller is waiting to carry out.
    let plan = h.dry_run().await.expect("plan");
    assert_eq!(plan.actions.len(), 1, "{plan:?}");
    let Action::BulkRemove { containers, .. } = &plan.actions[0] else { panic!("{plan:?}") };
    assert_eq!(containers, &vec![orphan.clone()]);
    assert_eq!(fake.count(None), 1, "nothing removed yet");
    // Then the controller does exactly that.
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.count(None) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("orphan removed after the backoff");
    assert_eq!(fake.calls("remove"), 2);
    assert_eq!(fake.calls("create"), 0);
    assert!(h.dry_run().await.expect("plan").actions.is_empty());
}

#[tokio::test(start_paused = true)]
async fn sessions_converge_while_creates_fail_and_half_the_events_are_lost() {
    let fake = FakeRuntime::default();
    let faults = Faults::new(11);
    faults.set_fail_rate(Op::Create, 0.3);
    faults.set_event_drop(0.5);
    let mut p = policy();
    p.reconcile.max_create_attempts = 30;
    let (h, _) = start(&FaultyRuntime::new(fake.clone(), faults.clone()), p).await;
    let mut tickets = futures::future::join_all((0..20).map(|_| open(&h))).await;
    for t in &mut tickets {
        until(t, Phase::Running).await;
    }
    assert_eq!(fake.count(Some(ContainerState::Running)), 20);
    assert!(faults.injected(Op::Create) > 0, "some creates failed");

    // Half the containers die; half of their `die` events are lost, and the periodic resync finds those.
    let (dead, alive) = tickets.split_at_mut(10);
    for t in dead.iter_mut() {
        let id = t.status.borrow().container.clone().expect("a container");
        fake.kill(&id, 137);
    }
    for t in dead.iter_mut() {
        let s = until(t, Phase::Gone).await;
        assert_eq!(s.reason, Some(EndReason::Killed { signal: 9 }));
    }
    assert!(faults.dropped_events() > 0, "some events were dropped");
    for t in alive.iter_mut() {
        h.release(t.id, EndReason::Released).await;
    }
    for t in alive.iter_mut() {
        until(t, Phase::Gone).await;
    }
    assert_eq!(fake.count(None), 0, "nothing left");
    // A removal whose `destroy` event was dropped is verified by an inspect after a short wait (decision
    // record 0027); until then the session is still listed.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !h.list().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("every session is forgotten once its removal is verified");
}

// Deadlines on tokio's paused clock: minutes of policy time run in milliseconds, and the bounds are exact.

/// Waits (in virtual time) until the ticket reaches `phase`, and says how long that took.
async fn time_until(t: &mut Ticket, phase: Phase) -> (Duration, berth::reconciler::Status) {
    let started = tokio::time::Instant::now();
    let s = until_within(t, phase, Duration::from_secs(24 * 3600)).await;
    (started.elapsed(), s)
}

async fn until_within(t: &mut Ticket, phase: Phase, limit: Duration) -> berth::reconciler::Status {
    let res =
        tokio::time::timeout(limit, async { t.status.wait_for(|s| s.phase == phase).await.map(|s| s.clone()) }).await;
    match res {
        Ok(Ok(s)) => s,
        _ => panic!("no {phase:?} within {limit:?}; last {:?}", *t.status.borrow()),
    }
}

fn long_lived() -> Policy {
    let mut p = policy();
    p.reconcile.resync_interval = Duration::from_secs(30);
    p.sessions.idle_timeout = Duration::from_secs(24 * 3600);
    p.sessions.max_lifetime = Duration::from_secs(48 * 3600);
    p.sessions.resume_grace = Duration::from_secs(24 * 3600);
    p
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_ends_when_its_resume_grace_runs_out_and_not_before() {
    let fake = FakeRuntime::default();
    let mut p = long_lived();
    p.sessions.resume_grace = Duration::from_secs(300);
    let (h, _) = start(&fake, p).await;
    let mut t = open(&h).await;
    until(&mut t, Phase::Running).await;
    h.detach(t.id, t.lease).await;
    let (after, s) = time_until(&mut t, Phase::Gone).await;
    assert_eq!(s.reason, Some(EndReason::ResumeGraceExpired), "{s:?}");
    assert!(after >= Duration::from_secs(300), "ended {after:?} after the detach, before the 300 s grace");
    assert!(after < Duration::from_secs(302), "ended {after:?} after the detach: the grace is 300 s");
    assert_eq!(fake.count(None), 0, "its container is removed");
}

#[tokio::test(start_paused = true)]
async fn a_session_without_activity_ends_idle_at_its_timeout_and_not_before() {
    let fake = FakeRuntime::default();
    let mut p = long_lived();
    p.sessions.idle_timeout = Duration::from_secs(600);
    let (h, _) = start(&fake, p).await;
    let mut t = open(&h).await;
    until(&mut t, Phase::Running).await;
    let (after, s) = time_until(&mut t, Phase::Gone).await;
    assert_eq!(s.reason, Some(EndReason::Idle), "{s:?}");
    assert!(
        (Duration::from_secs(599)..Duration::from_secs(602)).contains(&after),
        "idle end {after:?} after start; the timeout is 600 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_retried_after_the_backoff_and_not_sooner() {
    let fake = FakeRuntime::default();
    let mut p = long_lived();
    p.reconcile.backoff_base = Duration::from_secs(10);
    p.reconcile.backoff_max = Duration::from_secs(60);
    let (h, _) = start(&fake, p).await;
    fake.fail_next("create", RuntimeError::Other("500: daemon busy".into()));
    let mut t = open(&h).await;
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(fake.calls("create"), 1, "retried before the 10 s backoff");
    until_within(&mut t, Phase::Running, Duration::from_secs(2)).await;
    assert_eq!(fake.calls("create"), 2);
    assert!(started.elapsed() >= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn berths_own_changes_are_not_inspected_and_a_crash_is() {
    // Decision record 0027: the events of berth's own create, start and removal are applied from the calls'
    // outcomes; a container dying by itself is still inspected (its exit code is the session's end reason).
    let fake = FakeRuntime::default();
    let mut p = policy();
    p.reconcile.resync_interval = Duration::from_secs(3600);
    let (h, metrics) = start(&fake, p).await;
    let before = fake.calls("inspect");
    let mut a = open(&h).await;
    until(&mut a, Phase::Running).await;
    h.release(a.id, EndReason::Released).await;
    until(&mut a, Phase::Gone).await;
    assert_eq!(fake.calls("inspect"), before, "no inspect for berth's own create, start and removal");
    assert!(metrics.docker_events_expected() >= 2, "the create and start events were matched");

    let mut b = open(&h).await;
    until(&mut b, Phase::Running).await;
    let id = b.status.borrow().container.clone().expect("a container");
    fake.kill(&id, 137);
    let s = until(&mut b, Phase::Gone).await;
    assert_eq!(s.reason, Some(EndReason::Killed { signal: 9 }), "the crash was read from Docker");
    assert!(fake.calls("inspect") > before, "the die berth did not cause was inspected");
    tokio::time::timeout(Duration::from_secs(5), async {
        while !h.list().await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the removal is verified and the session forgotten");
    assert_eq!(fake.count(None), 0);
}
