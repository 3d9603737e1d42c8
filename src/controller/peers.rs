//! The controller's side of several replicas on one engine: this replica's sentinel, its view of its peers'
//! sentinels and claims, takeover of dead peers (claim, then adopt or remove), and fencing when another replica
//! has taken this one over. The decisions are `berth_reconciler::peers`; this module runs them.

use std::collections::{BTreeMap, BTreeSet};

use berth_reconciler::peers::{self as pure, PeerContainer, claim_labels, claim_spec, sentinel_spec};
use berth_reconciler::policy::OnDeadPeer;
use berth_reconciler::startup::adopted_session;

use super::*;
use crate::metrics::TakeoverResult;

/// How soon a lost sentinel is replaced.
const SENTINEL_RETRY: Duration = Duration::from_secs(1);

/// How long a replica stays ready while its lost sentinel is being replaced: half the lease, at most 10 s.
pub(super) fn sentinel_grace(policy: &Policy) -> Duration {
    (policy.peers.lease_timeout / 2).min(Duration::from_secs(10))
}

/// This replica's sentinel.
#[derive(Debug, Default)]
pub(super) enum SentinelState {
    /// None yet (before the first list).
    #[default]
    None,
    /// Being created.
    Starting,
    /// Running; the task holding its stdin stops it when `stop` is sent or dropped.
    Up { id: ContainerId, stop: Option<oneshot::Sender<()>> },
    /// Stopped or failed; replaced at `retry`.
    Lost { retry: Instant },
}

/// What a peer task reports.
#[derive(Debug)]
pub(super) enum PeerEvent {
    SentinelUp { id: ContainerId, stop: oneshot::Sender<()> },
    SentinelFailed(RuntimeError),
    SentinelEnded(ContainerId),
    Claimed { dead: InstanceId, through: u64, result: Result<PeerContainer, RuntimeError> },
    PeerBack { dead: InstanceId },
    Removed { id: ContainerId, result: Result<(), RuntimeError> },
}

/// The peer view and what is in flight about it.
#[derive(Debug, Default)]
pub(super) struct Peers {
    /// Sentinels and claims from the last list, plus claims this replica created since.
    pub records: Vec<PeerContainer>,
    /// Claims this replica created: kept until it removes them, whatever a list that raced the create says.
    held: BTreeMap<ContainerId, PeerContainer>,
    /// When each peer was first seen down.
    down_since: BTreeMap<InstanceId, Timestamp>,
    pub sentinel: SentinelState,
    claiming: BTreeSet<InstanceId>,
    removing: BTreeSet<ContainerId>,
    /// Since when no sentinel has run, after one failed to start or stopped (`None`: running, or the very first
    /// start).
    lost_at: Option<Instant>,
    /// Void claims on this replica already refused (counted once each); only those still listed are kept.
    refused: BTreeSet<ContainerId>,
}

impl Peers {
    fn sentinel_id(&self) -> Option<&ContainerId> {
        match &self.sentinel {
            SentinelState::Up { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether sentinel or claim removals are under way.
    pub(super) fn removing(&self) -> bool {
        !self.removing.is_empty()
    }

    pub(super) fn sentinel_up(&self) -> bool {
        matches!(self.sentinel, SentinelState::Up { .. })
    }

    /// Whether the replica may report ready: its sentinel runs, is being started for the first time, or was lost
    /// less than `grace` ago and is being replaced. Peers take nothing over before a whole lease, so a short gap
    /// need not turn clients away; a sentinel that stays away (a missing image, a broken engine) does.
    pub(super) fn sentinel_ready(&self, grace: Duration) -> bool {
        self.sentinel_up() || self.lost_at.is_none_or(|t| t.elapsed() < grace)
    }

    /// When readiness would turn false if no sentinel runs by then.
    pub(super) fn ready_until(&self, grace: Duration) -> Option<Instant> {
        self.lost_at.filter(|_| !self.sentinel_up()).map(|t| t + grace)
    }

    /// When the sentinel should next be retried, if it is lost.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        match self.sentinel {
            SentinelState::Lost { retry } => Some(retry),
            _ => None,
        }
    }
}

impl<R: Runtime> Controller<R> {
    /// Folds a fresh list of sentinels and claims in and acts on it: epoch at startup, fencing, liveness,
    /// claims and clean-up.
    pub(super) fn on_peers_listed(&mut self, listed: Vec<PeerContainer>) {
        let mut records = listed;
        for held in self.peers.held.values() {
            if !records.iter().any(|r| r.id == held.id) {
                records.push(held.clone());
            }
        }
        // A claim of this replica's own that turned out void (the peer's new sentinel already ran at the claimed
        // epoch) is no longer held: its target removes it, and it must not come back to life if that peer dies.
        let void: Vec<ContainerId> =
            records.iter().filter(|r| pure::is_void(r, &records)).map(|r| r.id.clone()).collect();
        self.peers.held.retain(|id, _| !void.contains(id));
        self.peers.records = records;
        self.refuse_void_claims();
        self.apply_claims();
        if matches!(self.peers.sentinel, SentinelState::None) {
            self.desired.epoch =
                pure::next_epoch(&self.desired.owner, self.desired.epoch, self.observed.view(), &self.peers.records);
            self.metrics.set_epoch(self.desired.epoch);
            info!(epoch = self.desired.epoch, "epoch chosen");
            self.start_sentinel();
        }
        if self.desired.draining {
            return;
        }
        let now = self.now();
        let p = pure::assess(
            &self.desired,
            self.observed.view(),
            &self.peers.records,
            &self.peers.down_since,
            self.peers.sentinel_id(),
            &self.policy,
            now,
        );
        self.peers.down_since.retain(|k, _| p.down.contains(k));
        for d in &p.down {
            self.peers.down_since.entry(d.clone()).or_insert_with(|| {
                warn!(peer = %d, "peer replica is down (no running sentinel)");
                now
            });
        }
        self.metrics.set_peers_down(p.down.len());
        for (dead, through) in p.claim {
            self.claim(dead, through);
        }
        for id in p.remove {
            self.remove_marker(id);
        }
    }

    /// Refuses the claims on this replica made while its sentinel runs at the claimed epoch (no takeover makes
    /// one; anyone who reaches the Docker API can): they are ignored everywhere (`peers::is_void`), and here
    /// logged, counted once each and removed.
    fn refuse_void_claims(&mut self) {
        let records = &self.peers.records;
        self.peers.refused.retain(|id| records.iter().any(|r| &r.id == id));
        let void: Vec<PeerContainer> =
            pure::void_claims_on(&self.desired.owner, &self.peers.records).into_iter().cloned().collect();
        for claim in void {
            if self.peers.refused.insert(claim.id.clone()) {
                let through = claim.labels.claimed.as_ref().map_or(0, |(_, e)| *e);
                warn!(
                    claim = %claim.id.short(),
                    holder = %claim.labels.owner,
                    through,
                    epoch = self.desired.epoch,
                    "refused a claim on this replica: its sentinel runs at the claimed epoch, so no takeover made it; \
                     removing it"
                );
                self.metrics.claim_refused();
            }
            self.remove_marker(claim.id);
        }
    }

    /// Under `reconcile.startup: remove_all` and `reconcile.shutdown: remove`: removes this replica's own
    /// containers that a claim disowned but no live replica manages, and such claims on it, so that nothing of it
    /// is left behind whatever claims say.
    pub(super) fn remove_stranded(&mut self, reason: RemoveReason) {
        let s = pure::stranded(&self.desired.owner, self.observed.view(), &self.peers.records);
        if !s.containers.is_empty() {
            info!(containers = s.containers.len(), "removing this replica's containers that no live replica manages");
            self.dispatch(Action::BulkRemove { containers: s.containers, reason });
        }
        for id in s.claims {
            self.remove_marker(id);
        }
    }

    /// [`Self::remove_stranded`] for startup's `remove_all`: adds the containers to `remove`, and removes the claims.
    pub(super) fn add_stranded(&mut self, remove: &mut Vec<ContainerId>) {
        let s = pure::stranded(&self.desired.owner, self.observed.view(), &self.peers.records);
        for c in s.containers {
            if !remove.contains(&c) {
                remove.push(c);
            }
        }
        for id in s.claims {
            self.remove_marker(id);
        }
    }

    /// Recomputes which owners this replica manages besides itself, and which of its own epochs are fenced off.
    fn apply_claims(&mut self) {
        let me = self.desired.owner.clone();
        self.desired.claimed = pure::effective_claims(&me, &self.peers.records);
        let fenced = pure::disowned_through(&me, &self.peers.records);
        if fenced != self.desired.disowned_through {
            self.desired.disowned_through = fenced;
            if let Some(e) = fenced {
                warn!(through = e, "another replica has taken over this one's containers up to this epoch");
                if self.desired.epoch <= e {
                    self.desired.epoch = e + 1;
                    self.metrics.set_epoch(self.desired.epoch);
                }
                self.drop_disowned();
            }
        }
    }

    /// Forgets the sessions whose container another replica now holds: that replica serves them now.
    fn drop_disowned(&mut self) {
        let view = self.observed.view();
        let lost: Vec<SessionId> = self
            .desired
            .sessions
            .values()
            .filter(|s| {
                s.container
                    .as_ref()
                    .and_then(|c| view.containers.get(c))
                    .is_some_and(|c| !self.desired.manages(&c.labels))
            })
            .map(|s| s.id)
            .collect();
        for id in lost {
            info!(session = %id, "session taken over by another replica");
            self.desired.sessions.remove(&id);
            self.forget_grants(&id);
            self.table.forget(&id);
            self.terminals.forget(&id);
        }
    }

    /// Adopts (or removes) the containers of dead peers this replica now holds claims on and has no session for.
    /// Runs before every plan, so the planner never sees them as orphans.
    pub(super) fn take_over(&mut self, now: Timestamp) {
        if self.desired.claimed.is_empty() {
            return;
        }
        let mut remove = Vec::new();
        let mut adopted = Vec::new();
        for c in self.observed.view().containers.values() {
            if c.labels.owner == self.desired.owner
                || !self.desired.manages(&c.labels)
                || self.desired.sessions.contains_key(&c.labels.session)
                || c.removal_requested
                || adopted.iter().any(|s: &DesiredSession| s.id == c.labels.session)
            {
                continue;
            }
            let adopt = self.policy.peers.on_dead == OnDeadPeer::Adopt
                && c.state == ContainerState::Running
                && !self.desired.draining;
            if adopt {
                adopted.push(adopted_session(c, now));
            } else if c.state != ContainerState::Removing {
                remove.push(c.id.clone());
            }
        }
        for session in adopted {
            let id = session.id;
            info!(session = %id, "adopted from a dead peer; detached");
            self.desired.sessions.insert(id, session);
            self.table.track(id);
            self.record(id, "observed", "adopted from a dead peer; detached".into());
        }
        if !remove.is_empty() {
            info!(containers = remove.len(), "removing a dead peer's containers");
            self.dispatch(Action::BulkRemove { containers: remove, reason: RemoveReason::DeadPeer });
        }
    }

    fn claim(&mut self, dead: InstanceId, through: u64) {
        if !self.peers.claiming.insert(dead.clone()) {
            return;
        }
        let spec = claim_spec(&self.policy, &self.desired.owner, self.desired.epoch, &dead, through);
        let labels = claim_labels(&self.desired.owner, self.desired.epoch, &dead, through);
        let (runtime, tx, metrics, timeout) =
            (self.runtime.clone(), self.peer_tx.clone(), self.metrics.clone(), self.policy.reconcile.docker_timeout);
        let ns = self.policy.docker.namespace.clone();
        info!(peer = %dead, through, "claiming a dead peer");
        tokio::spawn(
            async move {
                // Look once more right before the claim: a peer whose new sentinel started after the list that
                // found it dead is back, and is left alone. (What remains is the gap between this look and the
                // create; fencing covers it.)
                let back = match timed(&metrics, crate::runtime::DockerOp::ListPeers, timeout, runtime.list_peers(&ns))
                    .await
                {
                    Ok(peers) => peers.iter().any(|p| {
                        p.labels.role == berth_reconciler::PeerRole::Sentinel && p.labels.owner == dead && p.running()
                    }),
                    Err(e) => {
                        let _ = tx.send(PeerEvent::Claimed { dead, through, result: Err(e) }).await;
                        return;
                    }
                };
                if back {
                    let _ = tx.send(PeerEvent::PeerBack { dead }).await;
                    return;
                }
                let result =
                    timed(&metrics, crate::runtime::DockerOp::CreateMarker, timeout, runtime.create_marker(&spec))
                        .await
                        .map(|id| PeerContainer { id, labels, state: ContainerState::Created });
                let _ = tx.send(PeerEvent::Claimed { dead, through, result }).await;
            }
            .in_current_span(),
        );
    }

    fn remove_marker(&mut self, id: ContainerId) {
        if !self.peers.removing.insert(id.clone()) {
            return;
        }
        let (runtime, tx, metrics, timeout) =
            (self.runtime.clone(), self.peer_tx.clone(), self.metrics.clone(), self.policy.reconcile.docker_timeout);
        tokio::spawn(
            async move {
                let result = timed(&metrics, crate::runtime::DockerOp::Remove, timeout, runtime.remove(&id)).await;
                let _ = tx.send(PeerEvent::Removed { id, result }).await;
            }
            .in_current_span(),
        );
    }

    /// Creates this replica's sentinel at its current epoch and holds its stdin until told to stop.
    pub(super) fn start_sentinel(&mut self) {
        self.peers.sentinel = SentinelState::Starting;
        let nonce = SessionId::generate().map(|id| id.to_string()[..8].to_owned()).unwrap_or_default();
        let spec = sentinel_spec(&self.policy, &self.desired.owner, self.desired.epoch, &nonce);
        let (runtime, tx, metrics, timeout) =
            (self.runtime.clone(), self.peer_tx.clone(), self.metrics.clone(), self.policy.reconcile.docker_timeout);
        tokio::spawn(
            async move {
                let sentinel =
                    match timed(&metrics, crate::runtime::DockerOp::RunSentinel, timeout, runtime.run_sentinel(&spec))
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(PeerEvent::SentinelFailed(e)).await;
                            return;
                        }
                    };
                let (stop, stopped) = oneshot::channel();
                let id = sentinel.id.clone();
                if tx.send(PeerEvent::SentinelUp { id: id.clone(), stop }).await.is_err() {
                    // The controller stopped while this sentinel started, so nobody retires it: remove it here.
                    drop(sentinel);
                    let _ = timed(&metrics, crate::runtime::DockerOp::Remove, timeout, runtime.remove(&id)).await;
                    return;
                }
                tokio::select! {
                    () = sentinel.ended => {
                        let _ = tx.send(PeerEvent::SentinelEnded(id)).await;
                    }
                    _ = stopped => {}
                }
            }
            .instrument(info_span!("sentinel")),
        );
    }

    pub(super) fn on_peer_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::SentinelUp { id, stop } => {
                info!(sentinel = %id.short(), epoch = self.desired.epoch, "sentinel running");
                self.peers.sentinel = SentinelState::Up { id, stop: Some(stop) };
                self.peers.lost_at = None;
            }
            PeerEvent::SentinelFailed(e) => {
                warn!(error = %e, "sentinel could not start; retrying (not ready if it stays away)");
                self.peers.lost_at.get_or_insert_with(Instant::now);
                self.peers.sentinel = SentinelState::Lost { retry: Instant::now() + SENTINEL_RETRY };
            }
            PeerEvent::SentinelEnded(id) => {
                if self.shutdown.is_none() {
                    warn!(sentinel = %id.short(), "sentinel stopped; replacing it at a new epoch");
                    self.peers.lost_at.get_or_insert_with(Instant::now);
                    self.peers.sentinel = SentinelState::Lost { retry: Instant::now() + SENTINEL_RETRY };
                    self.remove_marker(id);
                }
            }
            PeerEvent::Claimed { dead, through, result } => {
                self.peers.claiming.remove(&dead);
                match result {
                    Ok(claim) => {
                        info!(peer = %dead, through, "took over a dead peer");
                        self.metrics.takeover(TakeoverResult::Won);
                        self.peers.held.insert(claim.id.clone(), claim.clone());
                        self.peers.records.push(claim);
                        self.peers.down_since.remove(&dead);
                        self.apply_claims();
                    }
                    Err(RuntimeError::Conflict(_)) => {
                        info!(peer = %dead, "another replica took the dead peer over first");
                        self.metrics.takeover(TakeoverResult::Lost);
                        self.request_list();
                    }
                    Err(e) => {
                        warn!(peer = %dead, error = %e, "claim failed; retrying at the next list");
                        self.metrics.takeover(TakeoverResult::Error);
                    }
                }
            }
            PeerEvent::PeerBack { dead } => {
                info!(peer = %dead, "the peer came back before it was claimed");
                self.peers.claiming.remove(&dead);
                self.peers.down_since.remove(&dead);
            }
            PeerEvent::Removed { id, result } => {
                self.peers.removing.remove(&id);
                match result {
                    Ok(()) => {
                        self.peers.held.remove(&id);
                        self.peers.records.retain(|r| r.id != id);
                        self.apply_claims();
                    }
                    Err(e) => warn!(container = %id.short(), error = %e, "could not remove a sentinel or claim"),
                }
            }
        }
        self.desired.sentinel_up = self.peers.sentinel_up();
        self.metrics.set_sentinel_up(self.desired.sentinel_up);
        self.publish_readiness();
    }

    /// Replaces a lost sentinel when its retry time has come, at an epoch above everything seen.
    pub(super) fn tend_sentinel(&mut self) {
        if self.shutdown.is_some() || self.peers.retry_at().is_none_or(|t| t > Instant::now()) {
            return;
        }
        self.desired.epoch =
            pure::next_epoch(&self.desired.owner, self.desired.epoch, self.observed.view(), &self.peers.records);
        self.metrics.set_epoch(self.desired.epoch);
        self.start_sentinel();
    }

    /// At the very end: removes this replica's sentinel, so peers see it gone at once. A sentinel still being
    /// started is waited for (its start is bounded by the Docker timeout), or it would run on, unowned.
    pub(super) async fn retire_sentinel(&mut self) {
        let timeout = self.policy.reconcile.docker_timeout;
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        while matches!(self.peers.sentinel, SentinelState::Starting) {
            match tokio::time::timeout_at(deadline, self.peer_rx.recv()).await {
                Ok(Some(PeerEvent::SentinelUp { id, stop })) => {
                    self.peers.sentinel = SentinelState::Up { id, stop: Some(stop) };
                }
                Ok(Some(PeerEvent::SentinelFailed(_)) | None) => self.peers.sentinel = SentinelState::None,
                Ok(Some(_)) => {}
                Err(_) => {
                    warn!("the sentinel's start did not finish in time; it stops when this process exits");
                    self.peers.sentinel = SentinelState::None;
                }
            }
        }
        if let SentinelState::Up { id, stop } = std::mem::take(&mut self.peers.sentinel) {
            // Removed (forced) while it still runs, and only then is its stdin closed: closing it first races
            // the removal with the container's own exit, and Podman then answers the removal with success but
            // keeps the exited container.
            if let Err(e) =
                timed(&self.metrics, crate::runtime::DockerOp::Remove, timeout, self.runtime.remove(&id)).await
            {
                warn!(error = %e, "could not remove the sentinel; peers will see it stopped");
            }
            drop(stop);
        }
        self.metrics.set_sentinel_up(false);
    }
}
