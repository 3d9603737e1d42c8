//! A fault-injecting wrapper around any [`Runtime`], for chaos tests: added latency and failures per operation,
//! an engine that is "down", and dropped events, all switchable while berth runs through a shared [`Faults`]
//! handle. Random choices come from seeded xorshift generators, one per operation, so a run is reproducible.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use berth_reconciler::peers::{MarkerSpec, PeerContainer};
use berth_reconciler::pool::ListedPooled;
use berth_reconciler::{ContainerId, ContainerSpec, LabelNamespace, ObservedContainer};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

use super::{AttachIo, Runtime, RuntimeError, RuntimeEvent, Sentinel};

/// A runtime operation that faults can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `ping`.
    Ping,
    /// `list`.
    List,
    /// `inspect`.
    Inspect,
    /// `create`.
    Create,
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `remove`.
    Remove,
    /// `attach`.
    Attach,
    /// Opening the event stream (a failure yields one error, then the stream ends).
    Events,
    /// `list_peers`, `create_marker` and `run_sentinel`.
    Peers,
    /// `list_pool` and `rename`: the warm pool's own calls.
    Pool,
}

impl Op {
    /// Every operation.
    pub const ALL: [Self; 11] = [
        Self::Ping,
        Self::List,
        Self::Inspect,
        Self::Create,
        Self::Start,
        Self::Stop,
        Self::Remove,
        Self::Attach,
        Self::Events,
        Self::Peers,
        Self::Pool,
    ];

    /// The name used in errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::List => "list",
            Self::Inspect => "inspect",
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Remove => "remove",
            Self::Attach => "attach",
            Self::Events => "events",
            Self::Peers => "peers",
            Self::Pool => "pool",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Index of the event-drop generator, after the per-operation ones.
const EVENT_STREAM: usize = Op::ALL.len();

/// What is injected into one operation.
#[derive(Debug, Clone, Default)]
struct OpFaults {
    delay: Duration,
    fail_rate: f64,
    fail_next: u32,
    error: Option<RuntimeError>,
    calls: u64,
    injected: u64,
}

#[derive(Debug)]
struct State {
    ops: [OpFaults; Op::ALL.len()],
    event_drop: f64,
    dropped_events: u64,
    /// One generator per operation plus one for events, so that the sequence of choices for one operation does
    /// not depend on how calls to the others interleave.
    rng: [u64; Op::ALL.len() + 1],
}

/// splitmix64: spreads a small seed over all 64 bits (xorshift needs a non-zero state).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    match z ^ (z >> 31) {
        0 => 0x2545_F491_4F6C_DD1D,
        s => s,
    }
}

/// xorshift64: the next value of `state`, as a uniform draw in [0, 1).
fn draw(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The faults in force, shared by every clone and by the [`FaultyRuntime`]s built on it. Tests change them while
/// berth runs.
///
/// Reproducibility: each operation (and the event stream) draws from its own generator, seeded from one seed, so
/// the n-th `create` meets the same fate in every run with that seed. Which call is the n-th still depends on
/// scheduling when several run at once.
#[derive(Debug, Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    down: Arc<watch::Sender<bool>>,
}

impl Faults {
    /// No faults yet; random choices seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        let rng = std::array::from_fn(|i| splitmix(seed.wrapping_add(i as u64)));
        let state = State { ops: Default::default(), event_drop: 0.0, dropped_events: 0, rng };
        Self { state: Arc::new(Mutex::new(state)), down: Arc::new(watch::channel(false).0) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Delays every call of `op` by `delay` (zero: no delay) before it reaches the engine.
    pub fn set_delay(&self, op: Op, delay: Duration) {
        self.lock().ops[op.index()].delay = delay;
    }

    /// Fails each call of `op` with probability `p` (clamped to 0..=1), before it reaches the engine.
    pub fn set_fail_rate(&self, op: Op, p: f64) {
        self.lock().ops[op.index()].fail_rate = p.clamp(0.0, 1.0);
    }

    /// Fails the next `n` calls of `op` (in addition to any failure rate), before they reach the engine.
    pub fn fail_next(&self, op: Op, n: u32) {
        self.lock().ops[op.index()].fail_next = n;
    }

    /// The error injected failures of `op` return; by default a transient [`RuntimeError::Other`].
    pub fn set_error(&self, op: Op, error: RuntimeError) {
        self.lock().ops[op.index()].error = Some(error);
    }

    /// Drops each event with probability `p` (clamped to 0..=1), silently, as Docker's stream can.
    pub fn set_event_drop(&self, p: f64) {
        self.lock().event_drop = p.clamp(0.0, 1.0);
    }

    /// Takes the engine down (every call fails as unreachable at once, open event streams end) or brings it
    /// back. Attach streams already open are left alone: this is an outage of the API, not a crash that kills
    /// containers (the private-engine tests do that with a real daemon).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Whether the engine is down.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Removes every fault and brings the engine back up. Counters are kept.
    pub fn clear(&self) {
        {
            let mut s = self.lock();
            for o in &mut s.ops {
                o.delay = Duration::ZERO;
                o.fail_rate = 0.0;
                o.fail_next = 0;
                o.error = None;
            }
            s.event_drop = 0.0;
        }
        self.set_down(false);
    }

    /// Calls of `op` made so far, failed or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().ops[op.index()].calls
    }

    /// Calls of `op` failed by injection (down included).
    pub fn injected(&self, op: Op) -> u64 {
        self.lock().ops[op.index()].injected
    }

    /// Events dropped so far.
    pub fn dropped_events(&self) -> u64 {
        self.lock().dropped_events
    }

    /// Counts a call of `op` and returns its delay, or fails it at once when the engine is down.
    fn begin(&self, op: Op) -> Result<Duration, RuntimeError> {
        let mut s = self.lock();
        let o = &mut s.ops[op.index()];
        o.calls += 1;
        if self.is_down() {
            o.injected += 1;
            return Err(down_error());
        }
        Ok(o.delay)
    }

    /// Decides whether this call of `op` fails.
    fn decide(&self, op: Op) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        let i = op.index();
        let down = self.is_down();
        let fail = if down {
            true
        } else if s.ops[i].fail_next > 0 {
            s.ops[i].fail_next -= 1;
            true
        } else {
            let p = s.ops[i].fail_rate;
            p > 0.0 && draw(&mut s.rng[i]) < p
        };
        if !fail {
            return Ok(());
        }
        let o = &mut s.ops[i];
        o.injected += 1;
        if down {
            return Err(down_error());
        }
        Err(o.error.clone().unwrap_or_else(|| RuntimeError::Other(format!("injected fault: {} failed", op.as_str()))))
    }

    /// Whether to drop the next event.
    fn drop_event(&self) -> bool {
        let mut s = self.lock();
        let p = s.event_drop;
        let dropped = p > 0.0 && draw(&mut s.rng[EVENT_STREAM]) < p;
        if dropped {
            s.dropped_events += 1;
        }
        dropped
    }

    /// Resolves once the engine is down.
    fn until_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.down.subscribe();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    }
}

fn down_error() -> RuntimeError {
    RuntimeError::Unreachable("injected fault: engine down".into())
}

/// A runtime that passes every call to `R` after applying the [`Faults`] in force: the delay first, then a
/// possible failure (in which case the call never reaches `R`).
#[derive(Debug, Clone)]
pub struct FaultyRuntime<R> {
    inner: R,
    faults: Faults,
}

impl<R: Runtime> FaultyRuntime<R> {
    /// Wraps `inner`; `faults` controls it.
    pub fn new(inner: R, faults: Faults) -> Self {
        Self { inner, faults }
    }

    /// The shared fault controls.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The wrapped runtime.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    async fn enter(&self, op: Op) -> Result<(), RuntimeError> {
        let delay = self.faults.begin(op)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.faults.decide(op)
    }
}

impl<R: Runtime> Runtime for FaultyRuntime<R> {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter(Op::Ping).await?;
        self.inner.ping().await
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.runtimes().await
    }

    async fn list(&self, ns: &LabelNamespace) -> Result<Vec<ObservedContainer>, RuntimeError> {
        self.enter(Op::List).await?;
        self.inner.list(ns).await
    }

    async fn inspect(&self, ns: &LabelNamespace, id: &ContainerId) -> Result<Option<ObservedContainer>, RuntimeError> {
        self.enter(Op::Inspect).await?;
        self.inner.inspect(ns, id).await
    }

    async fn inspect_pooled(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
        id: &ContainerId,
    ) -> Result<Option<ListedPooled>, RuntimeError> {
        self.enter(Op::Inspect).await?;
        self.inner.inspect_pooled(ns, prefix, id).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerId, RuntimeError> {
        self.enter(Op::Create).await?;
        self.inner.create(spec).await
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter(Op::Start).await?;
        self.inner.start(id).await
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        self.enter(Op::Stop).await?;
        self.inner.stop(id, grace).await
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter(Op::Remove).await?;
        self.inner.remove(id).await
    }

    async fn attach(&self, id: &ContainerId, history: bool) -> Result<AttachIo, RuntimeError> {
        self.enter(Op::Attach).await?;
        self.inner.attach(id, history).await
    }

    /// No delay is applied to the event stream; a failure or a down engine yields one error and ends it.
    fn events(&self, ns: &LabelNamespace) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        if let Err(e) = self.faults.begin(Op::Events).and_then(|_| self.faults.decide(Op::Events)) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let faults = self.faults.clone();
        self.inner
            .events(ns)
            .filter(move |ev| std::future::ready(!(ev.is_ok() && faults.drop_event())))
            .take_until(Box::pin(self.faults.until_down()))
            .boxed()
    }

    async fn list_peers(&self, ns: &LabelNamespace) -> Result<Vec<PeerContainer>, RuntimeError> {
        self.enter(Op::Peers).await?;
        self.inner.list_peers(ns).await
    }

    async fn list_pool(&self, ns: &LabelNamespace, prefix: &str) -> Result<Vec<ListedPooled>, RuntimeError> {
        self.enter(Op::Pool).await?;
        self.inner.list_pool(ns, prefix).await
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), RuntimeError> {
        self.enter(Op::Pool).await?;
        self.inner.rename(id, name).await
    }

    async fn log_head(&self, id: &ContainerId, max: usize) -> Result<Vec<u8>, RuntimeError> {
        self.enter(Op::Pool).await?;
        self.inner.log_head(id, max).await
    }

    async fn create_marker(&self, spec: &MarkerSpec) -> Result<ContainerId, RuntimeError> {
        self.enter(Op::Peers).await?;
        self.inner.create_marker(spec).await
    }

    async fn run_sentinel(&self, spec: &MarkerSpec) -> Result<Sentinel, RuntimeError> {
        self.enter(Op::Peers).await?;
        self.inner.run_sentinel(spec).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use berth_reconciler::ContainerState;

    use super::*;
    use crate::runtime::EventKind;
    use crate::runtime::fake::FakeRuntime;

    fn ns() -> LabelNamespace {
        "test.berth.faulty".parse().unwrap_or_else(|_| unreachable!("valid namespace"))
    }

    fn faulty(seed: u64) -> (FakeRuntime, FaultyRuntime<FakeRuntime>) {
        let fake = FakeRuntime::default();
        (fake.clone(), FaultyRuntime::new(fake, Faults::new(seed)))
    }

    /// Which of `n` sequential pings failed.
    async fn ping_pattern(rt: &FaultyRuntime<FakeRuntime>, n: usize) -> Vec<bool> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(rt.ping().await.is_err());
        }
        out
    }

    #[tokio::test]
    async fn fail_next_fails_exactly_that_many_calls_before_they_reach_the_engine() {
        let (fake, rt) = faulty(1);
        rt.faults().fail_next(Op::Ping, 3);
        assert_eq!(ping_pattern(&rt, 5).await, [true, true, true, false, false]);
        assert_eq!(fake.calls("ping"), 2, "failed calls never reach the wrapped engine");
        assert_eq!((rt.faults().calls(Op::Ping), rt.faults().injected(Op::Ping)), (5, 3));
        assert_eq!(rt.faults().calls(Op::List), 0, "counted per operation");
    }

    #[tokio::test]
    async fn the_same_seed_fails_the_same_calls_and_the_rate_is_respected() {
        let (_, a) = faulty(42);
        let (_, b) = faulty(42);
        let (_, c) = faulty(43);
        for rt in [&a, &b, &c] {
            rt.faults().set_fail_rate(Op::Ping, 0.3);
        }
        let (pa, pb, pc) = (ping_pattern(&a, 1000).await, ping_pattern(&b, 1000).await, ping_pattern(&c, 1000).await);
        assert_eq!(pa, pb, "same seed, same failures");
        assert_ne!(pa, pc, "another seed, other failures");
        let failed = pa.iter().filter(|f| **f).count();
        assert!((250..=350).contains(&failed), "about 30% of 1000 calls fail: {failed}");
    }

    #[tokio::test]
    async fn rates_of_zero_and_one_never_and_always_fail_with_the_chosen_error() {
        let (_, rt) = faulty(7);
        rt.faults().set_fail_rate(Op::Ping, 0.0);
        assert!(ping_pattern(&rt, 100).await.iter().all(|f| !f));
        rt.faults().set_fail_rate(Op::Ping, 1.0);
        rt.faults().set_error(
            Op::Ping,
            RuntimeError::Timeout { op: crate::runtime::DockerOp::Ping, after: Duration::from_secs(1) },
        );
        assert!(matches!(rt.ping().await, Err(RuntimeError::Timeout { .. })));
        rt.faults().clear();
        assert!(rt.ping().await.is_ok(), "clear removes every fault");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_holds_each_call_back_before_it_reaches_the_engine() {
        let (fake, rt) = faulty(1);
        rt.faults().set_delay(Op::List, Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let ns = ns();
        let call = rt.list(&ns);
        tokio::pin!(call);
        assert!(tokio::time::timeout(Duration::from_millis(299), &mut call).await.is_err(), "still waiting");
        assert_eq!(fake.calls("list"), 0, "not yet at the engine");
        assert!(call.await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(fake.calls("list"), 1);
    }

    #[tokio::test]
    async fn down_fails_every_call_as_unreachable_and_ends_the_event_stream() {
        let (fake, rt) = faulty(1);
        let mut events = rt.events(&ns());
        rt.faults().set_down(true);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), events.next()).await.expect("the stream ends").is_none(),
            "an open event stream ends when the engine goes down"
        );
        assert!(matches!(rt.ping().await, Err(RuntimeError::Unreachable(_))));
        assert!(matches!(rt.list(&ns()).await, Err(RuntimeError::Unreachable(_))));
        let mut events = rt.events(&ns());
        assert!(matches!(events.next().await, Some(Err(RuntimeError::Unreachable(_)))));
        assert!(events.next().await.is_none(), "one error, then the stream ends");
        assert_eq!(fake.calls("ping") + fake.calls("list"), 0, "nothing reached the engine");
        rt.faults().set_down(false);
        assert!(rt.ping().await.is_ok(), "back up");
    }

    #[tokio::test]
    async fn dropped_events_never_arrive_and_are_counted() {
        let (fake, rt) = faulty(9);
        rt.faults().set_event_drop(0.5);
        let mut events = rt.events(&ns());
        let ids: Vec<ContainerId> = (0..200).map(|_| fake.insert(HashMap::new(), ContainerState::Running)).collect();
        for id in &ids {
            fake.kill(id, 137);
        }
        let mut got = 0u64;
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
            assert_eq!(ev.expect("an event").kind, EventKind::Die);
            got += 1;
        }
        let dropped = rt.faults().dropped_events();
        assert_eq!(got + dropped, 200, "every event is either delivered or counted as dropped");
        assert!((60..=140).contains(&dropped), "about half are dropped: {dropped}");
    }
}
