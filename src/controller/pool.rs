//! The controller's warm pool (decision 0025): it lists pooled containers with each full list, fills the pool
//! (create, attach, start, then wait for the launcher to say it waits), removes what `plan_pool` says, and claims
//! a ready container for a new session (rename, settings line, the held stream handed to the terminals).
//!
//! The controller loop stays the single writer: every task reports back through `PoolEvent`, and a container is
//! marked claimed, and its stream taken, before the claim task starts, so no container is handed out twice.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_reconciler::desired::DesiredSession;
use berth_reconciler::ids::ProfileName;
use berth_reconciler::pool::{
    LauncherVersion, ListedPooled, PoolAction, PoolRemoveReason, PoolView, PooledContainer, REFILL_QUIET, choose,
    counts, plan_pool, pooled_spec, settings_line, startup_pool,
};
use berth_reconciler::{ClaimedName, Health, ObservedContainer, PoolLabels};

mod stream;

use stream::Waiting;

use super::*;
use crate::runtime::DockerOp;

/// What a pool task reports back to the loop.
#[derive(Debug)]
pub(super) enum PoolEvent {
    /// A fill finished: a container whose launcher waits, with its held stream, or the reason it failed.
    Filled { profile: ProfileName, result: Result<(ContainerId, PoolLabels, Waiting), RuntimeError> },
    /// An earlier run's container was attached again (or removed, when that failed).
    Adopted { container: ContainerId, labels: PoolLabels, result: Result<Waiting, RuntimeError> },
    /// A pooled container was removed (or was already gone).
    Removed { container: ContainerId, result: Result<(), RuntimeError> },
    /// A claim finished: the container is the session's, its stream with the terminals.
    Claimed { session: SessionId, container: ContainerId, result: Result<(), RuntimeError> },
}

/// A container whose launcher waits.
struct Ready {
    labels: PoolLabels,
    waiting: Waiting,
    state: ContainerState,
}

/// The pool's state in the controller.
#[derive(Default)]
pub(super) struct PoolPart {
    /// The pool has been listed since berth started: nothing is planned before.
    listed: bool,
    /// When this run started: a pooled container older than this without a stream is an earlier run's.
    started_at: Option<Timestamp>,
    /// Unclaimed pooled containers of this replica from the last list.
    last_list: Vec<ListedPooled>,
    ready: HashMap<ContainerId, Ready>,
    /// Fills in flight, per profile.
    creating: BTreeMap<ProfileName, usize>,
    removing: HashSet<ContainerId>,
    /// Claimed by this run: never the pool's again.
    claimed: HashSet<ContainerId>,
    /// When a session last claimed a container: refills wait a moment after it ([`REFILL_QUIET`]).
    last_claim: Option<Timestamp>,
    claiming: usize,
    /// An earlier run's containers being attached again.
    adopting: HashSet<ContainerId>,
    /// Where the launcher was installed, once it was.
    launcher: Option<String>,
    /// Profiles whose pool series the metrics show.
    reported: Vec<ProfileName>,
}

impl std::fmt::Debug for PoolPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolPart").field("ready", &self.ready.len()).field("creating", &self.creating).finish()
    }
}

impl PoolPart {
    /// Whether the pool has anything to do or to finish: a profile asks for one, or containers are in play.
    pub(super) fn active(&self, policy: &Policy) -> bool {
        policy.profiles.values().any(|p| !p.pool.is_off())
            || !self.ready.is_empty()
            || !self.last_list.is_empty()
            || !self.claimed.is_empty()
    }

    /// Whether a full list also lists the pool: while one is in play, and always until the first pass after a
    /// start has seen what an earlier run left (a pool since removed from the policy included).
    pub(super) fn lists(&self, policy: &Policy) -> bool {
        self.started_at.is_none() || self.active(policy)
    }

    /// Tasks of the pool still running: shutdown waits for them.
    /// When the pool next has to look at its refills: the end of the quiet after the last claim, while ahead.
    pub(super) fn refill_due(&self, now: Timestamp) -> Option<Timestamp> {
        self.last_claim.map(|t| t.add(REFILL_QUIET)).filter(|t| *t > now)
    }

    pub(super) fn busy(&self) -> bool {
        self.creating.values().sum::<usize>() > 0
            || !self.removing.is_empty()
            || self.claiming > 0
            || !self.adopting.is_empty()
    }

    fn view(&self, desired: &Desired, owner_sessions: usize) -> PoolView {
        let mut containers = BTreeMap::new();
        for (id, r) in &self.ready {
            let c = PooledContainer {
                id: id.clone(),
                labels: r.labels.clone(),
                state: r.state,
                attached: true,
                waiting: true,
                claimed_by: None,
                removal_requested: self.removing.contains(id),
            };
            containers.insert(id.clone(), c);
        }
        PoolView {
            listed: self.listed,
            containers,
            creating: self.creating.clone(),
            sessions: owner_sessions,
            draining: desired.draining,
            sentinel_up: desired.sentinel_up,
            last_claim: self.last_claim,
            // Set by the pass that plans fills (`Controller::starting_sessions`).
            starting: 0,
        }
    }
}

impl<R: Runtime> Controller<R> {
    /// A claimed container as the session container the session planner and the store know.
    pub(super) fn claimed_observed(c: &ListedPooled, name: &ClaimedName) -> ObservedContainer {
        ObservedContainer {
            id: c.id.clone(),
            labels: name.managed_labels(&c.labels),
            state: c.state,
            exit_code: c.exit_code,
            oom_killed: false,
            health: Health::Unknown,
            removal_requested: false,
        }
    }

    pub(super) fn on_pool_event(&mut self, ev: PoolEvent) {
        match ev {
            PoolEvent::Filled { profile, result } => {
                if let Some(n) = self.pool.creating.get_mut(&profile) {
                    *n = n.saturating_sub(1);
                }
                match result {
                    Ok((id, labels, waiting)) => {
                        debug!(container = %id.short(), profile = %profile, "pooled container waits");
                        self.metrics.pool_refilled(self.now().since(labels.created_at));
                        self.pool.ready.insert(id, Ready { labels, waiting, state: ContainerState::Running });
                    }
                    Err(e) => {
                        warn!(profile = %profile, error = %e, "pool fill failed");
                        // The next fill installs the launcher again, in case the file went (a temp cleaner).
                        self.pool.launcher = None;
                    }
                }
            }
            PoolEvent::Adopted { container, labels, result } => {
                self.pool.adopting.remove(&container);
                if let Some(n) = self.pool.creating.get_mut(&labels.profile) {
                    *n = n.saturating_sub(1);
                }
                match result {
                    Ok(waiting) => {
                        info!(
                            container = %container.short(),
                            profile = %labels.profile,
                            launcher = ?waiting.launcher,
                            "pooled container adopted"
                        );
                        self.pool.ready.insert(container, Ready { labels, waiting, state: ContainerState::Running });
                    }
                    Err(e) => {
                        warn!(container = %container.short(), error = %e, "pooled container not adopted; removed");
                        self.metrics.pool_removed(PoolRemoveReason::Failed);
                        // `adopt` removed it: the next pass must not remove (and count) it again from the list.
                        self.pool.last_list.retain(|c| c.id != container);
                    }
                }
            }
            PoolEvent::Removed { container, result } => {
                self.pool.removing.remove(&container);
                if let Err(e) = result {
                    warn!(container = %container.short(), error = %e, "pooled container removal failed");
                }
                self.pool.last_list.retain(|c| c.id != container);
            }
            PoolEvent::Claimed { session, container, result } => {
                self.pool.claiming = self.pool.claiming.saturating_sub(1);
                let keys = [Key::Session(session), Key::Container(container.clone())];
                self.gate.end(&keys);
                match result {
                    Ok(()) => {
                        self.gate.succeeded(&Key::Session(session));
                        self.observed.set_attached(session, true);
                        self.record(session, "outcome", format!("claimed pooled {}", container.short()));
                    }
                    Err(e) => {
                        // The container may hold a launcher that never got its settings: it serves nobody.
                        warn!(session = %session, container = %container.short(), error = %e, "claim failed");
                        self.record(session, "outcome", format!("claim of {} failed: {e}", container.short()));
                        self.observed.remove(&container);
                        if let Some(s) = self.desired.sessions.get_mut(&session) {
                            s.container = None;
                        }
                        self.remove_pooled(container, PoolRemoveReason::Failed);
                    }
                }
            }
        }
    }

    /// The unclaimed pooled containers a full list found (claimed ones went into the session list).
    pub(super) fn on_pool_listed(&mut self, list: Vec<ListedPooled>) {
        let owner = self.desired.owner.clone();
        // A dead replica's pool (or this one's, from epochs another replica has claimed) is the claimer's to
        // remove: nobody else would (each replica keeps its own pool).
        let taken: Vec<ContainerId> = list
            .iter()
            .filter(|c| c.claimed.is_none())
            .filter(|c| {
                let (o, e) = (&c.labels.owner, c.labels.epoch);
                if *o == owner { false } else { self.desired.claimed.get(o).is_some_and(|through| e <= *through) }
            })
            .map(|c| c.id.clone())
            .collect();
        for id in taken {
            self.remove_pooled(id, PoolRemoveReason::DeadPeer);
        }
        let disowned = self.desired.disowned_through;
        let mut unclaimed = Vec::new();
        for c in list
            .into_iter()
            .filter(|c| c.labels.owner == owner && c.claimed.is_none() && disowned.is_none_or(|e| c.labels.epoch > e))
        {
            if let Some(r) = self.pool.ready.get_mut(&c.id) {
                r.state = c.state;
            }
            unclaimed.push(c);
        }
        self.pool.last_list = unclaimed;
        self.pool.listed = true;
    }

    fn remove_pooled(&mut self, container: ContainerId, reason: PoolRemoveReason) {
        if !self.pool.removing.insert(container.clone()) {
            return;
        }
        self.pool.ready.remove(&container);
        self.metrics.pool_removed(reason);
        debug!(container = %container.short(), reason = reason.as_str(), "removing pooled container");
        let (rt, metrics, tx) = (self.runtime.clone(), self.metrics.clone(), self.pool_tx.clone());
        let timeout = self.policy.reconcile.docker_timeout;
        tokio::spawn(
            async move {
                let result = timed(&metrics, DockerOp::Remove, timeout, rt.remove(&container)).await;
                let _ = tx.send(PoolEvent::Removed { container, result }).await;
            }
            .instrument(info_span!("pool_remove")),
        );
    }

    /// One pass over the pool, after the session pass.
    pub(super) fn pool_pass(&mut self, now: Timestamp) {
        if !self.pool.listed {
            return;
        }
        let started_at = match self.pool.started_at {
            Some(t) => t,
            None => {
                self.pool.started_at = Some(now);
                self.pool_startup(now);
                now
            }
        };
        // An earlier run's unclaimed containers have no stream here: they are replaced, not adopted.
        let stale: Vec<ContainerId> = self
            .pool
            .last_list
            .iter()
            .filter(|c| {
                !self.pool.ready.contains_key(&c.id)
                    && !self.pool.claimed.contains(&c.id)
                    && !self.pool.adopting.contains(&c.id)
            })
            .filter(|c| {
                c.labels.created_at < started_at
                    || matches!(c.state, ContainerState::Exited | ContainerState::Dead)
                        && now >= c.labels.created_at.add(self.policy.reconcile.start_timeout)
            })
            .map(|c| c.id.clone())
            .collect();
        for id in stale {
            self.remove_pooled(id, PoolRemoveReason::Failed);
        }
        let view = self.observed.view();
        self.pool.claimed.retain(|c| view.containers.contains_key(c));
        let sessions = self.desired.sessions.values().filter(|s| s.ending.is_none()).count();
        let mut view = self.pool.view(&self.desired, sessions);
        view.starting = self.starting_sessions(now);
        for action in plan_pool(&view, &self.policy, now) {
            match action {
                PoolAction::Fill { profile, count } => self.fill(&profile, count, now),
                PoolAction::Remove { container, reason } => self.remove_pooled(container, reason),
                // Every container in the view holds its stream and runs: nothing to attach or start.
                PoolAction::Attach { .. } | PoolAction::Start { .. } => {}
            }
        }
        let counts = counts(&self.pool.view(&self.desired, sessions), &self.policy, now);
        for (profile, (ready, _)) in &counts {
            let size = self.policy.profiles.get(profile).map_or(0, |p| p.pool.size);
            self.metrics.set_pool(profile, size, *ready);
        }
        for gone in self.pool.reported.iter().filter(|p| !counts.contains_key(*p)) {
            self.metrics.forget_pool(gone);
        }
        self.pool.reported = counts.into_keys().collect();
    }

    /// The first pass after a start: the earlier run's unclaimed containers are kept (attached again) or removed
    /// as `reconcile.startup` says ([`startup_pool`]).
    fn pool_startup(&mut self, now: Timestamp) {
        let owner = self.desired.owner.clone();
        let s = startup_pool(&self.pool.last_list, &owner, &self.policy, now);
        info!(mode = ?self.policy.reconcile.startup, adopting = s.adopt.len(), removing = s.remove.len(), "startup: an earlier run's pool");
        for id in s.remove {
            self.remove_pooled(id, PoolRemoveReason::Startup);
        }
        for id in s.adopt {
            let Some(labels) = self.pool.last_list.iter().find(|c| c.id == id).map(|c| c.labels.clone()) else {
                continue;
            };
            self.pool.adopting.insert(id.clone());
            *self.pool.creating.entry(labels.profile.clone()).or_default() += 1;
            let (rt, metrics, tx) = (self.runtime.clone(), self.metrics.clone(), self.pool_tx.clone());
            let timeout = self.policy.reconcile.docker_timeout;
            let wait = self.policy.reconcile.start_timeout;
            tokio::spawn(
                async move {
                    let result = stream::adopt(rt, id.clone(), metrics, timeout, wait).await;
                    let _ = tx.send(PoolEvent::Adopted { container: id, labels, result }).await;
                }
                .instrument(info_span!("pool_adopt")),
            );
        }
    }

    fn fill(&mut self, profile: &ProfileName, count: usize, now: Timestamp) {
        let Some(p) = self.policy.profiles.get(profile).cloned() else { return };
        // Refills share the engine with sessions: no more of them in flight than the executor's concurrency.
        let in_flight: usize = self.pool.creating.values().sum();
        let count = count.min(self.policy.reconcile.concurrency.saturating_sub(in_flight));
        let launcher = match &self.pool.launcher {
            Some(path) => path.clone(),
            None => match crate::launcher::install(&crate::launcher::default_dir()) {
                Ok(path) => self.pool.launcher.insert(path.display().to_string()).clone(),
                Err(e) => {
                    warn!(error = %e, "cannot install the pool's launcher; no pool");
                    return;
                }
            },
        };
        for _ in 0..count {
            let labels = PoolLabels {
                profile: profile.clone(),
                owner: self.desired.owner.clone(),
                epoch: self.desired.epoch,
                created_at: now,
                policy_hash: p.hash(),
            };
            let mut nonce = [0u8; 8];
            if getrandom::fill(&mut nonce).is_err() {
                return;
            }
            let Some(spec) = pooled_spec(&p, &labels, &self.policy, u64::from_be_bytes(nonce), &launcher) else {
                return;
            };
            *self.pool.creating.entry(profile.clone()).or_default() += 1;
            let (rt, metrics, tx) = (self.runtime.clone(), self.metrics.clone(), self.pool_tx.clone());
            let timeout = self.policy.reconcile.docker_timeout;
            let wait = self.policy.reconcile.start_timeout;
            let profile = profile.clone();
            tokio::spawn(
                async move {
                    let result = stream::fill(rt, spec, metrics, timeout, wait).await.map(|(id, io)| (id, labels, io));
                    let _ = tx.send(PoolEvent::Filled { profile, result }).await;
                }
                .instrument(info_span!("pool_fill")),
            );
        }
    }

    /// Claims a ready pooled container for a session just admitted, if its profile has one: the container is
    /// the session's from here on. Its launcher sets the terminal to `size` when it can. Returns whether it did.
    pub(super) fn claim_pooled(&mut self, session: &mut DesiredSession, size: Option<(u16, u16)>) -> bool {
        let now = self.now();
        let sessions = self.desired.sessions.values().filter(|s| s.ending.is_none()).count();
        let view = self.pool.view(&self.desired, sessions);
        let pooled = self.policy.profiles.get(&session.profile).is_some_and(|p| !p.pool.is_off());
        let Some(chosen) = choose(&view, &session.profile, &self.policy, now).map(|c| c.id.clone()) else {
            if pooled {
                self.metrics.pool_miss(&session.profile);
            }
            return false;
        };
        self.metrics.pool_claim(&session.profile);
        self.pool.last_claim = Some(now);
        let Some(ready) = self.pool.ready.remove(&chosen) else { return false };
        self.pool.claimed.insert(chosen.clone());
        let name = ClaimedName { session: session.id, kind: session.kind, resume_hash: session.resume_hash.clone() };
        let listed = ListedPooled {
            id: chosen.clone(),
            labels: ready.labels.clone(),
            state: ContainerState::Running,
            exit_code: None,
            claimed: Some(name.clone()),
        };
        self.observed.upsert(Self::claimed_observed(&listed, &name));
        session.container = Some(chosen.clone());
        let keys = vec![Key::Session(session.id), Key::Container(chosen.clone())];
        self.gate.begin(keys);
        self.pool.claiming += 1;
        // The claim's stream reaches the terminal without an attach action: plan the recording here.
        self.plan_recording_as(session.id, &session.profile);
        // An earlier launcher (adopted after an upgrade) takes no size: the first resize sets it, as for a cold one.
        let size = size.filter(|_| ready.waiting.launcher >= LauncherVersion::V2);
        let line = settings_line(&session.env, size);
        let new_name = name.render(&self.policy.docker.name_prefix);
        let (rt, metrics, tx) = (self.runtime.clone(), self.metrics.clone(), self.pool_tx.clone());
        let terminals = self.terminals.clone();
        let timeout = self.policy.reconcile.docker_timeout;
        let (id, container) = (session.id, chosen);
        tokio::spawn(
            async move {
                let result = async {
                    let io =
                        stream::hand_over(&rt, &metrics, timeout, &container, &new_name, ready.waiting, &line).await?;
                    // Output reaches the client only after `ready`, which follows the rename: a client never
                    // holds a session whose container the engine does not name as its.
                    if let Some(size) = size {
                        terminals.sized_by_launcher(id, size);
                    }
                    terminals.connect(id, io);
                    Ok(())
                }
                .await;
                let _ = tx.send(PoolEvent::Claimed { session: id, container, result }).await;
            }
            .instrument(info_span!("pool_claim", session = %session.id)),
        );
        true
    }

    /// Sessions admitted within the start timeout whose container does not run attached yet: the cold starts
    /// clients wait for, which no refill may slow.
    fn starting_sessions(&self, now: Timestamp) -> usize {
        let view = self.observed.view();
        let since = now.sub(self.policy.reconcile.start_timeout);
        let running = |c: &ContainerId| view.containers.get(c).is_some_and(|c| c.state == ContainerState::Running);
        self.desired
            .sessions
            .values()
            .filter(|s| s.ending.is_none() && s.created_at >= since)
            .filter(|s| !(s.container.as_ref().is_some_and(running) && view.attached.contains(&s.id)))
            .count()
    }
}
