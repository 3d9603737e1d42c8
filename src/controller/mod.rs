//! The controller loop: the single writer of desired and observed state. It re-plans on every desired-state
//! change, every Docker event, every action result and on a periodic resync, and hands actions to the
//! executor, one in flight per session, with per-session backoff.

mod audit;
mod dispatch;
mod grants;
mod handle;
mod inputs;
mod peers;
mod pool;
mod queue;
mod sessions;
mod store;
mod table;
mod version;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::admission::{Reject, admit};
use berth_reconciler::plan::{Plan, RemoveReason};
use berth_reconciler::startup::startup;
use berth_reconciler::{
    Action, Attachment, ContainerId, ContainerState, Desired, DesiredSession, EndReason, InstanceId, Phase, Policy,
    SessionId, Status, Timestamp, plan, resume_hash_matches, status_in, status_of,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

pub use dispatch::Deferred;
use dispatch::Key;
pub use grants::{Granted, JoinError, Joined, Presence, Present, Role, ShareError};
use handle::Command;
pub use handle::{
    Admission, Decision, Handle, OpenError, Readiness, ResumeError, SessionDetail, SessionInfo, SessionRequest, Ticket,
};
pub use store::ObservedStore;

use crate::executor::{AttachSink, Completed, Executor, Outcome, timed};
use crate::metrics::Metrics;
use crate::observer::{self, ObserverConfig, ObserverMsg};
use crate::runtime::{Runtime, RuntimeError};
use crate::terminal::{TerminalEvent, Terminals};

/// What the controller needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This replica's identity.
    pub instance: InstanceId,
    /// Fencing epoch stamped on new containers.
    pub epoch: u64,
    /// The audit log, when the policy keeps one.
    pub audit: Option<crate::recording::audit::AuditLog>,
}

/// What one full list found: the managed containers (claimed pooled ones included), the sentinels and claims,
/// and the pool when one is in play.
type ListResult = Result<
    (
        Vec<berth_reconciler::ObservedContainer>,
        Vec<berth_reconciler::peers::PeerContainer>,
        Option<Vec<berth_reconciler::pool::ListedPooled>>,
    ),
    RuntimeError,
>;

/// One full list: its generation, when it began, and what it found.
type Listed = (u64, Timestamp, ListResult);

/// Whether a full list is running, and whether another was asked for since it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Idle,
    InFlight,
    AgainAfter,
}

const COMMAND_QUEUE: usize = 1024;
/// Events queued between a session's data path and its recording's writer.
const RECORDING_QUEUE: usize = 1024;

/// The controller task's state.
pub struct Controller<R: Runtime> {
    runtime: R,
    executor: Executor<R>,
    policy_rx: watch::Receiver<Arc<Policy>>,
    policy: version::PolicyVersion,
    desired: Desired,
    observed: ObservedStore,
    table: table::SessionTable,
    grants: grants::Grants,
    gate: dispatch::Gate,
    queue: queue::AdmissionQueue,
    terminals: Terminals,
    audit: audit::AuditTrail,
    metrics: Arc<Metrics>,
    cmd_rx: mpsc::Receiver<Command>,
    done_tx: mpsc::Sender<Completed>,
    done_rx: mpsc::Receiver<Completed>,
    obs_rx: mpsc::Receiver<ObserverMsg>,
    term_rx: mpsc::Receiver<TerminalEvent>,
    list_tx: mpsc::Sender<Listed>,
    list_rx: mpsc::Receiver<Listed>,
    peers: peers::Peers,
    peer_tx: mpsc::Sender<peers::PeerEvent>,
    peer_rx: mpsc::Receiver<peers::PeerEvent>,
    pool: pool::PoolPart,
    pool_tx: mpsc::Sender<pool::PoolEvent>,
    pool_rx: mpsc::Receiver<pool::PoolEvent>,
    listing: Listing,
    ready_tx: watch::Sender<Readiness>,
    started: bool,
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
    shutdown_tx: watch::Sender<bool>,
    now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl<R: Runtime> std::fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("sessions", &self.desired.sessions.len()).finish_non_exhaustive()
    }
}

struct TerminalSink(Terminals);

impl AttachSink for TerminalSink {
    fn connect(&self, session: SessionId, io: crate::runtime::AttachIo) {
        self.0.connect(session, io);
    }

    fn wants_history(&self, session: SessionId) -> bool {
        self.0.get(&session).is_none_or(|t| t.end() == 0)
    }
}

/// Spawns the controller and its observer; returns the handle, the terminal registry, and the task.
pub fn spawn<R: Runtime>(
    runtime: R,
    cfg: ControllerConfig,
    policy_rx: watch::Receiver<Arc<Policy>>,
    metrics: Arc<Metrics>,
) -> (Handle, Terminals, tokio::task::JoinHandle<()>) {
    let policy = policy_rx.borrow().clone();
    metrics.set_capacity(policy.limits.max_sessions);
    // The pool's series, which an alert reads, exist from the start.
    for (name, p) in policy.profiles.iter().filter(|(_, p)| !p.pool.is_off()) {
        metrics.set_pool(name, p.pool.size, 0);
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (done_tx, done_rx) = mpsc::channel(COMMAND_QUEUE);
    let (obs_tx, obs_rx) = mpsc::channel(COMMAND_QUEUE);
    let (term_tx, term_rx) = mpsc::channel(COMMAND_QUEUE);
    let (list_tx, list_rx) = mpsc::channel(4);
    let (peer_tx, peer_rx) = mpsc::channel(64);
    let (pool_tx, pool_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ready_tx, ready_rx) = watch::channel(Readiness { policy_hash: policy.hash(), ..Readiness::default() });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let terminals = Terminals::new(term_tx, policy.server.replay_bytes);
    let expected = Arc::new(crate::expected::Expected::default());
    let executor = Executor::new(
        runtime.clone(),
        policy.docker.namespace.clone(),
        policy.reconcile.docker_timeout,
        policy.reconcile.concurrency,
        metrics.clone(),
        Arc::new(TerminalSink(terminals.clone())),
    )
    .with_expected(expected.clone());
    let mut desired = Desired::new(cfg.instance.clone());
    desired.epoch = cfg.epoch;
    // Nothing is created before this replica's sentinel runs (see `Desired::sentinel_up`).
    desired.sentinel_up = false;
    let obs_cfg = ObserverConfig {
        ns: policy.docker.namespace.clone(),
        prefix: policy.docker.name_prefix.clone(),
        timeout: policy.reconcile.docker_timeout,
        max_backoff: Duration::from_secs(5),
        expected,
    };
    tokio::spawn(
        observer::run(runtime.clone(), obs_cfg, obs_tx, metrics.clone(), shutdown_rx)
            .instrument(info_span!("observer", instance = %cfg.instance)),
    );
    let controller = Controller {
        runtime,
        executor,
        policy_rx,
        policy: version::PolicyVersion::new(policy),
        desired,
        observed: ObservedStore::default(),
        table: table::SessionTable::default(),
        grants: grants::Grants::default(),
        gate: dispatch::Gate::default(),
        queue: queue::AdmissionQueue::default(),
        terminals: terminals.clone(),
        audit: audit::AuditTrail::new(cfg.audit.clone()),
        metrics,
        cmd_rx,
        done_tx,
        done_rx,
        obs_rx,
        term_rx,
        list_tx,
        list_rx,
        peers: peers::Peers::default(),
        peer_tx,
        peer_rx,
        pool: pool::PoolPart::default(),
        pool_tx,
        pool_rx,
        listing: Listing::Idle,
        ready_tx,
        started: false,
        shutdown: None,
        shutdown_tx,
        now: Arc::new(crate::clock::now),
    };
    let span = info_span!("controller", instance = %cfg.instance);
    let task = tokio::spawn(controller.run().instrument(span));
    (Handle { tx: cmd_tx, ready: ready_rx }, terminals, task)
}

impl<R: Runtime> Controller<R> {
    async fn run(mut self) {
        let mut resync = tokio::time::interval(self.policy.reconcile.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => self.begin_shutdown(None),
                },
                Some(done) = self.done_rx.recv() => self.on_completed(done),
                Some(msg) = self.obs_rx.recv() => self.on_observer(msg),
                Some(ev) = self.term_rx.recv() => self.on_terminal(ev),
                Some((g, at, res)) = self.list_rx.recv() => self.on_listed(g, at, res),
                Some(ev) = self.peer_rx.recv() => self.on_peer_event(ev),
                Some(ev) = self.pool_rx.recv() => self.on_pool_event(ev),
                _ = resync.tick() => self.request_list(),
                Ok(()) = self.policy_rx.changed() => {
                    self.on_policy();
                    resync = tokio::time::interval(self.policy.reconcile.resync_interval);
                    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    resync.reset();
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            self.drain_ready();
            self.pass();
            if self.finished() {
                break;
            }
        }
        self.retire_sentinel().await;
        let _ = self.shutdown_tx.send(true);
        if let Some((reply, _)) = self.shutdown.take() {
            let _ = reply.send(());
        }
        info!("controller stopped");
    }

    /// Handles whatever else is already waiting, so one pass covers a burst.
    fn drain_ready(&mut self) {
        for _ in 0..512 {
            if let Ok(cmd) = self.cmd_rx.try_recv() {
                self.on_command(cmd);
            } else if let Ok(done) = self.done_rx.try_recv() {
                self.on_completed(done);
            } else if let Ok(msg) = self.obs_rx.try_recv() {
                self.on_observer(msg);
            } else if let Ok(ev) = self.term_rx.try_recv() {
                self.on_terminal(ev);
            } else if let Ok(ev) = self.peer_rx.try_recv() {
                self.on_peer_event(ev);
            } else if let Ok(ev) = self.pool_rx.try_recv() {
                self.on_pool_event(ev);
            } else {
                return;
            }
        }
    }

    fn now(&self) -> Timestamp {
        (self.now)()
    }

    fn next_wake(&self) -> Instant {
        let now_i = Instant::now();
        let mut wake = now_i + Duration::from_secs(3600);
        let now = self.now();
        for s in self.desired.sessions.values().filter(|s| s.ending.is_none()) {
            let timed = berth_reconciler::deadline::Timed::session(s);
            let mut due = berth_reconciler::deadline::deadline(&timed, &self.policy, now).wake(now);
            if s.container.is_some() && !self.observed.view().attached.contains(&s.id) {
                due = due.min(now.add(Duration::from_secs(1)));
            }
            wake = wake.min(now_i + due.since(now));
        }
        if let Some(t) = self.queue.next_deadline() {
            wake = wake.min(t);
        }
        if let Some(due) = self.pool.refill_due(now) {
            wake = wake.min(now_i + due.since(now));
        }
        if let Some(t) = self.gate.next_wake(now_i) {
            wake = wake.min(t);
        }
        if let Some((_, deadline)) = &self.shutdown {
            wake = wake.min(*deadline);
        }
        if let Some(retry) = self.peers.retry_at() {
            wake = wake.min(retry);
        }
        // Only while it lies ahead: once passed, readiness has turned and nothing more is due (no hot loop).
        if let Some(until) = self.peers.ready_until(peers::sentinel_grace(&self.policy)).filter(|t| *t > now_i) {
            wake = wake.min(until);
        }
        wake.max(now_i + Duration::from_millis(5))
    }

    fn record(&mut self, session: SessionId, kind: &'static str, detail: String) {
        let at = self.now().as_millis();
        self.table.record(session, Decision { at, kind, detail });
    }

    fn publish_readiness(&self) {
        let up = self.metrics.docker_up();
        self.ready_tx.send_if_modified(|r| {
            let next = Readiness {
                docker_up: up,
                listed: self.observed.is_listed(),
                sentinel: self.peers.sentinel_ready(peers::sentinel_grace(&self.policy)),
                draining: self.desired.draining,
                policy_hash: self.policy.hash().to_owned(),
            };
            if *r == next {
                false
            } else {
                *r = next;
                true
            }
        });
    }

    // ----- inputs -----

    fn on_policy(&mut self) {
        let p = self.policy_rx.borrow_and_update().clone();
        self.executor.reconfigure(p.reconcile.docker_timeout, p.reconcile.concurrency);
        self.terminals.set_ring_bytes(p.server.replay_bytes);
        self.metrics.set_capacity(p.limits.max_sessions);
        self.policy = version::PolicyVersion::new(p);
        info!(policy = %self.policy.hash(), "policy applied");
        self.publish_readiness();
    }

    fn begin_shutdown(&mut self, reply: Option<oneshot::Sender<()>>) {
        if self.shutdown.is_some() {
            if let Some(r) = reply {
                let _ = r.send(());
            }
            return;
        }
        info!(mode = ?self.policy.reconcile.shutdown, "draining");
        self.desired.draining = true;
        for w in self.queue.drain() {
            let _ = w.reply.send(Err(OpenError::Draining));
        }
        if self.policy.reconcile.shutdown == berth_reconciler::policy::ShutdownMode::Remove {
            for s in self.desired.sessions.values_mut().filter(|s| s.ending.is_none()) {
                s.ending = Some(EndReason::Shutdown);
            }
        }
        let deadline = Instant::now() + self.policy.reconcile.shutdown_grace;
        let (tx, rx) = oneshot::channel();
        self.shutdown = Some((reply.unwrap_or(tx), deadline));
        drop(rx);
        self.publish_readiness();
    }

    fn finished(&self) -> bool {
        let Some((_, deadline)) = &self.shutdown else {
            return false;
        };
        if Instant::now() >= *deadline {
            warn!(in_flight = self.gate.in_flight(), "shutdown grace ran out");
            return true;
        }
        let removing = self.policy.reconcile.shutdown == berth_reconciler::policy::ShutdownMode::Remove;
        if self.pool.busy() {
            // Fills, claims and pool removals in flight finish first.
            return false;
        }
        self.gate.in_flight() == 0
            && !(removing && self.peers.removing())
            && (!removing || self.desired.sessions.is_empty() || !self.observed.is_listed())
    }

    // ----- the pass -----

    fn pass(&mut self) {
        if !self.observed.is_listed() {
            return;
        }
        let started = Instant::now();
        let now = self.now();
        if !self.started {
            self.apply_startup(now);
        }
        self.tend_sentinel();
        self.take_over(now);
        if self.desired.draining && self.policy.reconcile.shutdown == berth_reconciler::policy::ShutdownMode::Remove {
            self.remove_stranded(RemoveReason::Orphan);
        }
        for s in self.desired.sessions.values_mut() {
            if let Some(t) = self.terminals.get(&s.id) {
                s.last_activity = s.last_activity.max(t.last_activity());
            }
        }
        let Plan { actions, ends } = plan(&self.desired, self.observed.view(), &self.policy, now);
        for (id, reason) in ends {
            if let Some(s) = self.desired.sessions.get_mut(&id)
                && s.ending.is_none()
            {
                info!(session = %id, reason = %reason, "session ending");
                self.metrics.session_ended(&reason);
                s.ending = Some(reason.clone());
                self.record(id, "ended", reason.to_string());
            }
        }
        for action in actions {
            self.dispatch(action);
        }
        self.pool_pass(now);
        self.publish_statuses();
        self.publish_readiness();
        self.admit_waiters();
        self.update_gauges();
        self.metrics.reconcile_pass(started.elapsed());
    }

    fn apply_startup(&mut self, now: Timestamp) {
        self.started = true;
        let mut s = startup(&self.desired, self.observed.view(), &self.policy, now);
        if self.policy.reconcile.startup == berth_reconciler::policy::StartupMode::RemoveAll {
            self.add_stranded(&mut s.remove);
        }
        info!(
            mode = ?self.policy.reconcile.startup,
            adopted = s.adopted.len(),
            removing = s.remove.len(),
            "startup: containers from an earlier run"
        );
        for session in s.adopted {
            let id = session.id;
            self.desired.sessions.insert(id, session);
            self.table.track(id);
            self.record(id, "observed", "adopted from an earlier run; detached".into());
        }
        if !s.remove.is_empty() {
            self.dispatch(Action::BulkRemove { containers: s.remove, reason: RemoveReason::Startup });
        }
    }

    fn dispatch(&mut self, mut action: Action) {
        let now = Instant::now();
        if let Action::BulkRemove { containers, .. } = &mut action {
            self.gate.narrow(containers, now);
            if containers.is_empty() {
                return;
            }
        }
        let keys = Key::of(&action);
        if let Err(why) = self.gate.check(&keys, now) {
            self.metrics.deferred(why);
            return;
        }
        if matches!(action, Action::Remove { .. } | Action::BulkRemove { .. }) {
            for c in action.containers() {
                self.observed.set_removal_requested(c, true);
            }
        }
        if let Action::Attach { session, .. } = &action {
            self.plan_recording(*session);
        }
        if let Some(s) = action.session() {
            let detail = match &action {
                Action::Remove { container, reason, .. } => {
                    format!("remove {} ({})", container.short(), reason.as_str())
                }
                Action::Attach { container, .. } => format!("attach {}", container.short()),
                Action::Start { container, .. } => format!("start {}", container.short()),
                Action::Stop { container, .. } => format!("stop {}", container.short()),
                Action::Create { spec, .. } => format!("create {} from {}", spec.name, spec.image),
                Action::BulkRemove { .. } => "bulk remove".into(),
            };
            self.record(s, "planned", detail);
        }
        self.gate.begin(keys);
        let exec = self.executor.clone();
        let tx = self.done_tx.clone();
        let span = info_span!("action", action = action.kind().as_str(), session = ?action.session());
        tokio::spawn(
            async move {
                let done = exec.run(action).await;
                let _ = tx.send(done).await;
            }
            .instrument(span),
        );
    }

    /// Tells the terminal how `session` is recorded, as its profile says, before its terminal is attached.
    fn plan_recording(&self, session: SessionId) {
        if let Some(s) = self.desired.sessions.get(&session) {
            self.plan_recording_as(session, &s.profile);
        }
    }

    /// [`Controller::plan_recording`] for a session of `profile` (also one not yet in the desired state: a claim
    /// of a pooled container, whose stream reaches the terminal without an attach action).
    pub(super) fn plan_recording_as(&self, session: SessionId, profile_name: &berth_reconciler::ProfileName) {
        let Some(profile) = self.policy.profiles.get(profile_name) else { return };
        let rec = profile.recording;
        let mode = match rec.mode {
            berth_reconciler::policy::RecordingMode::Off => return,
            berth_reconciler::policy::RecordingMode::BestEffort => crate::recording::RecordingMode::BestEffort,
            berth_reconciler::policy::RecordingMode::Required => crate::recording::RecordingMode::Required,
        };
        let Some(dir) = self.policy.recordings.dir.clone() else { return };
        let config = crate::recording::RecorderConfig {
            dir,
            mode,
            input: rec.input,
            max_bytes: rec.max_bytes,
            queue: RECORDING_QUEUE,
            metrics: Some(self.metrics.clone()),
        };
        self.terminals
            .plan_recording(session, crate::terminal::RecordingPlan { config, title: Some(profile_name.to_string()) });
    }

    /// Each session's containers (those this instance manages), indexed once per pass.
    fn containers_by_session(&self) -> HashMap<SessionId, Vec<&berth_reconciler::ObservedContainer>> {
        let mut by: HashMap<SessionId, Vec<&berth_reconciler::ObservedContainer>> = HashMap::new();
        for c in self.observed.view().containers.values().filter(|c| self.desired.manages(&c.labels)) {
            by.entry(c.labels.session).or_default().push(c);
        }
        by
    }

    fn status(&self, s: &DesiredSession, by: &HashMap<SessionId, Vec<&berth_reconciler::ObservedContainer>>) -> Status {
        let mine = by.get(&s.id).map(Vec::as_slice).unwrap_or_default();
        status_in(s, mine, self.observed.view().attached.contains(&s.id))
    }

    fn publish_statuses(&mut self) {
        let by = self.containers_by_session();
        let mut gone = Vec::new();
        for s in self.desired.sessions.values() {
            let st = self.status(s, &by);
            if st.phase == Phase::Gone && !self.gate.busy(&Key::Session(s.id)) {
                gone.push(s.id);
            }
            self.table.publish(&s.id, st);
        }
        drop(by);
        for id in gone {
            if let Some(s) = self.desired.sessions.remove(&id) {
                let term = self.terminals.get(&id);
                self.audit.ended(&s, term.as_deref(), &self.metrics);
            }
            self.forget_grants(&id);
            self.table.forget(&id);
            self.gate.succeeded(&Key::Session(id));
            self.terminals.forget(&id);
            debug!(session = %id, "session gone");
        }
    }

    fn update_gauges(&self) {
        let view = self.observed.view();
        let mut phases: HashMap<Phase, i64> = Phase::ALL.iter().map(|p| (*p, 0)).collect();
        let by = self.containers_by_session();
        for s in self.desired.sessions.values() {
            *phases.entry(self.status(s, &by).phase).or_default() += 1;
        }
        for (p, n) in phases {
            self.metrics.set_sessions(p, n);
        }
        let mut states: HashMap<ContainerState, i64> = ContainerState::ALL.iter().map(|s| (*s, 0)).collect();
        let mut drift = 0;
        for c in view.containers.values().filter(|c| self.desired.manages(&c.labels)) {
            *states.entry(c.state).or_default() += 1;
            if let Some(h) = self.policy.profile_hash(&c.labels.profile)
                && h != c.labels.policy_hash
                && c.state == ContainerState::Running
            {
                drift += 1;
            }
        }
        for (s, n) in states {
            self.metrics.set_containers(s, n);
        }
        self.metrics.set_drifted(drift);
    }
}
