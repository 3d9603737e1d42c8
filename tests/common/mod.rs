//! Shared fixtures for tests against a real Docker engine. Each test gets its own label namespace and
//! instance id, so tests run in parallel and only ever see their own containers.
#![allow(dead_code)]

pub mod browser;
pub mod client;
pub mod engine;
pub mod lb;
pub mod load;
pub mod process;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::controller::{self, ControllerConfig, Handle, SessionRequest, Ticket};
use berth::metrics::Metrics;
use berth::reconciler::{InstanceId, LabelNamespace, Phase, Policy, SessionKind, Status};
use berth::runtime::Runtime;
use berth::runtime::docker::DockerRuntime;
use berth::terminal::Terminals;
use tokio::sync::watch;

/// Connects to the local engine, or fails the test loudly.
pub async fn docker() -> DockerRuntime {
    docker_at(None).await
}

/// Connects to the engine at `host`, or fails the test loudly.
pub async fn docker_at(host: Option<&str>) -> DockerRuntime {
    let rt = DockerRuntime::connect_lazy(host).expect("docker address");
    if let Err(e) = rt.ping().await {
        panic!(
            "These tests need a running Docker engine and were not skipped: {e}. \
             Run scripts/setup.sh (or scripts/test.sh), which installs and starts one."
        );
    }
    rt
}

/// A random lowercase hex string of `n` bytes.
pub fn rand_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("random");
    hex::encode(b)
}

/// One test's private world: namespace, instance, policy.
pub struct World {
    pub ns: LabelNamespace,
    pub instance: InstanceId,
    pub policy: Policy,
    pub host: Option<String>,
}

impl World {
    pub fn new() -> Self {
        Self::with_prefix("t")
    }

    /// A world whose namespace, name prefix and instance start with `prefix` (one lowercase letter), so that
    /// a leftover container tells which kind of test made it.
    pub fn with_prefix(prefix: &str) -> Self {
        let tag = format!("{prefix}{}", rand_hex(4));
        let mut policy = Policy::default();
        let ns: LabelNamespace = format!("test.berth.{tag}").parse().expect("namespace");
        policy.docker.namespace = ns.clone();
        policy.docker.name_prefix = format!("berth-{tag}");
        policy.reconcile.resync_interval = Duration::from_secs(2);
        policy.reconcile.concurrency = 6;
        policy.limits.max_per_ip = 1000;
        Self { ns, instance: tag.parse().expect("instance"), policy, host: None }
    }

    pub fn marker_filter(&self) -> String {
        format!("label={}=true", self.ns.marker())
    }

    fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        if let Some(h) = &self.host {
            c.arg("-H").arg(h);
        }
        c
    }

    /// Runs the Docker CLI (used for what an outsider does: kill, rm -f, run look-alikes).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.docker_cmd().args(args).output().expect("docker CLI");
        assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Container ids carrying this world's marker, optionally in one state.
    pub fn containers(&self, status: Option<&str>) -> Vec<String> {
        let filter = self.marker_filter();
        let mut args = vec!["ps", "-aq", "--no-trunc", "--filter", filter.as_str()];
        let st;
        if let Some(s) = status {
            st = format!("status={s}");
            args.extend(["--filter", st.as_str()]);
        }
        self.cli(&args).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }

    /// A whole berth (controller, WebSocket layer, page, metrics) on 127.0.0.1 with an ephemeral port.
    pub async fn serve(&self) -> berth::app::Server {
        self.serve_with(self.policy.clone()).await
    }

    pub async fn serve_with(&self, policy: Policy) -> berth::app::Server {
        let runtime = DockerRuntime::connect_lazy(self.host.as_deref()).expect("docker address");
        self.serve_on(runtime, policy).await
    }

    /// A whole berth on `runtime` (a fault-injecting wrapper, say), ready.
    pub async fn serve_on<R: Runtime>(&self, runtime: R, mut policy: Policy) -> berth::app::Server {
        policy.server.listen = "127.0.0.1:0".parse().expect("address");
        let server =
            berth::app::Server::start_on(runtime, policy, self.instance.clone(), None).await.expect("server starts");
        let mut r = server.handle.readiness();
        tokio::time::timeout(Duration::from_secs(30), r.wait_for(|r| r.is_ready()))
            .await
            .expect("berth ready within 30 s")
            .expect("controller alive");
        server
    }

    pub fn start(&self) -> Running {
        self.start_with(self.policy.clone())
    }

    pub fn start_with(&self, policy: Policy) -> Running {
        let rt = DockerRuntime::connect_lazy(self.host.as_deref()).expect("docker address");
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let metrics = Arc::new(Metrics::new());
        let cfg = ControllerConfig { instance: self.instance.clone(), epoch: 1, audit: None };
        let (handle, terminals, task) = controller::spawn(rt, cfg, policy_rx, metrics.clone());
        Running { handle, terminals, task, policy_tx, metrics }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Leave nothing behind, whatever the test did. Never panic here: this also runs while a failed test
        // unwinds, perhaps with its engine gone, and a second panic would abort before other guards run.
        let (peers, pool) = (format!("label={}", self.ns.peer_key()), format!("label={}", self.ns.pool_key()));
        for filter in [self.marker_filter(), peers, pool] {
            let Ok(out) = self.docker_cmd().args(["ps", "-aq", "--no-trunc", "--filter", filter.as_str()]).output()
            else {
                return;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
            if out.status.success() && !ids.is_empty() {
                let mut c = self.docker_cmd();
                c.args(["rm", "-f"]).args(&ids);
                let _ = c.output();
            }
        }
    }
}

pub struct Running {
    pub handle: Handle,
    pub terminals: Terminals,
    pub task: tokio::task::JoinHandle<()>,
    pub policy_tx: watch::Sender<Arc<Policy>>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    pub async fn ready(&self) {
        let mut r = self.handle.readiness();
        tokio::time::timeout(Duration::from_secs(30), r.wait_for(|r| r.is_ready()))
            .await
            .expect("controller ready within 30 s")
            .expect("controller alive");
    }

    pub async fn open(&self) -> Ticket {
        self.handle
            .open_and_wait(SessionRequest {
                profile: None,
                kind: SessionKind::Anonymous,
                env: vec![],
                resume_hash: Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"secret"))),
                client_ip: None,
                id: None,
                identity: None,
                size: None,
            })
            .await
            .expect("session admitted")
    }
}

/// Waits until `status` satisfies `f`, or panics after `limit`.
pub async fn wait_status(status: &mut watch::Receiver<Status>, limit: Duration, f: impl Fn(&Status) -> bool) -> Status {
    let res = tokio::time::timeout(limit, async { status.wait_for(|s| f(s)).await.map(|s| s.clone()) }).await;
    match res {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => status.borrow().clone(),
        Err(_) => panic!("status did not change as expected within {limit:?}; last: {:?}", *status.borrow()),
    }
}

pub async fn wait_running(t: &mut Ticket) {
    let s = wait_status(&mut t.status, Duration::from_secs(60), |s| {
        s.phase != Phase::Pending && s.phase != Phase::Creating
    })
    .await;
    assert_eq!(s.phase, Phase::Running, "session did not reach running: {s:?}");
}

/// Polls `f` until it returns true, or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
