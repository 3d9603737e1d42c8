//! The warm pool's planner (decision 0025): which pooled containers to create, start, keep and remove, and
//! which one a session claims. Pure, synchronous and total, like [`crate::plan`]; time is an argument.
//!
//! The pool is desired state. Each pass reads the whole pool: it refills a profile's pool below its size,
//! shrinks one whose size was lowered, drains one whose profile changed (its hash), recycles containers past
//! `pool.max_age`, and empties the pool at shutdown when the shutdown mode removes containers. Live sessions
//! come first: refills only use room under `limits.max_sessions` that sessions leave free, and when sessions
//! grow into the pool's room, pooled containers are removed to make way for the sessions' cold creates. Claims
//! come first too: while sessions are claiming, a pool that still holds more than half its size waits to refill
//! until claims have been quiet for [`REFILL_QUIET`], so that refills' creates and starts do not slow the claims'
//! renames and shells on the same engine. And no refill begins while a client waits for a cold start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::ids::{ContainerId, InstanceId, ProfileName, SessionId};
use crate::labels::{ClaimedName, PoolLabels};
use crate::observed::{ContainerState, Health, ObservedContainer};
use crate::policy::{Policy, ShutdownMode, StartupMode};
use crate::time::Timestamp;

mod spec;
pub use spec::{
    LAUNCHER_CLAIMED, LAUNCHER_PATH, LAUNCHER_WAITING, LauncherVersion, launcher_waiting, pooled_spec, settings_line,
};

/// How long after the last claim a pool that still holds more than half its size waits before it refills.
pub const REFILL_QUIET: Duration = Duration::from_secs(1);

/// One of this replica's pooled containers, as last observed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PooledContainer {
    /// Docker's id.
    pub id: ContainerId,
    /// Its pool labels.
    pub labels: PoolLabels,
    /// Its state.
    pub state: ContainerState,
    /// berth holds its attach stream.
    pub attached: bool,
    /// berth has seen the launcher say, on that stream, that it waits ([`LAUNCHER_WAITING`]): its terminal no
    /// longer echoes, and the settings can be written to its stdin.
    pub waiting: bool,
    /// The session that claimed it, once claimed (renamed). A claimed container is a session's, never the
    /// pool's again: the pool planner neither counts nor removes it.
    pub claimed_by: Option<SessionId>,
    /// berth has asked Docker to remove it.
    pub removal_requested: bool,
}

impl PooledContainer {
    fn unclaimed_and_live(&self) -> bool {
        self.claimed_by.is_none()
            && !self.removal_requested
            && !matches!(self.state, ContainerState::Removing | ContainerState::Exited | ContainerState::Dead)
    }

    /// Whether a session may claim it now under `policy`: running, attached and waiting, unclaimed, from the profile as it
    /// is now, and younger than its maximum age.
    pub fn is_ready(&self, policy: &Policy, now: Timestamp) -> bool {
        self.unclaimed_and_live() && self.state == ContainerState::Running && self.attached && self.fits(policy, now)
    }

    /// Its profile is still in the policy with a pool, with the same hash, and it is not past its maximum age.
    fn fits(&self, policy: &Policy, now: Timestamp) -> bool {
        policy.profiles.get(&self.labels.profile).is_some_and(|p| {
            !p.pool.is_off() && p.hash() == self.labels.policy_hash && now < self.labels.created_at.add(p.pool.max_age)
        })
    }
}

/// A pooled container as a full list reports it: the engine knows nothing of attach streams or launchers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListedPooled {
    /// Docker's id.
    pub id: ContainerId,
    /// Its pool labels.
    pub labels: PoolLabels,
    /// Its state.
    pub state: ContainerState,
    /// Its exit code, once exited and known.
    pub exit_code: Option<i64>,
    /// The session it was renamed to, once claimed.
    pub claimed: Option<ClaimedName>,
}

/// What the pool planner reads besides the policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PoolView {
    /// A complete list has been taken: nothing is planned before it.
    pub listed: bool,
    /// This replica's pooled containers, claimed ones included.
    pub containers: BTreeMap<ContainerId, PooledContainer>,
    /// Pooled containers being created (not yet listed), per profile.
    pub creating: BTreeMap<ProfileName, usize>,
    /// This replica's live sessions, with a container or still waiting for one (claimed ones included): they
    /// come first under `limits.max_sessions`.
    pub sessions: usize,
    /// The replica is shutting down.
    pub draining: bool,
    /// The replica's sentinel runs: no container is created while it does not (as for sessions).
    pub sentinel_up: bool,
    /// When a session last claimed a pooled container (of any profile).
    pub last_claim: Option<Timestamp>,
    /// Sessions whose client waits for a cold start (admitted, within the start timeout, not yet running and
    /// attached): no refill begins while there are any, so that refills never slow those creates and starts.
    pub starting: usize,
}

/// Why a pooled container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolRemoveReason {
    /// The pool is larger than its size (lowered, or set to 0).
    Shrunk,
    /// The profile changed (or left the policy): the container is not what a session would get now.
    Drained,
    /// Older than `pool.max_age`.
    Expired,
    /// Sessions need the room under `limits.max_sessions`.
    Displaced,
    /// It stopped, died, or never started within the start timeout.
    Failed,
    /// The replica is shutting down and its shutdown mode removes containers.
    Shutdown,
    /// A dead replica's pool, removed by the replica that took it over.
    DeadPeer,
    /// An earlier run's, removed at start by the startup mode.
    Startup,
}

impl PoolRemoveReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shrunk => "shrunk",
            Self::Drained => "drained",
            Self::Expired => "expired",
            Self::Displaced => "displaced",
            Self::Failed => "failed",
            Self::Shutdown => "shutdown",
            Self::DeadPeer => "dead_peer",
            Self::Startup => "startup",
        }
    }

    /// Every value, for pre-creating metric series.
    pub const ALL: [Self; 8] = [
        Self::Shrunk,
        Self::Drained,
        Self::Expired,
        Self::Displaced,
        Self::Failed,
        Self::Shutdown,
        Self::DeadPeer,
        Self::Startup,
    ];
}

/// One thing to do to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum PoolAction {
    /// Create this many pooled containers for a profile (then attach and start each).
    Fill {
        /// The profile.
        profile: ProfileName,
        /// How many.
        count: usize,
    },
    /// Attach to a created pooled container (before start, as for sessions).
    Attach {
        /// The container.
        container: ContainerId,
    },
    /// Start a created, attached pooled container.
    Start {
        /// The container.
        container: ContainerId,
    },
    /// Force-remove a pooled container.
    Remove {
        /// The container.
        container: ContainerId,
        /// Why.
        reason: PoolRemoveReason,
    },
}

/// Plans one pass over the pool. Pure: the same inputs always give the same actions. Removals come first, then
/// attaches and starts, then fills in profile order.
pub fn plan_pool(view: &PoolView, policy: &Policy, now: Timestamp) -> Vec<PoolAction> {
    let mut out = Vec::new();
    if !view.listed {
        return out;
    }
    let mut removed: BTreeSet<ContainerId> = BTreeSet::new();
    let remove = |out: &mut Vec<PoolAction>, removed: &mut BTreeSet<ContainerId>, c: &PooledContainer, reason| {
        if removed.insert(c.id.clone()) {
            out.push(PoolAction::Remove { container: c.id.clone(), reason });
        }
    };
    let unclaimed: Vec<&PooledContainer> =
        view.containers.values().filter(|c| c.claimed_by.is_none() && !c.removal_requested).collect();

    for c in &unclaimed {
        let failed = match c.state {
            ContainerState::Exited | ContainerState::Dead => true,
            ContainerState::Created => now >= c.labels.created_at.add(policy.reconcile.start_timeout),
            _ => false,
        };
        let reason = if failed {
            Some(PoolRemoveReason::Failed)
        } else if c.state == ContainerState::Removing {
            None
        } else if view.draining {
            (policy.reconcile.shutdown == ShutdownMode::Remove).then_some(PoolRemoveReason::Shutdown)
        } else {
            match policy.profiles.get(&c.labels.profile) {
                None => Some(PoolRemoveReason::Drained),
                Some(p) if p.pool.is_off() => Some(PoolRemoveReason::Shrunk),
                Some(p) if p.hash() != c.labels.policy_hash => Some(PoolRemoveReason::Drained),
                Some(p) if now >= c.labels.created_at.add(p.pool.max_age) => Some(PoolRemoveReason::Expired),
                Some(_) => None,
            }
        };
        if let Some(reason) = reason {
            remove(&mut out, &mut removed, c, reason);
        }
    }
    if view.draining {
        // No attach, start or refill while shutting down; what the shutdown mode leaves is the next start's.
        return out;
    }

    // What each profile's pool holds after those removals, oldest first.
    let mut kept: BTreeMap<&ProfileName, Vec<&PooledContainer>> = BTreeMap::new();
    for c in unclaimed.iter().filter(|c| c.unclaimed_and_live() && !removed.contains(&c.id)) {
        kept.entry(&c.labels.profile).or_default().push(c);
    }
    for list in kept.values_mut() {
        list.sort_by_key(|c| (c.labels.created_at, &c.id));
    }

    // Shrink a pool larger than its size: the oldest go first (containers being created count, and stay).
    for (profile, list) in &mut kept {
        let size = policy.profiles.get(*profile).map_or(0, |p| p.pool.size);
        let creating = view.creating.get(*profile).copied().unwrap_or(0);
        let surplus = (list.len() + creating).saturating_sub(size).min(list.len());
        for c in list.drain(..surplus) {
            remove(&mut out, &mut removed, c, PoolRemoveReason::Shrunk);
        }
    }

    // Sessions come first: when they and the pool do not fit under the cap together, the pool gives way, the
    // containers furthest from ready first, then the youngest.
    let pooled: usize = kept.values().map(Vec::len).sum::<usize>() + view.creating.values().sum::<usize>();
    let cap = policy.limits.max_sessions;
    let over = (view.sessions + pooled).saturating_sub(cap);
    if over > 0 {
        let mut candidates: Vec<&PooledContainer> = kept.values().flatten().copied().collect();
        candidates.sort_by_key(|c| {
            (
                c.state == ContainerState::Running && c.attached && c.waiting,
                std::cmp::Reverse(c.labels.created_at),
                &c.id,
            )
        });
        for c in candidates.into_iter().take(over) {
            remove(&mut out, &mut removed, c, PoolRemoveReason::Displaced);
        }
        for list in kept.values_mut() {
            list.retain(|c| !removed.contains(&c.id));
        }
    }

    for c in kept.values().flatten() {
        if c.state == ContainerState::Created && view.sentinel_up {
            let container = c.id.clone();
            out.push(if c.attached { PoolAction::Start { container } } else { PoolAction::Attach { container } });
        } else if c.state == ContainerState::Running && !c.attached {
            out.push(PoolAction::Attach { container: c.id.clone() });
        }
    }

    if !view.sentinel_up || view.starting > 0 {
        return out;
    }
    let pooled: usize = kept.values().map(Vec::len).sum::<usize>() + view.creating.values().sum::<usize>();
    let mut room = cap.saturating_sub(view.sessions + pooled);
    let claiming = view.last_claim.is_some_and(|t| now < t.add(REFILL_QUIET));
    for (name, profile) in &policy.profiles {
        if room == 0 {
            break;
        }
        let have = kept.get(name).map_or(0, Vec::len) + view.creating.get(name).copied().unwrap_or(0);
        if claiming && have * 2 > profile.pool.size {
            continue;
        }
        let count = profile.pool.size.saturating_sub(have).min(room);
        if count > 0 && profile.not_poolable().is_none() {
            room -= count;
            out.push(PoolAction::Fill { profile: name.clone(), count });
        }
    }
    out
}

/// The pooled container a new session of `profile` should claim now, if any: a ready one, the oldest first
/// (it is the nearest to its maximum age). The caller marks it claimed before it does anything else, so no
/// container is ever handed out twice.
pub fn choose<'a>(
    view: &'a PoolView,
    profile: &ProfileName,
    policy: &Policy,
    now: Timestamp,
) -> Option<&'a PooledContainer> {
    if view.draining {
        return None;
    }
    view.containers
        .values()
        .filter(|c| &c.labels.profile == profile && c.is_ready(policy, now))
        .min_by_key(|c| (c.labels.created_at, &c.id))
}

/// Ready and total (claimed ones left out) pooled containers per profile with a pool, for metrics.
pub fn counts(view: &PoolView, policy: &Policy, now: Timestamp) -> BTreeMap<ProfileName, (usize, usize)> {
    let mut out: BTreeMap<ProfileName, (usize, usize)> =
        policy.profiles.iter().filter(|(_, p)| !p.pool.is_off()).map(|(n, _)| (n.clone(), (0, 0))).collect();
    for c in view.containers.values().filter(|c| c.unclaimed_and_live()) {
        let entry = out.entry(c.labels.profile.clone()).or_default();
        entry.1 += 1;
        if c.is_ready(policy, now) {
            entry.0 += 1;
        }
    }
    out
}

/// What the first complete list after a start does with the pooled containers an earlier run left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolStartup {
    /// Claimed containers, as the session containers they are: the session startup adopts or removes them
    /// under its mode like any other ([`crate::startup::startup`]).
    pub claimed: Vec<ObservedContainer>,
    /// Unclaimed containers kept in the pool: berth attaches to them again (with history, which holds the
    /// launcher's [`LAUNCHER_WAITING`]), and the planner judges them like any other.
    pub adopt: Vec<ContainerId>,
    /// Unclaimed containers to remove.
    pub remove: Vec<ContainerId>,
}

/// Sorts this replica's pooled containers at startup by `reconcile.startup`: `remove_all` removes every
/// unclaimed one, `adopt` keeps the running ones, `conservative` keeps the running ones younger than
/// `reconcile.stale_age`; stopped ones are always removed. Another replica's pool is never touched: each replica
/// keeps its own (a dead replica's claimed containers reach their new owner through takeover).
pub fn startup_pool(listed: &[ListedPooled], owner: &InstanceId, policy: &Policy, now: Timestamp) -> PoolStartup {
    let mut out = PoolStartup::default();
    let stale_before = now.sub(policy.reconcile.stale_age);
    for c in listed.iter().filter(|c| &c.labels.owner == owner) {
        if let Some(name) = &c.claimed {
            out.claimed.push(ObservedContainer {
                id: c.id.clone(),
                labels: name.managed_labels(&c.labels),
                state: c.state,
                exit_code: c.exit_code,
                oom_killed: false,
                health: Health::Unknown,
                removal_requested: false,
            });
            continue;
        }
        let running = c.state == ContainerState::Running;
        let keep = match policy.reconcile.startup {
            StartupMode::Adopt => running,
            StartupMode::RemoveAll => false,
            StartupMode::Conservative => running && c.labels.created_at >= stale_before,
        };
        if keep {
            out.adopt.push(c.id.clone());
        } else if c.state != ContainerState::Removing {
            out.remove.push(c.id.clone());
        }
    }
    out
}

/// One line per profile with a pool, for `berth policy check` and berth's start: how many containers wait, and
/// that they count against `limits.max_sessions`, sessions first.
pub fn notes(policy: &Policy) -> Vec<String> {
    policy
        .profiles
        .iter()
        .filter(|(_, p)| !p.pool.is_off())
        .map(|(name, p)| {
            format!(
                "note: profiles.{name}.pool: {} containers wait, counted against limits.max_sessions ({}); sessions \
                 come first, and take the pool's room when they need it",
                p.pool.size, policy.limits.max_sessions
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
