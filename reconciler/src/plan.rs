//! The planner: `plan(desired, observed, policy, now) -> Plan`. Pure, synchronous and total.
//!
//! Every pass reads the whole state; why the pass was triggered is not an input. The executor only
//! interprets the actions returned here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::desired::{Attachment, Desired, DesiredSession, EnvVar};
use crate::ids::{ContainerId, ProfileName, SessionId};
use crate::labels::{LabelNamespace, ManagedLabels, SessionKeys};
use crate::observed::{ContainerState, Health, Observed, ObservedContainer};
use crate::policy::{HealthCheck, LogLimits, Policy, Profile, Resources, Security, UnhealthyAction};
use crate::status::EndReason;
use crate::time::Timestamp;

/// Everything Docker needs to create one session container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerSpec {
    /// `<prefix>-<session id>`: berth-generated, never client text.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command, or the image default.
    pub command: Option<Vec<String>>,
    /// Environment: the profile's fixed values, then allowed client values and mapped credentials.
    pub env: Vec<EnvVar>,
    /// berth's labels, marker included.
    pub labels: BTreeMap<String, String>,
    /// User to run as.
    pub user: String,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Resource limits.
    pub resources: Resources,
    /// Security options.
    pub security: Security,
    /// Network mode.
    pub network: String,
    /// Health check.
    pub healthcheck: Option<HealthCheck>,
    /// Log bounds.
    pub logs: LogLimits,
    /// The engine's OCI runtime; `None` is the engine's default.
    pub runtime: Option<String>,
    /// For a warm-pool container: where berth's launcher is on the engine's host. It is mounted read-only at
    /// [`crate::pool::LAUNCHER_PATH`] and runs as the entrypoint, with `command` as its arguments (decision 0025).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launcher: Option<String>,
}

impl ContainerSpec {
    /// The spec for `session` under `profile`, stamped as created at `now`.
    ///
    /// The created label is the container's own creation time, not the session's: the start timeout and the
    /// orphan guard measure from it, and a session may get a container long after it was asked for.
    pub fn build(
        desired: &Desired,
        session: &DesiredSession,
        profile: &Profile,
        policy: &Policy,
        now: Timestamp,
    ) -> Self {
        Self::with_hash(desired, session, profile, policy, now, profile.hash())
    }

    /// [`Self::build`] with the profile's hash already computed, so a pass with many creates hashes each
    /// profile once.
    fn with_hash(
        desired: &Desired,
        session: &DesiredSession,
        profile: &Profile,
        policy: &Policy,
        now: Timestamp,
        policy_hash: String,
    ) -> Self {
        let labels = ManagedLabels {
            session: session.id,
            owner: desired.owner.clone(),
            created_at: now,
            profile: session.profile.clone(),
            kind: session.kind,
            policy_hash,
            resume_hash: session.resume_hash.clone(),
            epoch: desired.epoch,
        };
        let mut env = profile_env(profile);
        add_session_env(&mut env, session);
        Self {
            name: format!("{}-{}", policy.docker.name_prefix, session.id),
            image: profile.image.clone(),
            command: profile.command.clone(),
            env,
            labels: labels.to_labels(&policy.docker.namespace),
            user: profile.user.clone(),
            working_dir: profile.working_dir.clone(),
            resources: profile.resources.clone(),
            security: profile.security.clone(),
            network: profile.network.clone(),
            healthcheck: profile.healthcheck.clone(),
            logs: profile.logs.clone(),
            runtime: profile.runtime.clone(),
            launcher: None,
        }
    }

    /// This spec (built by [`Self::with_hash`] for another session of the same profile in the same plan) made
    /// over for `session`: what [`Self::with_hash`] gives for it, without formatting every label again.
    fn for_session(&self, session: &DesiredSession, profile: &Profile, policy: &Policy, keys: &SessionKeys) -> Self {
        let mut spec = Self {
            name: format!("{}-{}", policy.docker.name_prefix, session.id),
            env: profile_env(profile),
            ..self.clone()
        };
        set_label(&mut spec.labels, &keys.session, session.id.to_string());
        set_label(&mut spec.labels, &keys.kind, session.kind.as_str().to_owned());
        match &session.resume_hash {
            Some(h) => set_label(&mut spec.labels, &keys.resume_hash, h.clone()),
            None => {
                spec.labels.remove(&keys.resume_hash);
            }
        }
        add_session_env(&mut spec.env, session);
        spec
    }

    /// The label namespace marker is present: a sanity check the runtime makes before creating.
    pub fn is_marked(&self, ns: &LabelNamespace) -> bool {
        self.labels.get(&ns.marker()).map(String::as_str) == Some("true")
    }
}

/// The profile's fixed environment.
fn profile_env(profile: &Profile) -> Vec<EnvVar> {
    profile.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: v.clone(), sensitive: false }).collect()
}

/// The session's own variables over the profile's.
fn add_session_env(env: &mut Vec<EnvVar>, session: &DesiredSession) {
    for var in &session.env {
        env.retain(|e| e.name != var.name);
        env.push(var.clone());
    }
}

fn set_label(labels: &mut BTreeMap<String, String>, key: &str, value: String) {
    match labels.get_mut(key) {
        Some(v) => *v = value,
        None => {
            labels.insert(key.to_owned(), value);
        }
    }
}

/// Why a container is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// Its session ended.
    SessionEnded,
    /// It carries berth's marker but no desired session.
    Orphan,
    /// A second container for a session that already has one.
    Duplicate,
    /// It stayed `created` past the start timeout.
    StuckCreated,
    /// Docker reported it unhealthy and the policy replaces it.
    Unhealthy,
    /// Startup handling of an earlier run's container.
    Startup,
    /// A dead peer's container, taken over under `peers.on_dead: remove` (or not running).
    DeadPeer,
}

impl RemoveReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionEnded => "session_ended",
            Self::Orphan => "orphan",
            Self::Duplicate => "duplicate",
            Self::StuckCreated => "stuck_created",
            Self::Unhealthy => "unhealthy",
            Self::Startup => "startup",
            Self::DeadPeer => "dead_peer",
        }
    }

    /// Every value, for pre-creating metric series.
    pub const ALL: [Self; 7] = [
        Self::SessionEnded,
        Self::Orphan,
        Self::Duplicate,
        Self::StuckCreated,
        Self::Unhealthy,
        Self::Startup,
        Self::DeadPeer,
    ];
}

/// One thing to do to Docker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Create a container for a session.
    Create {
        /// The session.
        session: SessionId,
        /// What to create.
        spec: Box<ContainerSpec>,
    },
    /// Attach berth's terminal stream to a container (before start, so no output is missed).
    Attach {
        /// The session.
        session: SessionId,
        /// Its container.
        container: ContainerId,
    },
    /// Start a created container.
    Start {
        /// The session.
        session: SessionId,
        /// Its container.
        container: ContainerId,
    },
    /// Stop a running container, with a grace period.
    Stop {
        /// The session.
        session: SessionId,
        /// Its container.
        container: ContainerId,
        /// SIGTERM to SIGKILL grace.
        timeout: Duration,
    },
    /// Force-remove one container and verify it is gone.
    Remove {
        /// The session it served, when it has one.
        session: Option<SessionId>,
        /// The container.
        container: ContainerId,
        /// Why.
        reason: RemoveReason,
    },
    /// Force-remove many containers with bounded concurrency.
    BulkRemove {
        /// The containers.
        containers: Vec<ContainerId>,
        /// Why.
        reason: RemoveReason,
    },
}

/// Action kinds, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// [`Action::Create`].
    Create,
    /// [`Action::Attach`].
    Attach,
    /// [`Action::Start`].
    Start,
    /// [`Action::Stop`].
    Stop,
    /// [`Action::Remove`].
    Remove,
    /// [`Action::BulkRemove`].
    BulkRemove,
}

impl ActionKind {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Attach => "attach",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Remove => "remove",
            Self::BulkRemove => "bulk_remove",
        }
    }

    /// Every kind, for pre-creating metric series.
    pub const ALL: [Self; 6] = [Self::Create, Self::Attach, Self::Start, Self::Stop, Self::Remove, Self::BulkRemove];
}

impl Action {
    /// This action's kind.
    pub fn kind(&self) -> ActionKind {
        match self {
            Self::Create { .. } => ActionKind::Create,
            Self::Attach { .. } => ActionKind::Attach,
            Self::Start { .. } => ActionKind::Start,
            Self::Stop { .. } => ActionKind::Stop,
            Self::Remove { .. } => ActionKind::Remove,
            Self::BulkRemove { .. } => ActionKind::BulkRemove,
        }
    }

    /// The session this action serves, when it serves one.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Self::Create { session, .. }
            | Self::Attach { session, .. }
            | Self::Start { session, .. }
            | Self::Stop { session, .. } => Some(*session),
            Self::Remove { session, .. } => *session,
            Self::BulkRemove { .. } => None,
        }
    }

    /// The containers this action touches.
    pub fn containers(&self) -> Vec<&ContainerId> {
        match self {
            Self::Create { .. } => Vec::new(),
            Self::Attach { container, .. }
            | Self::Start { container, .. }
            | Self::Stop { container, .. }
            | Self::Remove { container, .. } => vec![container],
            Self::BulkRemove { containers, .. } => containers.iter().collect(),
        }
    }
}

/// The planner's output.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Docker actions, in order of priority.
    pub actions: Vec<Action>,
    /// Sessions that should now end, and why. The controller records these in desired state.
    pub ends: Vec<(SessionId, EndReason)>,
}

/// Why a live session must end now because of a timer, if it must (the rules are [`crate::deadline`]'s).
pub fn timer_reason(session: &DesiredSession, policy: &Policy, now: Timestamp) -> Option<EndReason> {
    match crate::deadline::deadline(&crate::deadline::Timed::session(session), policy, now) {
        crate::deadline::Deadline::Due(rule) => rule.end_reason(),
        crate::deadline::Deadline::At(_) => None,
    }
}

fn is_live(c: &ObservedContainer) -> bool {
    !c.removal_requested && c.state != ContainerState::Removing
}

/// A session id as a number with the same order, so grouping sorts and merges compare integers.
fn order_key(id: SessionId) -> u128 {
    u128::from_be_bytes(*id.as_bytes())
}

/// One of this instance's containers, with what the per-session pass reads most copied out of it: that pass
/// visits containers in session order, far from their map order, and following every pointer costs a cache miss.
#[derive(Clone, Copy)]
struct Member<'a> {
    /// [`order_key`] of its session.
    session: u128,
    /// Nobody is removing it yet.
    live: bool,
    state: ContainerState,
    health: Health,
    container: &'a ObservedContainer,
}

impl<'a> Member<'a> {
    fn new(container: &'a ObservedContainer) -> Self {
        Self {
            session: order_key(container.labels.session),
            live: is_live(container),
            state: container.state,
            health: container.health,
            container,
        }
    }

    fn id(&self) -> &'a ContainerId {
        &self.container.id
    }
}

/// The containers of `group` that nobody is removing yet, in container id order.
fn live<'g, 'a>(group: &'g [Member<'a>]) -> impl Iterator<Item = &'g Member<'a>> + Clone {
    group.iter().filter(|m| m.live)
}

/// Chooses the container a session keeps when it has several: the bound one, else a running one,
/// else the oldest.
fn keeper<'g, 'a>(
    session: &DesiredSession,
    mut live: impl Iterator<Item = &'g Member<'a>> + Clone,
) -> Option<&'g Member<'a>> {
    let first = live.next()?;
    if live.clone().next().is_none() {
        // The usual case: one container, kept whether or not it is the bound one.
        return Some(first);
    }
    if let Some(bound) = &session.container
        && let Some(m) = std::iter::once(first).chain(live.clone()).find(|m| m.id() == bound)
    {
        return Some(m);
    }
    let rank = |m: &Member<'a>| (m.state != ContainerState::Running, m.container.labels.created_at, m.id());
    // Container ids are unique, so two ranks never tie.
    Some(live.fold(first, |best, m| if rank(m) < rank(best) { m } else { best }))
}

/// Plans one reconcile pass. Pure: the same inputs always give the same plan.
pub fn plan(desired: &Desired, observed: &Observed, policy: &Policy, now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let Some(listed_at) = observed.listed_at else {
        return out;
    };
    // This instance's containers grouped by session: a stable sort keeps container id order within a group.
    // Sessions, groups and attachments are all in session order, so one merge pass pairs them up.
    let mut ours: Vec<Member<'_>> = Vec::with_capacity(observed.containers.len());
    ours.extend(observed.containers.values().filter(|c| desired.manages(&c.labels)).map(Member::new));
    ours.sort_by_key(|m| m.session);
    let mut rest: &[Member<'_>] = &ours;
    let mut attached_ids = observed.attached.iter().map(|id| order_key(*id)).peekable();
    let mut orphans: Vec<ContainerId> = Vec::new();
    // One spec per profile, built in full for its first create in this pass; the others are made from it.
    let mut templates: BTreeMap<&ProfileName, ContainerSpec> = BTreeMap::new();
    let keys = policy.docker.namespace.session_keys();
    let mut collect_orphans = |group: &[Member<'_>]| {
        let stray = live(group).filter(|m| m.container.labels.created_at < listed_at);
        orphans.extend(stray.map(|m| m.id().clone()));
    };

    for session in desired.sessions.values() {
        let key = order_key(session.id);
        let before = rest.iter().take_while(|m| m.session < key).count();
        let (stray, tail) = rest.split_at(before);
        collect_orphans(stray);
        let mine = tail.iter().take_while(|m| m.session == key).count();
        let (containers, tail) = tail.split_at(mine);
        rest = tail;
        while attached_ids.next_if(|&k| k < key).is_some() {}
        let attached = attached_ids.next_if_eq(&key).is_some();

        let ending = session.ending.is_some()
            || timer_reason(session, policy, now).inspect(|r| out.ends.push((session.id, r.clone()))).is_some();
        if ending {
            plan_removal(&mut out, session, live(containers), policy);
            continue;
        }

        let Some(keep) = keeper(session, live(containers)) else {
            if containers.iter().any(|m| !m.live) {
                // A removal is under way; wait for it before deciding anything.
                continue;
            }
            if session.container.is_some() {
                out.ends.push((session.id, EndReason::RemovedOutsideBerth));
            } else if desired.draining {
                // No new containers while shutting down.
            } else if !desired.sentinel_up {
                // Nor while peers may count this replica down: they could take the new container over. A session
                // that has waited for as long as a container may take to start is told so, rather than left
                // waiting.
                if now >= session.created_at.add(policy.reconcile.start_timeout) {
                    let error = format!(
                        "this replica's sentinel has not run for {:?}, so it creates no container (see /readyz)",
                        policy.reconcile.start_timeout
                    );
                    out.ends.push((session.id, EndReason::CreateFailed { error }));
                }
            } else if let Some(profile) = policy.profiles.get(&session.profile) {
                let spec = match templates.get(&session.profile) {
                    Some(t) => t.for_session(session, profile, policy, &keys),
                    None => {
                        let spec = ContainerSpec::with_hash(desired, session, profile, policy, now, profile.hash());
                        templates.insert(&session.profile, spec.clone());
                        spec
                    }
                };
                out.actions.push(Action::Create { session: session.id, spec: Box::new(spec) });
            } else {
                out.ends.push((
                    session.id,
                    EndReason::CreateFailed {
                        error: format!("profile {} is no longer in the policy", session.profile),
                    },
                ));
            }
            continue;
        };

        for extra in live(containers).filter(|m| !std::ptr::eq(m.container, keep.container)) {
            out.actions.push(remove(session, extra.id(), RemoveReason::Duplicate));
        }

        match keep.state {
            ContainerState::Exited | ContainerState::Dead => {
                out.ends.push((session.id, EndReason::from_exit(keep.container)));
                out.actions.push(remove(session, keep.id(), RemoveReason::SessionEnded));
            }
            ContainerState::Created => {
                if now >= keep.container.labels.created_at.add(policy.reconcile.start_timeout) {
                    let error = format!("container did not start within {:?}", policy.reconcile.start_timeout);
                    out.ends.push((session.id, EndReason::CreateFailed { error }));
                    out.actions.push(remove(session, keep.id(), RemoveReason::StuckCreated));
                } else if desired.draining {
                    // Not started during shutdown.
                } else if !attached {
                    out.actions.push(Action::Attach { session: session.id, container: keep.id().clone() });
                } else {
                    out.actions.push(Action::Start { session: session.id, container: keep.id().clone() });
                }
            }
            ContainerState::Running => {
                let replace = keep.health == Health::Unhealthy
                    && matches!(session.attachment, Attachment::Detached { .. })
                    && policy.profiles.get(&session.profile).map(|p| p.on_unhealthy) == Some(UnhealthyAction::Replace);
                if replace {
                    out.actions.push(remove(session, keep.id(), RemoveReason::Unhealthy));
                } else if !attached {
                    out.actions.push(Action::Attach { session: session.id, container: keep.id().clone() });
                }
            }
            ContainerState::Paused | ContainerState::Restarting | ContainerState::Removing => {}
        }
    }
    collect_orphans(rest);

    if !orphans.is_empty() {
        // Grouping put them in session order; the action lists them in container id order.
        orphans.sort_unstable();
        out.actions.push(Action::BulkRemove { containers: orphans, reason: RemoveReason::Orphan });
    }
    out
}

fn remove(session: &DesiredSession, container: &ContainerId, reason: RemoveReason) -> Action {
    Action::Remove { session: Some(session.id), container: container.clone(), reason }
}

fn plan_removal<'g, 'a: 'g>(
    out: &mut Plan,
    session: &DesiredSession,
    live: impl Iterator<Item = &'g Member<'a>>,
    policy: &Policy,
) {
    let grace = policy.reconcile.stop_timeout;
    for m in live {
        if m.state == ContainerState::Running && !grace.is_zero() {
            out.actions.push(Action::Stop { session: session.id, container: m.id().clone(), timeout: grace });
        } else {
            out.actions.push(remove(session, m.id(), RemoveReason::SessionEnded));
        }
    }
}
