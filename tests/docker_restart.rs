//! The controller against a Docker engine that crashes and comes back. The engine is a private one
//! (`scripts/private-dockerd.sh`), so killing it disturbs no other test: it is killed with SIGKILL under a
//! running controller with live sessions, restarted on the same directories, and berth must notice, survive,
//! end the sessions whose containers died, and serve new ones.

mod common;

use std::time::{Duration, Instant};

use berth::controller::Readiness;
use berth::reconciler::{EndReason, Phase};
use berth::runtime::DockerOp;
use common::engine::PrivateEngine;
use common::{World, eventually, wait_running, wait_status};

/// Reconcile passes per second over `since`, from a count taken then.
fn pass_rate(passes_then: u64, passes_now: u64, since: Instant) -> f64 {
    let passes = passes_now.saturating_sub(passes_then) as f64;
    passes / since.elapsed().as_secs_f64().max(0.001)
}

/// Most reconcile passes per second the controller may make while nothing changes; a hot loop makes hundreds.
const CALM_PASSES_PER_SEC: f64 = 50.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_engine_ends_the_dead_sessions_and_serves_new_ones() {
    // The shared engine must be up: the private one gets its session image from it.
    common::docker().await;
    let began = Instant::now();
    // Declared before the world, so the world's own clean-up runs while the engine still answers.
    let engine = PrivateEngine::start_new();
    let mut w = World::new();
    w.host = Some(engine.host());
    common::docker_at(w.host.as_deref()).await;
    let c = w.start();
    c.ready().await;

    let mut tickets = futures::future::join_all((0..3).map(|_| c.open())).await;
    for t in &mut tickets {
        wait_running(t).await;
    }
    let before: Vec<String> = w.containers(Some("running"));
    assert_eq!(before.len(), 3, "one running container per session on the private engine");
    eprintln!("3 sessions running after {:?}", began.elapsed());

    // The engine crashes.
    let mut readiness = c.handle.readiness();
    let ping_errors = || c.metrics.docker_calls(DockerOp::Ping, false);
    let pings_failed_before = ping_errors();
    let passes_at_kill = c.metrics.reconcile_passes();
    engine.kill();
    let down_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), readiness.wait_for(|r| !r.docker_up))
        .await
        .expect("readiness reports docker down within 10 s of the kill")
        .expect("controller alive");
    eprintln!("docker_up = false {:?} after the kill", down_at.elapsed());
    assert!(!c.handle.readiness().borrow().is_ready(), "not ready while the engine is down");

    // Stay down until the observer has retried a few times: berth must live through failing calls.
    eventually(Duration::from_secs(15), "the observer retries the dead engine 3 times", || {
        ping_errors() >= pings_failed_before + 3
    })
    .await;
    assert!(!c.task.is_finished(), "the controller task survived the engine's death");
    assert_eq!(c.handle.list().await.len(), 3, "sessions are kept while the engine cannot be asked");

    // The engine comes back on the same directories. Without live-restore, it stops the containers it finds
    // still running from before the crash (a shell ignores SIGTERM, so that takes the 10 s stop timeout), and
    // until it is done its socket takes connections but answers nothing: berth's calls hang meanwhile.
    engine.restart();
    let up_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), readiness.wait_for(Readiness::is_ready))
        .await
        .expect("readiness reports docker up within 30 s of the restart")
        .expect("controller alive");
    eprintln!("ready again {:?} after the restart (engine was down {:?})", up_at.elapsed(), down_at.elapsed());
    assert!(!c.task.is_finished(), "the controller task survived the engine's restart");
    let rate = pass_rate(passes_at_kill, c.metrics.reconcile_passes(), down_at);
    eprintln!("{rate:.1} reconcile passes/s from the kill until ready again");
    assert!(rate < CALM_PASSES_PER_SEC, "hot loop while the engine was down or hanging: {rate:.0} passes/s");

    // The sessions whose containers died with the engine end, and their containers are removed.
    for t in &mut tickets {
        let s = wait_status(&mut t.status, Duration::from_secs(30), |s| s.phase == Phase::Gone).await;
        assert!(s.reason.is_some(), "a session that ended with the engine says why: {s:?}");
        eprintln!("old session {} ended: {}", t.id, s.reason.as_ref().map(EndReason::to_string).unwrap_or_default());
    }
    eventually(Duration::from_secs(15), "0 containers with the test's marker after convergence", || {
        w.containers(None).is_empty()
    })
    .await;
    eprintln!("converged {:?} after the restart", up_at.elapsed());
    assert!(c.handle.list().await.is_empty(), "no sessions left");

    // Converged and calm: no hot loop once the engine is back, either.
    let passes_up = c.metrics.reconcile_passes();
    let calm_from = Instant::now();
    let lists_ok = || c.metrics.docker_calls(DockerOp::List, true);
    let lists_then = lists_ok();
    eventually(Duration::from_secs(10), "a periodic resync on the restarted engine", || lists_ok() > lists_then).await;
    // Over two seconds at least: a hot loop makes hundreds of passes a second, a calm controller a handful (the
    // last events of the convergence and the replaced sentinel included), which over a short window could
    // still read as a high rate.
    let window = Duration::from_secs(2);
    tokio::time::sleep(window.saturating_sub(calm_from.elapsed())).await;
    let rate = pass_rate(passes_up, c.metrics.reconcile_passes(), calm_from);
    eprintln!("{rate:.1} reconcile passes/s after convergence");
    assert!(rate < CALM_PASSES_PER_SEC, "hot loop after the restart: {rate:.0} passes/s");

    // A new session runs on the restarted engine, and leaves nothing behind.
    let mut t = c.open().await;
    wait_running(&mut t).await;
    let id = t.status.borrow().container.clone().expect("the new session has a container");
    assert_eq!(w.containers(Some("running")), vec![id.as_str().to_owned()], "its container runs on the private engine");
    assert!(!before.contains(&id.as_str().to_owned()), "a new container, not an old one");
    c.handle.release(t.id, EndReason::Released).await;
    let s = wait_status(&mut t.status, Duration::from_secs(10), |s| s.phase == Phase::Gone).await;
    assert_eq!(s.reason, Some(EndReason::Released));
    eventually(Duration::from_secs(10), "0 containers after the release", || w.containers(None).is_empty()).await;

    // Still the same controller task, and it shuts down cleanly: it never panicked.
    assert!(!c.task.is_finished(), "the controller task is still running");
    tokio::time::timeout(Duration::from_secs(15), c.handle.shutdown())
        .await
        .expect("controller shuts down within 15 s");
    tokio::time::timeout(Duration::from_secs(5), c.task)
        .await
        .expect("controller task ends after shutdown")
        .expect("controller task ended without a panic");
    eprintln!("whole test took {:?}", began.elapsed());
}
