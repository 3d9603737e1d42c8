//! One full observe-and-plan pass over real containers, and the Docker API calls an idle pass makes.
//!
//! The fixture is a fleet of real containers (`docker create` through berth's runtime, never started) in a fresh
//! label namespace, and a desired state that matches it: one session per container, bound to it. Containers
//! that were created but not started are exactly what a draining instance leaves alone, so the desired state is
//! marked draining and the plan is empty; the planner still groups, pairs and examines every session and
//! container as it does for running, attached ones. Then:
//! - `observe/list_and_plan`: list through `DockerRuntime`, merge into the controller's `ObservedStore`, plan;
//! - `observe/plan`: the planner alone on that view;
//! - the calls of one idle pass, counted by a wrapper around the runtime, twice: that pass with the real executor
//!   applying its (empty) plan, and the real controller loop asked to resync, as a peer instance that owns none
//!   of the fleet. Each must make one list call and nothing else;
//! - the calls per session of the cold path: the real controller opens [`LIFECYCLE`] sessions (create, attach,
//!   start), waits until each runs, releases them and waits until each is gone, counting every call it makes on
//!   the way (decision record 0027). The terminal's resize to the client's size is made by the terminal on the
//!   attach stream, outside the runtime's calls, and comes on top: one per session.
//!
//! `cargo bench --bench observe` uses 1,000 containers; `cargo test --all-targets` (no `--bench`) runs each
//! benchmark once over 50. Both need a Docker engine with the `berth-session:latest` image and fail loudly
//! without one. The fleet is removed at the end, also when a step panics.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth::controller::{self, ControllerConfig, ObservedStore, SessionRequest};
use berth::executor::{AttachSink, Executor};
use berth::metrics::Metrics;
use berth::reconciler::peers::{MarkerSpec, PeerContainer};
use berth::reconciler::{
    ContainerId, ContainerSpec, Desired, DesiredSession, EndReason, InstanceId, LabelNamespace, ObservedContainer,
    Phase, Plan, Policy, SessionId, SessionKind, Timestamp, plan,
};
use berth::runtime::docker::DockerRuntime;
use berth::runtime::{AttachIo, Runtime, RuntimeError, RuntimeEvent, Sentinel};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

/// Containers in the fleet under `cargo bench`, and under `cargo test`.
const FULL: usize = 1_000;
const QUICK: usize = 50;
/// Sessions opened and ended for the calls-per-session count.
const LIFECYCLE: usize = 10;
/// Docker creates in flight while the fleet is built.
const CREATE_CONCURRENCY: usize = 8;

/// Calls made through [`Counting`], by operation.
#[derive(Debug, Default)]
struct Calls {
    ping: AtomicU64,
    list: AtomicU64,
    list_done: AtomicU64,
    inspect: AtomicU64,
    create: AtomicU64,
    start: AtomicU64,
    stop: AtomicU64,
    remove: AtomicU64,
    attach: AtomicU64,
    events: AtomicU64,
    /// `list_peers`: one per full list, beside `list`.
    peers: AtomicU64,
    /// `create_marker` and `run_sentinel`: writes.
    markers: AtomicU64,
}

impl Calls {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }

    /// Calls that change a container.
    fn writes(&self) -> u64 {
        [&self.create, &self.start, &self.stop, &self.remove, &self.markers].into_iter().map(Self::get).sum()
    }

    /// Reads other than list.
    fn other_reads(&self) -> u64 {
        [&self.ping, &self.inspect, &self.attach, &self.events].into_iter().map(Self::get).sum()
    }

    /// A copy of the counts now.
    fn snapshot(&self) -> Self {
        let c = |a: &AtomicU64| AtomicU64::new(Self::get(a));
        Self {
            ping: c(&self.ping),
            list: c(&self.list),
            list_done: c(&self.list_done),
            inspect: c(&self.inspect),
            create: c(&self.create),
            start: c(&self.start),
            stop: c(&self.stop),
            remove: c(&self.remove),
            attach: c(&self.attach),
            events: c(&self.events),
            peers: c(&self.peers),
            markers: c(&self.markers),
        }
    }

    fn reset(&self) {
        for c in [
            &self.ping,
            &self.list,
            &self.list_done,
            &self.inspect,
            &self.create,
            &self.start,
            &self.stop,
            &self.remove,
            &self.attach,
            &self.events,
            &self.peers,
            &self.markers,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} list call(s), {} write(s) (create {}, start {}, stop {}, remove {}), {} other call(s) (ping {}, inspect {}, attach {}, events {}, peers {})",
            Self::get(&self.list),
            self.writes(),
            Self::get(&self.create),
            Self::get(&self.start),
            Self::get(&self.stop),
            Self::get(&self.remove),
            self.other_reads(),
            Self::get(&self.ping),
            Self::get(&self.inspect),
            Self::get(&self.attach),
            Self::get(&self.events),
            Self::get(&self.peers),
        )
    }
}

/// berth's Docker runtime, counting every call.
#[derive(Debug, Clone)]
struct Counting {
    inner: DockerRuntime,
    calls: Arc<Calls>,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

impl Runtime for Counting {
    async fn ping(&self) -> Result<(), RuntimeError> {
        count(&self.calls.ping);
        self.inner.ping().await
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.runtimes().await
    }

    async fn list(&self, ns: &LabelNamespace) -> Result<Vec<ObservedContainer>, RuntimeError> {
        count(&self.calls.list);
        let r = self.inner.list(ns).await;
        count(&self.calls.list_done);
        r
    }

    async fn inspect(&self, ns: &LabelNamespace, id: &ContainerId) -> Result<Option<ObservedContainer>, RuntimeError> {
        count(&self.calls.inspect);
        self.inner.inspect(ns, id).await
    }

    async fn inspect_pooled(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
        id: &ContainerId,
    ) -> Result<Option<berth::reconciler::pool::ListedPooled>, RuntimeError> {
        count(&self.calls.inspect);
        self.inner.inspect_pooled(ns, prefix, id).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerId, RuntimeError> {
        count(&self.calls.create);
        self.inner.create(spec).await
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        count(&self.calls.start);
        self.inner.start(id).await
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        count(&self.calls.stop);
        self.inner.stop(id, grace).await
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        count(&self.calls.remove);
        self.inner.remove(id).await
    }

    async fn attach(&self, id: &ContainerId, history: bool) -> Result<AttachIo, RuntimeError> {
        count(&self.calls.attach);
        self.inner.attach(id, history).await
    }

    fn events(&self, ns: &LabelNamespace) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        count(&self.calls.events);
        self.inner.events(ns)
    }

    async fn list_peers(&self, ns: &LabelNamespace) -> Result<Vec<PeerContainer>, RuntimeError> {
        count(&self.calls.peers);
        self.inner.list_peers(ns).await
    }

    async fn list_pool(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
    ) -> Result<Vec<berth::reconciler::pool::ListedPooled>, RuntimeError> {
        self.inner.list_pool(ns, prefix).await
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), RuntimeError> {
        self.inner.rename(id, name).await
    }

    async fn log_head(&self, id: &ContainerId, max: usize) -> Result<Vec<u8>, RuntimeError> {
        self.inner.log_head(id, max).await
    }

    async fn create_marker(&self, spec: &MarkerSpec) -> Result<ContainerId, RuntimeError> {
        count(&self.calls.markers);
        self.inner.create_marker(spec).await
    }

    async fn run_sentinel(&self, spec: &MarkerSpec) -> Result<Sentinel, RuntimeError> {
        count(&self.calls.markers);
        self.inner.run_sentinel(spec).await
    }
}

/// Attach streams go nowhere: an idle pass must not open any.
struct NoTerminals;

impl AttachSink for NoTerminals {
    fn connect(&self, _session: SessionId, _io: AttachIo) {}

    fn wants_history(&self, _session: SessionId) -> bool {
        false
    }
}

/// The fleet's containers, removed (by their label) when this is dropped, panics included.
struct Fleet {
    ns: LabelNamespace,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed step unwinds.
        let filter = format!("label={}=true", self.ns.marker());
        let started = Instant::now();
        let Ok(out) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else {
            eprintln!("observe bench: cannot run the docker CLI; remove containers labelled {filter} by hand");
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
        for chunk in ids.chunks(200) {
            let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(chunk).output();
        }
        eprintln!("observe bench: removed {} containers in {:.1?}", ids.len(), started.elapsed());
    }
}

fn tag() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("random source");
    hex::encode(b)
}

/// Creates `n` containers for `n` sessions of `desired`, binding each session to its container.
async fn build_fleet(rt: &DockerRuntime, desired: &mut Desired, policy: &Policy, n: usize) {
    let profile = policy.profiles.get(&policy.default_profile).expect("the default profile");
    let now = Timestamp::now();
    let specs: Vec<(DesiredSession, ContainerSpec)> = (0..n)
        .map(|_| {
            let s = DesiredSession::new(
                SessionId::generate().expect("random source"),
                policy.default_profile.clone(),
                SessionKind::Anonymous,
                now,
            );
            let spec = ContainerSpec::build(desired, &s, profile, policy, now);
            (s, spec)
        })
        .collect();
    let started = Instant::now();
    let created: Vec<(DesiredSession, Result<ContainerId, RuntimeError>)> = futures::stream::iter(specs)
        .map(|(s, spec)| async move { (s, rt.create(&spec).await) })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    for (mut s, id) in created {
        let id = id.unwrap_or_else(|e| {
            panic!(
                "docker create failed: {e}. The bench needs the berth-session:latest image (scripts/build-images.sh)"
            )
        });
        s.container = Some(id);
        desired.sessions.insert(s.id, s);
    }
    eprintln!("observe bench: created {n} containers in {:.1?}", started.elapsed());
}

/// One observe-and-plan pass as the controller makes it: a full list merged into the store, a plan, and the
/// executor applying whatever the plan holds.
async fn pass<R: Runtime>(
    rt: &R,
    store: &mut ObservedStore,
    desired: &Desired,
    policy: &Policy,
    executor: &Executor<R>,
) -> Plan {
    let generation = store.begin_list();
    let at = Timestamp::now();
    let list = rt.list(&policy.docker.namespace).await.expect("docker list");
    store.apply_list(list, generation, at);
    let p = plan(desired, store.view(), policy, Timestamp::now());
    for action in p.actions.clone() {
        executor.run(action).await;
    }
    p
}

/// The real controller, as a peer instance that owns none of the fleet, asked to resync once it is quiet.
async fn controller_idle_pass(rt: DockerRuntime, policy: &Policy, tag: &str) -> Arc<Calls> {
    let calls = Arc::new(Calls::default());
    let counting = Counting { inner: rt, calls: calls.clone() };
    let (_policy_tx, policy_rx) = watch::channel(Arc::new(policy.clone()));
    let metrics = Arc::new(Metrics::new());
    let instance: InstanceId = format!("observe-peer-{tag}").parse().expect("instance id");
    let (handle, _terminals, task) =
        controller::spawn(counting, ControllerConfig { instance, epoch: 1, audit: None }, policy_rx, metrics.clone());
    let mut ready = handle.readiness();
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| r.is_ready()))
        .await
        .expect("controller ready within 60 s")
        .expect("controller alive");
    // Quiet: nothing is in flight once no call has been made for a while.
    quiet(&calls).await;
    calls.reset();
    let passes = metrics.reconcile_passes();
    handle.resync().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Calls::get(&calls.list_done) == 0 || metrics.reconcile_passes() <= passes {
        assert!(Instant::now() < deadline, "no pass after a resync within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Anything the pass dispatched has started by now. Counted before the shutdown, which removes the sentinel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = Arc::new(calls.snapshot());
    handle.shutdown().await;
    let _ = task.await;
    counted
}

/// Waits until no call has been made for a while.
async fn quiet(calls: &Calls) {
    let mut seen = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = (Calls::get(&calls.list_done), calls.writes() + calls.other_reads());
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// The real controller opens `k` sessions, waits until each runs, ends them and waits until each is gone.
async fn controller_lifecycle(rt: DockerRuntime, policy: &Policy, tag: &str, k: usize) -> Arc<Calls> {
    let calls = Arc::new(Calls::default());
    let counting = Counting { inner: rt, calls: calls.clone() };
    let (_policy_tx, policy_rx) = watch::channel(Arc::new(policy.clone()));
    let metrics = Arc::new(Metrics::new());
    let instance: InstanceId = format!("observe-life-{tag}").parse().expect("instance id");
    let (handle, _terminals, task) =
        controller::spawn(counting, ControllerConfig { instance, epoch: 1, audit: None }, policy_rx, metrics.clone());
    let mut ready = handle.readiness();
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| r.is_ready()))
        .await
        .expect("controller ready within 60 s")
        .expect("controller alive");
    quiet(&calls).await;
    calls.reset();
    let within = |phase: Phase, mut t: berth::controller::Ticket| async move {
        tokio::time::timeout(Duration::from_secs(60), t.status.wait_for(|s| s.phase == phase))
            .await
            .unwrap_or_else(|_| panic!("a session reaches {phase:?} within 60 s"))
            .expect("controller alive");
        t
    };
    let tickets = futures::future::join_all((0..k).map(|_| async {
        let req = SessionRequest {
            profile: None,
            kind: SessionKind::Anonymous,
            env: vec![],
            resume_hash: None,
            client_ip: None,
            id: None,
            identity: None,
            size: None,
        };
        within(Phase::Running, handle.open_and_wait(req).await.expect("admitted")).await
    }))
    .await;
    for t in &tickets {
        handle.release(t.id, EndReason::Released).await;
    }
    futures::future::join_all(tickets.into_iter().map(|t| within(Phase::Gone, t))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.list().await.is_empty() {
        assert!(Instant::now() < deadline, "sessions forgotten within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    quiet(&calls).await;
    let counted = Arc::new(calls.snapshot());
    handle.shutdown().await;
    let _ = task.await;
    counted
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test` does not (and `-- --test` asks for test mode explicitly).
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    // Arguments are read (and refused, by exiting) before any container exists: an exit skips the fleet's cleanup.
    let mut c = Criterion::default().configure_from_args();
    let n = if full { FULL } else { QUICK };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let docker = rt.block_on(async {
        let d = DockerRuntime::connect(None).await.unwrap_or_else(|e| {
            panic!("the observe bench needs a running Docker engine and was not skipped: {e}. Run scripts/setup.sh.")
        });
        d.ping().await.unwrap_or_else(|e| panic!("the Docker engine does not answer: {e}"));
        d
    });

    let tag = tag();
    let mut policy = Policy::default();
    policy.docker.namespace = format!("bench.observe.{tag}").parse().expect("namespace");
    policy.docker.name_prefix = format!("observe-{tag}");
    // The fleet is never started: it must not count as stuck while the bench runs, and no timer may resync.
    policy.reconcile.start_timeout = Duration::from_secs(3600);
    policy.reconcile.resync_interval = Duration::from_secs(3600);
    let owner: InstanceId = format!("observe-{tag}").parse().expect("instance id");
    let mut desired = Desired::new(owner);
    desired.epoch = 1;
    let fleet = Fleet { ns: policy.docker.namespace.clone() };
    rt.block_on(build_fleet(&docker, &mut desired, &policy, n));
    // Created, never started, and left alone: what a draining instance plans for them is nothing.
    desired.draining = true;

    let calls = Arc::new(Calls::default());
    let counting = Counting { inner: docker.clone(), calls: calls.clone() };
    let metrics = Arc::new(Metrics::new());
    let executor = Executor::new(
        counting.clone(),
        policy.docker.namespace.clone(),
        policy.reconcile.docker_timeout,
        policy.reconcile.concurrency,
        metrics,
        Arc::new(NoTerminals),
    );

    // The idle pass, counted.
    let mut store = ObservedStore::default();
    let started = Instant::now();
    let idle = rt.block_on(pass(&counting, &mut store, &desired, &policy, &executor));
    let took = started.elapsed();
    assert_eq!(store.view().containers.len(), n, "the list sees the whole fleet");
    assert!(idle.actions.is_empty() && idle.ends.is_empty(), "a matching desired state plans nothing: {idle:?}");
    eprintln!("observe bench: idle pass over {n} containers in {took:.1?}: {}", calls.describe());
    assert_eq!(Calls::get(&calls.list), 1, "an idle pass lists once");
    assert_eq!(calls.writes() + calls.other_reads(), 0, "an idle pass makes no other call");
    println!("idle pass: 1 list call, 0 writes ({n} containers)");

    let ctl = rt.block_on(controller_idle_pass(docker.clone(), &policy, &tag));
    eprintln!("observe bench: controller resync with {n} containers of a peer: {}", ctl.describe());
    assert_eq!(Calls::get(&ctl.list), 1, "the controller's idle pass lists once");
    assert_eq!(Calls::get(&ctl.peers), 1, "and lists the sentinels and claims once");
    assert_eq!(ctl.writes() + ctl.other_reads(), 0, "the controller's idle pass makes no other call");
    println!("controller idle resync: 1 list call, 1 peer list call, 0 writes ({n} containers of a peer)");

    // The cold path's calls per session, in a namespace of its own.
    let mut life = policy.clone();
    life.docker.namespace = format!("bench.observe.{tag}.life").parse().expect("namespace");
    life.docker.name_prefix = format!("observe-life-{tag}");
    let life_fleet = Fleet { ns: life.docker.namespace.clone() };
    let lc = rt.block_on(controller_lifecycle(docker.clone(), &life, &tag, LIFECYCLE));
    drop(life_fleet);
    let per = |c: &AtomicU64| Calls::get(c) as f64 / LIFECYCLE as f64;
    let total = Calls::get(&lc.create)
        + Calls::get(&lc.start)
        + Calls::get(&lc.stop)
        + Calls::get(&lc.remove)
        + Calls::get(&lc.inspect)
        + Calls::get(&lc.attach);
    eprintln!("observe bench: {LIFECYCLE} sessions opened and ended: {}", lc.describe());
    println!(
        "cold path: {:.1} calls per session (create {:.1}, attach {:.1}, start {:.1}, stop {:.1}, remove {:.1}, inspect {:.1}), plus the terminal's resize; {} list call(s) over {LIFECYCLE} sessions",
        total as f64 / LIFECYCLE as f64,
        per(&lc.create),
        per(&lc.attach),
        per(&lc.start),
        per(&lc.stop),
        per(&lc.remove),
        per(&lc.inspect),
        Calls::get(&lc.list),
    );

    let mut group = c.benchmark_group("observe");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(if full { 12 } else { 1 }))
        .throughput(Throughput::Elements(n as u64));
    let plain = executor_for(&docker, &policy);
    group.bench_function(BenchmarkId::new("list_and_plan", n), |b| {
        b.iter(|| rt.block_on(pass(&docker, &mut store, &desired, &policy, &plain)));
    });
    let now = Timestamp::now();
    group.bench_function(BenchmarkId::new("plan", n), |b| {
        b.iter(|| plan(black_box(&desired), black_box(store.view()), &policy, now));
    });
    group.finish();
    c.final_summary();
    drop(fleet);
}

/// An executor over the plain runtime, for the timed passes (their plans are empty: it never runs).
fn executor_for(rt: &DockerRuntime, policy: &Policy) -> Executor<DockerRuntime> {
    Executor::new(
        rt.clone(),
        policy.docker.namespace.clone(),
        policy.reconcile.docker_timeout,
        policy.reconcile.concurrency,
        Arc::new(Metrics::new()),
        Arc::new(NoTerminals),
    )
}
