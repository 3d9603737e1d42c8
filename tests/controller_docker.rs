//! The controller against a real Docker engine: sessions, events, outside interference, orphans, restarts.

mod common;

use std::time::{Duration, Instant};

use berth::reconciler::policy::StartupMode;
use berth::reconciler::{EndReason, Phase};
use common::{World, eventually, wait_running, wait_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sessions_run_and_release_to_zero_containers() {
    common::docker().await;
    let w = World::new();
    let c = w.start();
    c.ready().await;
    let mut tickets = futures::future::join_all((0..50).map(|_| c.open())).await;
    for t in &mut tickets {
        wait_running(t).await;
    }
    assert_eq!(w.containers(Some("running")).len(), 50, "one running container per session");
    assert_eq!(w.containers(None).len(), 50, "and no other");

    let released = Instant::now();
    for t in &tickets {
        c.handle.release(t.id, EndReason::Released).await;
    }
    let limit = 2 * w.policy.reconcile.resync_interval;
    eventually(limit, "0 containers within two resync periods", || w.containers(None).is_empty()).await;
    for t in &mut tickets {
        let s = wait_status(&mut t.status, Duration::from_secs(5), |s| s.phase == Phase::Gone).await;
        assert_eq!(s.reason, Some(EndReason::Released));
    }
    eprintln!("50 sessions released to 0 containers in {:?}", released.elapsed());
    assert!(c.handle.list().await.is_empty(), "no sessions left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_is_reported_as_killed_within_a_second_by_events() {
    common::docker().await;
    let mut w = World::new();
    // A resync far away proves the event stream, not the tick, drives the change.
    w.policy.reconcile.resync_interval = Duration::from_secs(600);
    let c = w.start();
    c.ready().await;
    let mut t = c.open().await;
    wait_running(&mut t).await;
    let id = t.status.borrow().container.clone().expect("container");
    let killed = Instant::now();
    w.cli(&["kill", id.as_str()]);
    let s = wait_status(&mut t.status, Duration::from_secs(1), |s| s.reason.is_some()).await;
    assert_eq!(s.reason, Some(EndReason::Killed { signal: 9 }), "after {:?}", killed.elapsed());
    eventually(Duration::from_secs(5), "killed container removed", || w.containers(None).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_outside_berth_ends_its_session_with_that_reason() {
    common::docker().await;
    let mut w = World::new();
    w.policy.reconcile.resync_interval = Duration::from_secs(600);
    let c = w.start();
    c.ready().await;
    let mut t = c.open().await;
    wait_running(&mut t).await;
    let id = t.status.borrow().container.clone().expect("container");
    w.cli(&["rm", "-f", id.as_str()]);
    let s = wait_status(&mut t.status, Duration::from_secs(5), |s| s.phase == Phase::Gone).await;
    assert_eq!(s.reason, Some(EndReason::RemovedOutsideBerth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_with_the_marker_is_removed_and_a_lookalike_without_it_survives() {
    common::docker().await;
    let w = World::new();
    let session = common::rand_hex(16);
    let ns = w.ns.as_str();
    let labels = [
        format!("{ns}.managed=true"),
        format!("{ns}.session={session}"),
        format!("{ns}.owner={}", w.instance),
        format!("{ns}.created=1000"),
        format!("{ns}.profile=default"),
        format!("{ns}.kind=anonymous"),
        format!("{ns}.policy-hash=00"),
    ];
    let mut orphan = vec!["create".to_owned()];
    for l in &labels {
        orphan.extend(["--label".to_owned(), l.clone()]);
    }
    orphan.extend(["berth-session:latest".to_owned(), "sleep".to_owned(), "600".to_owned()]);
    let orphan_args: Vec<&str> = orphan.iter().map(String::as_str).collect();
    let orphan_id = w.cli(&orphan_args);
    // The look-alike has every label but the marker; it must never be touched.
    let mut lookalike = vec!["run".to_owned(), "-d".to_owned(), "--network".to_owned(), "none".to_owned()];
    for l in labels.iter().skip(1) {
        lookalike.extend(["--label".to_owned(), l.clone()]);
    }
    lookalike.extend(["berth-session:latest".to_owned(), "sleep".to_owned(), "600".to_owned()]);
    let look_args: Vec<&str> = lookalike.iter().map(String::as_str).collect();
    let lookalike_id = w.cli(&look_args);

    let c = w.start();
    c.ready().await;
    eventually(Duration::from_secs(10), "orphan removed", || w.containers(None).is_empty()).await;
    let still = w.cli(&["inspect", "-f", "{{.State.Running}}", &lookalike_id]);
    assert_eq!(still, "true", "the look-alike without the marker is untouched");
    w.cli(&["rm", "-f", &lookalike_id]);
    assert!(!orphan_id.is_empty());
}

/// Runs a controller on its own tokio runtime and kills that runtime: no shutdown code runs, exactly as
/// after `kill -9` of the process. Returns the number of running containers it left.
fn run_then_kill(w: &World, sessions: usize) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let c = w.start();
        c.ready().await;
        let mut tickets = futures::future::join_all((0..sessions).map(|_| c.open())).await;
        for t in &mut tickets {
            wait_running(t).await;
        }
    });
    rt.shutdown_timeout(Duration::ZERO);
    w.containers(Some("running")).len()
}

#[test]
fn after_a_hard_kill_adopt_mode_keeps_twenty_detached_sessions_then_removes_them_after_the_grace() {
    let mut w = World::new();
    w.policy.sessions.resume_grace = Duration::from_secs(4);
    w.policy.reconcile.startup = StartupMode::Adopt;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(common::docker());
    assert_eq!(run_then_kill(&w, 20), 20);
    rt.block_on(async {
        let c = w.start();
        c.ready().await;
        let mut sessions = Vec::new();
        for _ in 0..100 {
            sessions = c.handle.list().await;
            if sessions.len() == 20 && sessions.iter().all(|s| s.status.phase == Phase::Running) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sessions.len(), 20, "every running container adopted");
        assert!(sessions.iter().all(|s| s.adopted && !s.attached), "adopted sessions are detached");
        assert_eq!(w.containers(None).len(), 20, "nothing removed while resumable");
        eventually(Duration::from_secs(15), "0 containers after the grace", || w.containers(None).is_empty()).await;
        // Docker may finish the removal a moment before berth has verified it and dropped the session.
        let mut left = c.handle.list().await;
        for _ in 0..40 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            left = c.handle.list().await;
        }
        assert!(left.is_empty(), "sessions left after their containers: {left:?}");
    });
}

#[test]
fn after_a_hard_kill_remove_all_mode_leaves_zero_containers_within_one_resync() {
    let mut w = World::new();
    w.policy.reconcile.startup = StartupMode::RemoveAll;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(common::docker());
    assert_eq!(run_then_kill(&w, 20), 20);
    rt.block_on(async {
        let c = w.start();
        c.ready().await;
        let limit = w.policy.reconcile.resync_interval + Duration::from_secs(3);
        eventually(limit, "0 containers within one resync", || w.containers(None).is_empty()).await;
        assert!(c.handle.list().await.is_empty(), "nothing adopted");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_hardened_as_the_profile_says() {
    common::docker().await;
    let w = World::new();
    let c = w.start();
    c.ready().await;
    let mut t = c.open().await;
    wait_running(&mut t).await;
    let id = t.status.borrow().container.clone().expect("container");
    let f = "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} \
             {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.NetworkMode}} \
             {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.Init}} {{.Config.User}} {{.Config.Tty}} {{.Config.OpenStdin}}";
    let got = w.cli(&["inspect", "-f", f, id.as_str()]);
    assert_eq!(
        got,
        "true [ALL] [no-new-privileges:true] 50 268435456 268435456 1000000000 none no true 1000:1000 true true"
    );
    let tmpfs = w.cli(&["inspect", "-f", "{{json .HostConfig.Tmpfs}}", id.as_str()]);
    assert!(tmpfs.contains(r#""/tmp":"rw,noexec,nosuid,nodev,size=64m""#), "{tmpfs}");
    c.handle.release(t.id, EndReason::Released).await;
    let started = Instant::now();
    wait_status(&mut t.status, Duration::from_secs(5), |s| s.phase == Phase::Gone).await;
    // Forced removal with an init process: no waiting out a stop timeout.
    assert!(started.elapsed() < Duration::from_secs(3), "ending took {:?}", started.elapsed());
}
