//! A profile's `runtime` is checked against the runtimes the engine registered, on the in-memory fake engine
//! (which registers runc and runsc): an unknown name stops the start before anything is created, and a reload
//! naming one is refused while the old policy stays in force.

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth::app::{ServeError, Server};
use berth::metrics::ReloadResult;
use berth::runtime::fake::FakeRuntime;
use berth_reconciler::{Policy, ProfileName};
use common::World;
use common::process::TempDir;

fn with_runtime(w: &World, runtime: Option<&str>) -> Policy {
    let mut p = w.policy.clone();
    p.server.listen = "127.0.0.1:0".parse().expect("address");
    let profile = p.profiles.get_mut(&ProfileName::default_name()).expect("default profile");
    profile.runtime = runtime.map(str::to_owned);
    p
}

/// The policy file for `w` with the default profile on `runtime`.
fn policy_file(w: &World, runtime: &str) -> String {
    format!(
        "apiVersion: berth.dev/v1\nkind: Policy\nserver:\n  listen: 127.0.0.1:0\ndocker:\n  namespace: {}\n  \
         name_prefix: {}\nprofiles:\n  default:\n    image: berth-session:latest\n    runtime: {runtime}\n",
        w.ns, w.policy.docker.name_prefix
    )
}

/// Replaces `path` with `text` (written beside it, then renamed onto it: berth applies only a replaced file) until
/// the reload status satisfies `done`, at most 20 s.
async fn rewrite_until(
    path: &std::path::Path,
    text: &str,
    status: &mut tokio::sync::watch::Receiver<berth::reload::ReloadStatus>,
    done: impl Fn(&berth::reload::ReloadStatus) -> bool,
) -> berth::reload::ReloadStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = path.with_extension("yaml.new");
        std::fs::write(&next, text).expect("policy written");
        std::fs::rename(&next, path).expect("policy renamed into place");
        match tokio::time::timeout(Duration::from_millis(500), status.wait_for(|s| s.at > 0 && done(s))).await {
            Ok(s) => return s.expect("reload status").clone(),
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "no reload within 20 s"),
        }
    }
}

#[tokio::test]
async fn an_unknown_runtime_stops_the_start_before_anything_is_created() {
    let w = World::new();
    let fake = FakeRuntime::default();
    fake.set_runtimes(&["runc"]);
    let err = Server::start_on(fake.clone(), with_runtime(&w, Some("runsc")), w.instance.clone(), None)
        .await
        .expect_err("refused");
    assert!(matches!(err, ServeError::UnknownRuntime(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid policy:\nprofiles.default.runtime: the engine has no runtime named \"runsc\" (its runtimes: runc)"
    );
    assert_eq!(fake.calls("list") + fake.calls("create") + fake.calls("run_sentinel"), 0, "nothing was started");

    // Registered, it starts; and a policy naming no runtime does not even ask the engine.
    let server = Server::start_on(fake.clone(), with_runtime(&w, Some("runc")), w.instance.clone(), None)
        .await
        .expect("a registered runtime starts");
    server.stop().await;
    let asked = fake.calls("runtimes");
    let server =
        Server::start_on(fake.clone(), with_runtime(&w, None), w.instance.clone(), None).await.expect("starts");
    server.stop().await;
    assert_eq!(fake.calls("runtimes"), asked, "the engine's default needs no check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_an_unknown_runtime_is_refused_and_the_old_policy_stays() {
    let w = World::new();
    let dir = TempDir::new("runtime-reload");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy_file(&w, "runsc")).expect("policy written");
    let policy = berth::app::load_policy(&path).expect("valid");
    let fake = FakeRuntime::default();
    let server = Server::start_on(fake.clone(), policy, w.instance.clone(), Some(path.clone())).await.expect("starts");
    let mut ready = server.handle.readiness();
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|r| r.is_ready()))
        .await
        .expect("ready")
        .expect("controller alive");
    let mut status = server.reload.clone();

    let refused = rewrite_until(&path, &policy_file(&w, "kata"), &mut status, |s| s.last_error.is_some()).await;
    let error = refused.last_error.expect("an error");
    assert!(
        error.ends_with(
            "profiles.default.runtime: the engine has no runtime named \"kata\" (its runtimes: runc, runsc)"
        ),
        "{error}"
    );
    assert!(error.starts_with(&path.display().to_string()), "the error names the file: {error}");
    let in_force: Arc<Policy> = server.policy.borrow().clone();
    assert_eq!(in_force.profiles[&ProfileName::default_name()].runtime.as_deref(), Some("runsc"), "old policy stays");
    assert_eq!(server.metrics.reloads(ReloadResult::Error), 1);

    // A registered one is accepted.
    rewrite_until(&path, &policy_file(&w, "runc"), &mut status, |s| s.last_error.is_none()).await;
    let in_force: Arc<Policy> = server.policy.borrow().clone();
    assert_eq!(in_force.profiles[&ProfileName::default_name()].runtime.as_deref(), Some("runc"));
    server.stop().await;
}
