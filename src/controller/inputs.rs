//! The controller's Docker side: action outcomes (with per-key backoff), observer events, terminal stream
//! losses and full lists, each folded into desired or observed state.

use berth_reconciler::retry::gives_up;

use super::*;

impl<R: Runtime> Controller<R> {
    pub(super) fn on_completed(&mut self, done: Completed) {
        let Completed { action, result, failed } = done;
        self.gate.end(&Key::of(&action));
        let kind = action.kind().as_str();
        if let Some(session) = action.session() {
            let detail = match &result {
                Ok(_) => format!("{kind} ok"),
                Err(e) => format!("{kind} failed: {e}"),
            };
            self.record(session, "outcome", detail);
        }
        match result {
            Ok(Outcome::Created { session, container }) => {
                let id = container.id.clone();
                self.observed.upsert(container);
                self.gate.succeeded(&Key::Session(session));
                if let Some(s) = self.desired.sessions.get_mut(&session) {
                    s.container = Some(id);
                    s.create_attempts = 0;
                }
            }
            Ok(Outcome::Attached { session }) => {
                self.gate.succeeded(&Key::Session(session));
                self.observed.set_attached(session, true);
            }
            Ok(Outcome::Started { container }) => {
                if let Some(s) = action.session() {
                    self.gate.succeeded(&Key::Session(s));
                }
                self.observed.set_state(&container, ContainerState::Running);
            }
            Ok(Outcome::Stopped { container }) => self.observed.set_state(&container, ContainerState::Exited),
            Ok(Outcome::Removed { containers }) => {
                let reason = match &action {
                    Action::Remove { reason, .. } | Action::BulkRemove { reason, .. } => *reason,
                    _ => RemoveReason::SessionEnded,
                };
                for id in &containers {
                    self.observed.remove(id);
                    self.gate.succeeded(&Key::Container(id.clone()));
                    self.metrics.container_removed(reason);
                }
                if let Some(s) = action.session() {
                    self.gate.succeeded(&Key::Session(s));
                    if reason == RemoveReason::Unhealthy
                        && let Some(sess) = self.desired.sessions.get_mut(&s)
                    {
                        sess.container = None;
                    }
                }
            }
            Err(e) => self.on_failed(&action, e),
        }
        for (id, e) in failed {
            self.observed.set_removal_requested(&id, false);
            self.back_off(Key::Container(id), &e);
        }
    }

    pub(super) fn on_failed(&mut self, action: &Action, e: RuntimeError) {
        for c in action.containers() {
            if matches!(action, Action::Remove { .. } | Action::BulkRemove { .. }) {
                self.observed.set_removal_requested(c, false);
            }
        }
        if let Action::Create { session, .. } = action {
            let max = self.policy.reconcile.max_create_attempts;
            if let Some(s) = self.desired.sessions.get_mut(session) {
                s.create_attempts += 1;
                let give_up = gives_up(e.failure(), s.create_attempts, max);
                if give_up && s.ending.is_none() {
                    let reason = EndReason::CreateFailed { error: e.to_string() };
                    self.metrics.session_ended(&reason);
                    s.ending = Some(reason);
                }
            }
            if matches!(e, RuntimeError::Conflict(_)) {
                // The name is taken: an earlier create may have succeeded without our hearing of it.
                self.request_list();
            }
        }
        for k in Key::of(action) {
            self.back_off(k, &e);
        }
    }

    pub(super) fn back_off(&mut self, key: Key, e: &RuntimeError) {
        let r = &self.policy.reconcile;
        self.gate.failed(key, e.failure(), r.backoff_base, r.backoff_max, Instant::now());
    }

    pub(super) fn on_observer(&mut self, msg: ObserverMsg) {
        match msg {
            ObserverMsg::Connected => {
                // The engine is back: whatever was backing off because it was away may try again now.
                self.gate.clear_backoff();
                self.request_list();
            }
            ObserverMsg::Disconnected => {}
            ObserverMsg::Upsert(c) => {
                let (session, state) = (c.labels.session, c.state);
                let mine = self.desired.manages(&c.labels);
                self.observed.upsert(c);
                if mine && self.desired.sessions.contains_key(&session) {
                    self.record(session, "observed", format!("container is {}", state.as_str()));
                }
            }
            ObserverMsg::Pooled(c) => match &c.claimed {
                // A claimed container is its session's: its state goes to the store as a cold one's would.
                Some(name) => {
                    let session = name.session;
                    let state = c.state;
                    self.observed.upsert(Self::claimed_observed(&c, name));
                    if self.desired.sessions.contains_key(&session) {
                        self.record(session, "observed", format!("container is {}", state.as_str()));
                    }
                }
                None => self.request_list(),
            },
            ObserverMsg::PoolChanged(id) => match self.observed.view().containers.get(&id).map(|c| c.labels.session) {
                // A claimed container went: as for a cold one, without a list.
                Some(session) => {
                    self.observed.remove(&id);
                    if self.desired.sessions.contains_key(&session) {
                        self.record(session, "observed", "container destroyed".into());
                    }
                }
                None => self.request_list(),
            },
            ObserverMsg::Gone(id) => {
                let session = self.observed.view().containers.get(&id).map(|c| c.labels.session);
                self.observed.remove(&id);
                if let Some(s) = session.filter(|s| self.desired.sessions.contains_key(s)) {
                    self.record(s, "observed", "container destroyed".into());
                }
            }
        }
        self.publish_readiness();
    }

    pub(super) fn on_terminal(&mut self, ev: TerminalEvent) {
        match ev {
            // A claimed container's exit comes as an event on the pool's stream, which asks for a list.
            TerminalEvent::Lost(session) => self.observed.set_attached(session, false),
            TerminalEvent::RecordingFailed(session, why) => {
                if let Some(s) = self.desired.sessions.get_mut(&session)
                    && s.ending.is_none()
                {
                    let reason = EndReason::RecordingFailed { error: why.to_string() };
                    warn!(session = %session, reason = %reason, "session ending: its required recording failed");
                    self.metrics.session_ended(&reason);
                    s.ending = Some(reason.clone());
                    self.record(session, "ended", reason.to_string());
                }
            }
        }
    }

    /// Starts a list, or, when one is in flight, another once it is back: the one in flight may have been
    /// answered before the change that asks for this one.
    pub(super) fn request_list(&mut self) {
        if self.listing != Listing::Idle {
            self.listing = Listing::AgainAfter;
            return;
        }
        self.listing = Listing::InFlight;
        let generation = self.observed.begin_list();
        let at = self.now();
        let runtime = self.runtime.clone();
        let ns = self.policy.docker.namespace.clone();
        let timeout = self.policy.reconcile.docker_timeout;
        let tx = self.list_tx.clone();
        let metrics = self.metrics.clone();
        let pool_prefix = self.pool.lists(&self.policy).then(|| self.policy.docker.name_prefix.clone());
        tokio::spawn(
            async move {
                let res = match timed(&metrics, crate::runtime::DockerOp::List, timeout, runtime.list(&ns)).await {
                    Ok(containers) => {
                        timed(&metrics, crate::runtime::DockerOp::ListPeers, timeout, runtime.list_peers(&ns))
                            .await
                            .map(|peers| (containers, peers))
                    }
                    Err(e) => Err(e),
                };
                // Claimed pooled containers are session containers: they join the session list (decision 0025).
                let res = match (res, pool_prefix) {
                    (Ok((mut containers, peers)), Some(prefix)) => {
                        let op = crate::runtime::DockerOp::ListPool;
                        timed(&metrics, op, timeout, runtime.list_pool(&ns, &prefix)).await.map(|pooled| {
                            for c in &pooled {
                                if let Some(name) = &c.claimed {
                                    containers.push(Self::claimed_observed(c, name));
                                }
                            }
                            (containers, peers, Some(pooled))
                        })
                    }
                    (res, _) => res.map(|(containers, peers)| (containers, peers, None)),
                };
                let _ = tx.send((generation, at, res)).await;
            }
            .instrument(info_span!("list")),
        );
    }

    pub(super) fn on_listed(&mut self, generation: u64, at: Timestamp, res: ListResult) {
        let again = std::mem::replace(&mut self.listing, Listing::Idle) == Listing::AgainAfter;
        match res {
            Ok((list, peers, pooled)) => {
                self.observed.apply_list(list, generation, at);
                self.on_pool_listed(pooled.unwrap_or_default());
                self.on_peers_listed(peers);
                self.bind_unbound();
                // Backoff for things that no longer exist is dropped, so the map stays bounded.
                let (view, desired) = (self.observed.view(), &self.desired);
                self.gate.retain_backoff(|k| match k {
                    Key::Container(id) => view.containers.contains_key(id),
                    Key::Session(s) => desired.sessions.contains_key(s),
                });
            }
            Err(e) => warn!(error = %e, "list failed"),
        }
        if again {
            self.request_list();
        }
        self.publish_readiness();
    }

    /// Binds sessions that have no container yet to the one container a list found for them (a create
    /// whose reply was lost, or a name conflict).
    pub(super) fn bind_unbound(&mut self) {
        let by_session = self.observed.view().by_session();
        let found: Vec<(SessionId, ContainerId)> = self
            .desired
            .sessions
            .values()
            .filter(|s| s.container.is_none())
            .filter_map(|s| match by_session.get(&s.id).map(Vec::as_slice) {
                Some([only]) if self.desired.manages(&only.labels) => Some((s.id, only.id.clone())),
                _ => None,
            })
            .collect();
        for (session, container) in found {
            if let Some(s) = self.desired.sessions.get_mut(&session) {
                s.container = Some(container);
            }
        }
    }
}
