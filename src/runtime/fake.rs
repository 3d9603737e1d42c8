//! An in-memory container engine for controller and executor tests: deterministic, instant, and
//! scriptable (fail the next calls of an operation, count calls, emit events).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_reconciler::observed::{ContainerState, Health};
use berth_reconciler::peers::{MarkerSpec, PeerContainer};
use berth_reconciler::pool::ListedPooled;
use berth_reconciler::{ClaimedName, PoolLabels};
use berth_reconciler::{ContainerId, ContainerSpec, LabelNamespace, ManagedLabels, ObservedContainer, PeerLabels};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{AttachIo, EventKind, Runtime, RuntimeError, RuntimeEvent, Sentinel};

/// name, labels, state, exit code
type FakeContainer = (String, HashMap<String, String>, ContainerState, Option<i64>);

#[derive(Debug, Default)]
struct State {
    next: u64,
    containers: BTreeMap<ContainerId, FakeContainer>,
    calls: BTreeMap<&'static str, u64>,
    fail_next: BTreeMap<&'static str, Vec<RuntimeError>>,
    down: bool,
    /// Sentinels are created but not started while set (a slow engine).
    hold_sentinels: bool,
    /// The registered runtimes, when set; else [`FAKE_RUNTIMES`].
    runtimes: Option<Vec<String>>,
    /// The runtime each container was created on (`None`: the default).
    created_on: BTreeMap<ContainerId, Option<String>>,
}

/// The runtimes a fake engine registers unless told otherwise.
pub const FAKE_RUNTIMES: [&str; 2] = ["runc", "runsc"];

/// A sentinel or claim: it carries a `<namespace>.peer` label.
fn is_peer(c: &FakeContainer) -> bool {
    c.1.keys().any(|k| k.ends_with(".peer"))
}

/// The fake engine. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
    down: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
            down: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl FakeRuntime {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enter(&self, op: &'static str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        *s.calls.entry(op).or_default() += 1;
        if s.down {
            return Err(RuntimeError::Unreachable("fake engine is down".into()));
        }
        match s.fail_next.get_mut(op) {
            Some(errs) if !errs.is_empty() => Err(errs.remove(0)),
            _ => Ok(()),
        }
    }

    fn emit(&self, container: &ContainerId, kind: EventKind) {
        let (name, pooled) = match self.lock().containers.get(container) {
            // The fake knows no namespace here: any pool key makes a pooled container.
            Some((name, labels, ..)) => (Some(name.clone()), labels.keys().any(|k| k.ends_with(".pool"))),
            None => (None, false),
        };
        let _ = self.events.send(RuntimeEvent { container: container.clone(), kind, name, pooled });
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: &str) -> u64 {
        self.lock().calls.get(op).copied().unwrap_or(0)
    }

    /// Makes the next call(s) of `op` fail with `err`, once per queued error.
    pub fn fail_next(&self, op: &'static str, err: RuntimeError) {
        self.lock().fail_next.entry(op).or_default().push(err);
    }

    /// While `hold` is set, a sentinel is created and then waits, not started, until it is cleared (an engine
    /// slow to start containers).
    pub fn hold_sentinels(&self, hold: bool) {
        self.lock().hold_sentinels = hold;
    }

    /// Starts a created sentinel unless sentinels are held: whether it started.
    fn start_held_sentinel(&self, id: &ContainerId) -> Result<bool, RuntimeError> {
        let mut s = self.lock();
        if s.hold_sentinels {
            return Ok(false);
        }
        match s.containers.get_mut(id) {
            Some(c) => c.2 = ContainerState::Running,
            None => return Err(RuntimeError::NotFound(format!("sentinel {id} removed before its start"))),
        }
        Ok(true)
    }

    /// Sets the runtimes the engine reports as registered.
    pub fn set_runtimes(&self, names: &[&str]) {
        self.lock().runtimes = Some(names.iter().map(|&n| n.to_owned()).collect());
    }

    fn registered(&self) -> Vec<String> {
        let s = self.lock();
        s.runtimes.clone().unwrap_or_else(|| FAKE_RUNTIMES.map(str::to_owned).to_vec())
    }

    /// The runtime a container was created on (`None`: the engine's default, or no such container).
    pub fn runtime_of(&self, id: &ContainerId) -> Option<String> {
        self.lock().created_on.get(id).cloned().flatten()
    }

    /// Takes the engine down (every call fails as unreachable) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        self.down.send_replace(down);
    }

    /// Number of session containers (sentinels and claims not counted) in `state`, or all when `None`.
    pub fn count(&self, state: Option<ContainerState>) -> usize {
        self.lock().containers.values().filter(|c| !is_peer(c) && state.is_none_or(|s| c.2 == s)).count()
    }

    /// Ids of every session container (sentinels and claims not included).
    pub fn ids(&self) -> Vec<ContainerId> {
        self.lock().containers.iter().filter(|(_, c)| !is_peer(c)).map(|(id, _)| id.clone()).collect()
    }

    /// Adds a container as if someone else had created it.
    pub fn insert(&self, labels: HashMap<String, String>, state: ContainerState) -> ContainerId {
        let mut s = self.lock();
        s.next += 1;
        let id: ContainerId = format!("{:064x}", s.next).parse().unwrap_or_else(|_| unreachable!("hex id"));
        let name = format!("outside-{}", s.next);
        s.containers.insert(id.clone(), (name, labels, state, None));
        id
    }

    fn add(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        state: ContainerState,
    ) -> Result<ContainerId, RuntimeError> {
        let mut s = self.lock();
        if s.containers.values().any(|c| c.0 == name) {
            return Err(RuntimeError::Conflict(format!("name {name} in use")));
        }
        s.next += 1;
        let id: ContainerId = format!("{:064x}", s.next).parse().unwrap_or_else(|_| unreachable!("hex id"));
        s.containers.insert(id.clone(), (name.to_owned(), labels.clone().into_iter().collect(), state, None));
        Ok(id)
    }

    /// Ends a container's process as `docker kill` would, and emits `die`.
    pub fn kill(&self, id: &ContainerId, exit_code: i64) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.2 = ContainerState::Exited;
            c.3 = Some(exit_code);
        }
        self.emit(id, EventKind::Die);
    }

    /// Removes a container behind berth's back, and emits `destroy`.
    pub fn remove_outside(&self, id: &ContainerId) {
        self.lock().containers.remove(id);
        self.emit(id, EventKind::Destroy);
    }

    fn observed(
        ns: &LabelNamespace,
        id: &ContainerId,
        labels: &HashMap<String, String>,
        state: ContainerState,
        code: Option<i64>,
    ) -> Option<ObservedContainer> {
        let labels = ManagedLabels::parse(ns, labels).ok()??;
        Some(ObservedContainer {
            id: id.clone(),
            labels,
            state,
            exit_code: code,
            oom_killed: false,
            health: Health::Unknown,
            removal_requested: false,
        })
    }
}

impl Runtime for FakeRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.enter("ping")
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        self.enter("runtimes")?;
        Ok(self.registered())
    }

    async fn list(&self, ns: &LabelNamespace) -> Result<Vec<ObservedContainer>, RuntimeError> {
        self.enter("list")?;
        let s = self.lock();
        Ok(s.containers.iter().filter_map(|(id, (_, l, st, code))| Self::observed(ns, id, l, *st, *code)).collect())
    }

    async fn inspect(&self, ns: &LabelNamespace, id: &ContainerId) -> Result<Option<ObservedContainer>, RuntimeError> {
        self.enter("inspect")?;
        let s = self.lock();
        Ok(s.containers.get(id).and_then(|(_, l, st, code)| Self::observed(ns, id, l, *st, *code)))
    }

    async fn inspect_pooled(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
        id: &ContainerId,
    ) -> Result<Option<ListedPooled>, RuntimeError> {
        self.enter("inspect")?;
        let s = self.lock();
        Ok(s.containers.get(id).and_then(|(name, l, st, code)| {
            let labels = PoolLabels::parse(ns, l).ok()??;
            let claimed = ClaimedName::parse(prefix, name);
            Some(ListedPooled { id: id.clone(), labels, state: *st, exit_code: *code, claimed })
        }))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerId, RuntimeError> {
        self.enter("create")?;
        if let Some(rt) = spec.runtime.as_ref().filter(|rt| !self.registered().contains(rt)) {
            // Docker's answer: 400.
            return Err(RuntimeError::Rejected(format!("unknown or invalid runtime name: {rt}")));
        }
        let id = self.add(&spec.name, &spec.labels, ContainerState::Created)?;
        self.lock().created_on.insert(id.clone(), spec.runtime.clone());
        self.emit(&id, EventKind::Create);
        Ok(id)
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter("start")?;
        match self.lock().containers.get_mut(id) {
            Some(c) => c.2 = ContainerState::Running,
            None => return Err(RuntimeError::NotFound(id.to_string())),
        }
        self.emit(id, EventKind::Start);
        Ok(())
    }

    async fn stop(&self, id: &ContainerId, _grace: Duration) -> Result<(), RuntimeError> {
        self.enter("stop")?;
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.2 = ContainerState::Exited;
            c.3 = Some(143);
        }
        self.emit(id, EventKind::Die);
        Ok(())
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        self.enter("remove")?;
        let existed = self.lock().containers.remove(id).is_some();
        if existed {
            self.emit(id, EventKind::Destroy);
        }
        Ok(())
    }

    async fn attach(&self, id: &ContainerId, _history: bool) -> Result<AttachIo, RuntimeError> {
        self.enter("attach")?;
        if !self.lock().containers.contains_key(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        // The fake "shell" echoes its input.
        let (client, mut shell) = tokio::io::duplex(64 << 10);
        let (client_read, client_write) = tokio::io::split(client);
        drop(client_read);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = shell.read(&mut buf).await {
                if n == 0 || tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
        });
        let echoed = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(AttachIo {
            output: echoed.boxed(),
            input: Box::pin(client_write),
            resize: Box::new(|_, _| Box::pin(async { Ok(()) })),
        })
    }

    fn events(&self, _ns: &LabelNamespace) -> futures::stream::BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        if self.lock().down {
            return futures::stream::once(async { Err(RuntimeError::Unreachable("fake engine is down".into())) })
                .boxed();
        }
        // The stream ends when the engine goes down, as Docker's does.
        let mut down = self.down.subscribe();
        let gone = async move {
            let _ = down.wait_for(|d| *d).await;
        };
        BroadcastStream::new(self.events.subscribe())
            .filter_map(|e| async move { e.ok().map(Ok) })
            .take_until(Box::pin(gone))
            .boxed()
    }

    async fn list_peers(&self, ns: &LabelNamespace) -> Result<Vec<PeerContainer>, RuntimeError> {
        self.enter("list_peers")?;
        let s = self.lock();
        Ok(s.containers
            .iter()
            .filter_map(|(id, (_, l, st, _))| {
                let labels = PeerLabels::parse(ns, l).ok()??;
                Some(PeerContainer { id: id.clone(), labels, state: *st })
            })
            .collect())
    }

    async fn list_pool(&self, ns: &LabelNamespace, prefix: &str) -> Result<Vec<ListedPooled>, RuntimeError> {
        self.enter("list_pool")?;
        let s = self.lock();
        Ok(s.containers
            .iter()
            .filter_map(|(id, (name, l, st, code))| {
                let labels = PoolLabels::parse(ns, l).ok()??;
                let claimed = ClaimedName::parse(prefix, name);
                Some(ListedPooled { id: id.clone(), labels, state: *st, exit_code: *code, claimed })
            })
            .collect())
    }

    /// The fake keeps no output: every log is empty.
    async fn log_head(&self, _id: &ContainerId, _max: usize) -> Result<Vec<u8>, RuntimeError> {
        self.enter("logs")?;
        Ok(Vec::new())
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), RuntimeError> {
        self.enter("rename")?;
        let mut s = self.lock();
        if s.containers.values().any(|c| c.0 == name) {
            return Err(RuntimeError::Conflict(format!("the name {name} is already in use")));
        }
        match s.containers.get_mut(id) {
            Some(c) => c.0 = name.to_owned(),
            None => return Err(RuntimeError::NotFound(id.to_string())),
        }
        Ok(())
    }

    async fn create_marker(&self, spec: &MarkerSpec) -> Result<ContainerId, RuntimeError> {
        self.enter("create_marker")?;
        self.add(&spec.name, &spec.labels, ContainerState::Created)
    }

    /// The sentinel runs until it is killed or removed (`kill`, `remove_outside`): the fake has no process whose
    /// stdin could close, so dropping the guard leaves it running, like a `kill -9`'d replica's until its
    /// stream is noticed closed.
    async fn run_sentinel(&self, spec: &MarkerSpec) -> Result<Sentinel, RuntimeError> {
        self.enter("run_sentinel")?;
        let id = self.add(&spec.name, &spec.labels, ContainerState::Created)?;
        while !self.start_held_sentinel(&id)? {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every way a fake container stops or goes (kill, stop, remove, remove_outside) emits an event: the
        // sentinel looks again at each one, and sleeps in between, so paused-clock tests do not spin.
        let mut events = self.events.subscribe();
        let state = self.state.clone();
        let watched = id.clone();
        let ended = Box::pin(async move {
            loop {
                let running = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .containers
                    .get(&watched)
                    .is_some_and(|c| c.2 == ContainerState::Running);
                if !running {
                    return;
                }
                if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                    return;
                }
            }
        });
        Ok(Sentinel { id, ended })
    }
}
