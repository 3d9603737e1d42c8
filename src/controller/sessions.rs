//! The controller's client side: commands from handles (open, resume, detach, release, admin queries), the
//! admission queue, and the session listings the admin API shows.

use super::*;
use berth_reconciler::SessionKind;

use super::grants::{Granted, JoinError, Joined, Role, ShareError};
use crate::metrics::{Rejection, ResumeOutcome};

impl<R: Runtime> Controller<R> {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Open { req, reply } => {
                let res = self.open(req);
                let _ = reply.send(res);
            }
            Command::Resume { id, secret, reply } => {
                let res = self.resume(id, &secret);
                let _ = reply.send(res);
            }
            Command::Detach { id, lease } => {
                let now = self.now();
                if self.table.holds(&id, lease)
                    && let Some(s) = self.desired.sessions.get_mut(&id)
                    && s.ending.is_none()
                {
                    s.attachment = Attachment::Detached { since: now };
                    self.record(id, "observed", "client disconnected; detached".into());
                }
            }
            Command::Release { id, reason } => {
                if let Some(s) = self.desired.sessions.get_mut(&id)
                    && s.ending.is_none()
                {
                    self.metrics.session_ended(&reason);
                    s.ending = Some(reason.clone());
                    self.record(id, "ended", reason.to_string());
                }
            }
            Command::List { reply } => {
                let _ = reply.send(self.list_sessions());
            }
            Command::Show { id, reply } => {
                let detail =
                    self.info(&id).map(|session| SessionDetail { session, decisions: self.table.decisions(&id) });
                let _ = reply.send(detail);
            }
            Command::DryRun { reply } => {
                let _ = reply.send(plan(&self.desired, self.observed.view(), &self.policy, self.now()));
            }
            Command::Resync => self.request_list(),
            Command::Shutdown { reply } => self.begin_shutdown(Some(reply)),
            Command::Share { id, lease, role, ttl, label, reply } => {
                let _ = reply.send(self.share(id, lease, role, ttl, label));
            }
            Command::Revoke { id, lease, grant_id, reply } => {
                let res = if self.table.holds(&id, lease) {
                    self.grants.revoke(id, &grant_id).map(|role| {
                        self.metrics.grant_revoked(role);
                        self.record(id, "observed", format!("{} grant {grant_id} revoked", role.as_str()));
                    })
                } else {
                    Err(ShareError::NotHolder)
                };
                let _ = reply.send(res);
            }
            Command::Join { id, secret, identity, reply } => {
                let _ = reply.send(self.join(id, &secret, identity));
            }
            Command::Leave { id, conn } => {
                if let Some(role) = self.grants.leave(id, conn) {
                    self.metrics.viewer_left(role);
                }
            }
            Command::Presence { id, lease, reply } => {
                let rx = self.table.holds(&id, lease).then(|| self.grants.presence(id));
                let _ = reply.send(rx);
            }
        }
    }

    fn share(
        &mut self,
        id: SessionId,
        lease: u64,
        role: Role,
        ttl: Option<Duration>,
        label: Option<String>,
    ) -> Result<Granted, ShareError> {
        let s = self.desired.sessions.get(&id).filter(|s| s.ending.is_none());
        let Some(s) = s.filter(|_| self.table.holds(&id, lease)) else {
            return Err(ShareError::NotHolder);
        };
        let sharing = self.policy.profiles.get(&s.profile).map(|p| p.sharing).unwrap_or_default();
        if !sharing.enabled {
            return Err(ShareError::NotAllowed("this session's profile does not allow sharing"));
        }
        if s.kind == SessionKind::Anonymous && !sharing.anonymous {
            return Err(ShareError::NotAllowed("this session's profile does not let anonymous owners share"));
        }
        let ttl = ttl.map_or(sharing.max_grant_ttl, |t| t.min(sharing.max_grant_ttl));
        let granted = self.grants.create(id, role, ttl, label, self.now())?;
        self.metrics.grant_created(role);
        self.record(
            id,
            "observed",
            format!("{} grant {} made for {}s", role.as_str(), granted.grant_id, ttl.as_secs()),
        );
        Ok(granted)
    }

    fn join(
        &mut self,
        id: SessionId,
        secret: &str,
        identity: Option<String>,
    ) -> Result<(Joined, watch::Receiver<Status>), JoinError> {
        let Some(s) = self.desired.sessions.get(&id).filter(|s| s.ending.is_none()) else {
            self.metrics.join_refused();
            return Err(JoinError::Refused);
        };
        let sharing = self.policy.profiles.get(&s.profile).map(|p| p.sharing).unwrap_or_default();
        let anonymous_refused = s.kind == SessionKind::Anonymous && !sharing.anonymous;
        let status = self.table.subscribe(&id);
        let joined = match status {
            Some(_) if sharing.enabled && !anonymous_refused => {
                self.grants.join(id, secret, identity, sharing.max_viewers, self.now())
            }
            _ => Err(JoinError::Refused),
        };
        match (joined, status) {
            (Ok(j), Some(status)) => {
                self.metrics.viewer_joined(j.role);
                self.record(id, "observed", format!("{} joined through grant {}", j.role.as_str(), j.grant_id));
                Ok((j, status))
            }
            (Err(e), _) => {
                self.metrics.join_refused();
                Err(e)
            }
            (Ok(_), None) => Err(JoinError::Refused),
        }
    }

    /// `id` is gone: its grants go, and its joined connections stop counting.
    pub(super) fn forget_grants(&mut self, id: &SessionId) {
        for role in self.grants.forget(id) {
            self.metrics.viewer_left(role);
        }
    }

    pub(super) fn open(&mut self, req: handle::SessionRequest) -> Result<Admission, OpenError> {
        if self.desired.draining {
            return Err(OpenError::Draining);
        }
        let profile = req.profile.clone().unwrap_or_else(|| self.policy.default_profile.clone());
        if !self.policy.profiles.contains_key(&profile) {
            return Err(OpenError::UnknownProfile(profile.to_string()));
        }
        match admit(&self.desired, &self.policy.limits, req.kind, req.client_ip) {
            Ok(()) => self.admit_now(req).map(Admission::Admitted),
            Err(reject) => {
                let queue_room = berth_reconciler::admission::may_queue(
                    &self.policy.limits,
                    &self.queue.candidates(),
                    req.client_ip,
                );
                if reject.queueable() && !queue_room {
                    self.metrics.rejected(Reject::PerIp);
                    let retry_after = self.retry_after(Reject::PerIp);
                    return Err(OpenError::Full { reason: Reject::PerIp.as_str(), retry_after });
                }
                let limits = &self.policy.limits;
                if reject.queueable() && !limits.queue_wait.is_zero() && self.queue.len() < limits.queue_len {
                    let (position, result) = self.queue.enqueue(req, Instant::now() + limits.queue_wait);
                    self.metrics.set_queue_len(self.queue.len());
                    Ok(Admission::Queued { position, result })
                } else {
                    self.metrics.rejected(reject);
                    Err(OpenError::Full { reason: reject.as_str(), retry_after: self.retry_after(reject) })
                }
            }
        }
    }

    pub(super) fn retry_after(&self, reject: Reject) -> Duration {
        match reject {
            Reject::PerIp => Duration::from_secs(30),
            _ => Duration::from_secs(5),
        }
    }

    pub(super) fn admit_now(&mut self, req: handle::SessionRequest) -> Result<Ticket, OpenError> {
        let id = match req.id.filter(|id| !self.desired.sessions.contains_key(id)) {
            Some(id) => id,
            None => SessionId::generate().map_err(|_| OpenError::Stopped)?,
        };
        let profile = req.profile.unwrap_or_else(|| self.policy.default_profile.clone());
        let mut s = DesiredSession::new(id, profile, req.kind, self.now());
        s.env = req.env;
        s.resume_hash = req.resume_hash;
        s.client_ip = req.client_ip;
        // A warm pool's ready container, when the profile has one; else the planner creates one cold.
        let start = if !self.desired.draining && self.claim_pooled(&mut s, req.size) {
            self.record(id, "planned", "claim a pooled container".into());
            crate::metrics::Start::Pool
        } else {
            crate::metrics::Start::Cold
        };
        self.audit.started(&s, req.identity, &self.metrics);
        self.desired.sessions.insert(id, s);
        let rx = self.table.track(id);
        self.record(id, "observed", "session requested".into());
        debug!(session = %id, "session admitted");
        Ok(Ticket { id, status: rx, lease: self.table.new_lease(id), start })
    }

    pub(super) fn resume(&mut self, id: SessionId, secret: &str) -> Result<Ticket, ResumeError> {
        let now = self.now();
        let Some(s) = self.desired.sessions.get_mut(&id) else {
            // Another replica's session with the right secret: its replica is restarting (or down, not yet past
            // the lease). The client retries, and reaches it again or this replica once it has taken over.
            let elsewhere = self.observed.view().containers.values().any(|c| {
                c.labels.session == id
                    && c.state == ContainerState::Running
                    && c.labels.resume_hash.as_deref().is_some_and(|h| resume_hash_matches(h, secret))
            });
            if elsewhere {
                self.metrics.resume(ResumeOutcome::Elsewhere);
                return Err(ResumeError::Elsewhere);
            }
            self.metrics.resume(ResumeOutcome::Unknown);
            return Err(ResumeError::Refused);
        };
        let ok = s.ending.is_none() && s.resume_hash.as_deref().is_some_and(|h| resume_hash_matches(h, secret));
        if !ok {
            self.metrics.resume(ResumeOutcome::BadSecret);
            return Err(ResumeError::Refused);
        }
        s.attachment = Attachment::Attached;
        s.last_activity = s.last_activity.max(now);
        self.metrics.resume(ResumeOutcome::Ok);
        let status = self.table.subscribe(&id).ok_or(ResumeError::Refused)?;
        self.record(id, "observed", "client resumed".into());
        Ok(Ticket { id, status, lease: self.table.new_lease(id), start: crate::metrics::Start::Resume })
    }

    /// Drops waiters that left or ran out of time, then admits every waiter that fits, the first admissible one
    /// first: a waiter held back by its own per-IP cap does not block those behind it.
    pub(super) fn admit_waiters(&mut self) {
        for w in self.queue.expire(Instant::now()) {
            self.metrics.rejected(Rejection::QueueTimeout);
            let _ = w.reply.send(Err(OpenError::QueueTimeout(self.policy.limits.queue_wait)));
        }
        while let Some(i) =
            berth_reconciler::admission::first_admissible(&self.desired, &self.policy.limits, &self.queue.candidates())
        {
            let Some(w) = self.queue.take(i) else { break };
            let _ = w.reply.send(self.admit_now(w.req));
        }
        self.queue.renumber();
        self.metrics.set_queue_len(self.queue.len());
    }

    pub(super) fn info(&self, id: &SessionId) -> Option<SessionInfo> {
        let s = self.desired.sessions.get(id)?;
        let view = self.observed.view();
        let now = self.now();
        let container = s.container.as_ref().and_then(|c| view.containers.get(c));
        Some(SessionInfo {
            id: s.id,
            status: status_of(s, view, &self.desired),
            profile: s.profile.clone(),
            kind: s.kind,
            age_seconds: now.since(s.created_at).as_secs(),
            idle_seconds: now.since(s.last_activity).as_secs(),
            attached: s.attachment == Attachment::Attached,
            client_ip: s.client_ip,
            owner: self.desired.owner.to_string(),
            policy_hash: container.map(|c| c.labels.policy_hash.clone()),
            current_policy_hash: self.policy.profiles.get(&s.profile).map(berth_reconciler::policy::Profile::hash),
            adopted: s.adopted,
        })
    }

    pub(super) fn list_sessions(&self) -> Vec<SessionInfo> {
        self.desired.sessions.keys().filter_map(|id| self.info(id)).collect()
    }
}
