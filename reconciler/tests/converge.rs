//! Convergence: from any generated world, the planner plus a simulated Docker and controller reach the desired
//! state within a bounded number of passes, and never take down a healthy session on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use berth_reconciler::desired::{Attachment, Desired, DesiredSession, SessionKind};
use berth_reconciler::ids::{ContainerId, InstanceId, ProfileName, SessionId};
use berth_reconciler::labels::ManagedLabels;
use berth_reconciler::observed::{ContainerState, Health, Observed, ObservedContainer};
use berth_reconciler::plan::{Action, plan};
use berth_reconciler::policy::Policy;
use berth_reconciler::status::{EndReason, Phase, status_of};
use berth_reconciler::time::Timestamp;
use proptest::prelude::*;

/// Passes the simulation runs; the world must have converged by the end.
const ROUNDS: usize = 12;
/// The clock at the first pass; each pass is one second later.
const T0: Timestamp = Timestamp::from_secs(1_000_000);
/// A binding to a container that never existed (removed outside berth before the first list).
const DANGLING: &str = "dead0000dead";

fn us() -> InstanceId {
    "berth-a".parse().expect("valid instance id")
}

fn them() -> InstanceId {
    "berth-b".parse().expect("valid instance id")
}

fn container_id(n: u64) -> ContainerId {
    format!("{n:012x}").parse().expect("valid container id")
}

/// One generated container, before ids are assigned.
#[derive(Debug, Clone)]
struct GenContainer {
    state: ContainerState,
    exit_code: Option<i64>,
    oom_killed: bool,
    /// Seconds before `T0` (negative: after) that the container was labelled as created.
    created_ago: i64,
    removal_requested: bool,
    foreign: bool,
}

/// One generated desired session with its containers.
#[derive(Debug, Clone)]
struct GenSession {
    ending: bool,
    created_ago: u64,
    detached: bool,
    known_profile: bool,
    containers: Vec<GenContainer>,
    /// `Some(i)` binds containers\[i\] (or a dangling id when out of range).
    bind: Option<usize>,
    attached: bool,
}

#[derive(Debug, Clone)]
struct GenWorld {
    sessions: Vec<GenSession>,
    /// Containers of sessions nobody desires: ours are orphans, foreign ones are another instance's business.
    strays: Vec<(u8, GenContainer)>,
    listed: Option<u64>,
    stop_timeout: bool,
}

fn state() -> impl Strategy<Value = ContainerState> {
    prop_oneof![
        3 => Just(ContainerState::Running),
        2 => Just(ContainerState::Created),
        2 => Just(ContainerState::Exited),
        1 => Just(ContainerState::Dead),
        1 => Just(ContainerState::Removing),
    ]
}

fn gen_container() -> impl Strategy<Value = GenContainer> {
    (
        state(),
        prop::option::of(prop_oneof![Just(0i64), Just(1), Just(3), Just(137), Just(143)]),
        prop::bool::weighted(0.1),
        prop_oneof![0i64..40, 40i64..7200, -3i64..3],
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(state, exit_code, oom_killed, created_ago, removal_requested, foreign)| GenContainer {
            state,
            exit_code,
            oom_killed,
            created_ago,
            removal_requested,
            foreign,
        })
}

fn gen_session() -> impl Strategy<Value = GenSession> {
    (
        prop::bool::weighted(0.2),
        0u64..7200,
        any::<bool>(),
        prop::bool::weighted(0.95),
        prop::collection::vec(gen_container(), 0..4),
        prop::option::of(0usize..4),
        any::<bool>(),
    )
        .prop_map(|(ending, created_ago, detached, known_profile, containers, bind, attached)| GenSession {
            ending,
            created_ago,
            detached,
            known_profile,
            containers,
            bind,
            attached,
        })
}

fn gen_world() -> impl Strategy<Value = GenWorld> {
    (
        prop::collection::vec(gen_session(), 0..8),
        prop::collection::vec((0u8..12, gen_container()), 0..5),
        prop::option::weighted(0.85, 0u64..5),
        any::<bool>(),
    )
        .prop_map(|(sessions, strays, listed, stop_timeout)| GenWorld { sessions, strays, listed, stop_timeout })
}

/// The simulated world: desired state, Docker's containers as berth observes them, the policy and the clock.
#[derive(Debug)]
struct Sim {
    desired: Desired,
    observed: Observed,
    policy: Policy,
    now: Timestamp,
    next_id: u64,
}

fn ago(secs: i64) -> Timestamp {
    if secs >= 0 {
        T0.sub(Duration::from_secs(secs.unsigned_abs()))
    } else {
        T0.add(Duration::from_secs(secs.unsigned_abs()))
    }
}

impl Sim {
    fn build(g: &GenWorld) -> (Self, BTreeSet<SessionId>) {
        let mut policy = Policy::default();
        let far = Duration::from_secs(1000 * 24 * 3600);
        policy.sessions.max_lifetime = far;
        policy.sessions.idle_timeout = far;
        policy.sessions.resume_grace = far;
        policy.reconcile.start_timeout = Duration::from_secs(60);
        policy.reconcile.stop_timeout = if g.stop_timeout { Duration::from_secs(10) } else { Duration::ZERO };
        let mut sim = Self {
            desired: Desired::new(us()),
            observed: Observed { listed_at: g.listed.map(|s| T0.sub(Duration::from_secs(s))), ..Observed::default() },
            policy,
            now: T0,
            next_id: 0x1000,
        };
        // Sessions that start with nothing of ours and a known profile: they must end up running.
        let mut fresh = BTreeSet::new();
        for (i, gs) in g.sessions.iter().enumerate() {
            let id = SessionId::from_bytes([u8::try_from(i + 1).expect("few sessions"); 16]);
            let profile = if gs.known_profile { ProfileName::default_name() } else { "gone".parse().expect("valid") };
            let mut s = DesiredSession::new(
                id,
                profile,
                SessionKind::Anonymous,
                ago(i64::try_from(gs.created_ago).unwrap_or(0)),
            );
            s.last_activity = T0;
            if gs.detached {
                s.attachment = Attachment::Detached { since: T0 };
            }
            if gs.ending {
                s.ending = Some(EndReason::Released);
            }
            let ids: Vec<ContainerId> = gs.containers.iter().map(|c| sim.add(id, c)).collect();
            s.container = gs.bind.map(|b| ids.get(b).cloned().unwrap_or_else(|| DANGLING.parse().expect("valid")));
            if gs.attached {
                sim.observed.attached.insert(id);
            }
            if !gs.ending && gs.known_profile && s.container.is_none() && gs.containers.iter().all(|c| c.foreign) {
                fresh.insert(id);
            }
            sim.desired.sessions.insert(id, s);
        }
        for (n, c) in &g.strays {
            // Our strays belong to sessions nobody desires; foreign ones may share an id with ours.
            let session = if c.foreign { *n } else { 100 + *n };
            sim.add(SessionId::from_bytes([session; 16]), c);
        }
        (sim, fresh)
    }

    fn add(&mut self, session: SessionId, g: &GenContainer) -> ContainerId {
        let id = container_id(self.next_id);
        self.next_id += 1;
        let labels = ManagedLabels {
            session,
            owner: if g.foreign { them() } else { us() },
            created_at: ago(g.created_ago),
            profile: ProfileName::default_name(),
            kind: SessionKind::Anonymous,
            policy_hash: "00".into(),
            resume_hash: None,
            epoch: 0,
        };
        let exited = matches!(g.state, ContainerState::Exited | ContainerState::Dead);
        self.observed.containers.insert(
            id.clone(),
            ObservedContainer {
                id: id.clone(),
                labels,
                state: g.state,
                exit_code: if exited { g.exit_code } else { None },
                oom_killed: exited && g.oom_killed,
                health: Health::Unknown,
                removal_requested: g.removal_requested,
            },
        );
        id
    }

    fn ours(&self, c: &ContainerId) -> Result<&ObservedContainer, TestCaseError> {
        let found =
            self.observed.containers.get(c).ok_or_else(|| TestCaseError::fail(format!("{c:?} does not exist")))?;
        prop_assert_eq!(&found.labels.owner, &self.desired.owner, "{:?} belongs to another instance", c);
        Ok(found)
    }

    /// Fails when `c` is the bound, running container of a desired session that is not ending.
    fn not_a_healthy_sessions_container(&self, c: &ContainerId) -> Result<(), TestCaseError> {
        let Some(container) = self.observed.containers.get(c) else { return Ok(()) };
        let Some(s) = self.desired.sessions.get(&container.labels.session) else { return Ok(()) };
        let healthy =
            s.ending.is_none() && s.container.as_ref() == Some(c) && container.state == ContainerState::Running;
        prop_assert!(!healthy, "took down {:?}, the running container of live session {:?}", c, s.id);
        Ok(())
    }

    /// Carries out one action the way Docker and the executor would.
    fn apply(&mut self, action: &Action) -> Result<(), TestCaseError> {
        for c in action.containers() {
            self.ours(c)?;
        }
        match action {
            Action::Create { session, spec } => {
                let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
                let labels = ManagedLabels::parse(&self.policy.docker.namespace, &labels)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .ok_or_else(|| TestCaseError::fail("created container is not marked"))?;
                prop_assert_eq!(labels.session, *session);
                let live = self.observed.containers.values().filter(|c| {
                    c.labels.session == *session
                        && c.labels.owner == self.desired.owner
                        && !c.removal_requested
                        && c.state != ContainerState::Removing
                });
                prop_assert_eq!(live.count(), 0, "second container created for {:?}", session);
                let id = container_id(self.next_id);
                self.next_id += 1;
                self.observed.containers.insert(
                    id.clone(),
                    ObservedContainer {
                        id: id.clone(),
                        labels,
                        state: ContainerState::Created,
                        exit_code: None,
                        oom_killed: false,
                        health: Health::Unknown,
                        removal_requested: false,
                    },
                );
                let s = self
                    .desired
                    .sessions
                    .get_mut(session)
                    .ok_or_else(|| TestCaseError::fail("create for no session"))?;
                s.container = Some(id);
            }
            Action::Attach { session, container } => {
                let c = self.ours(container)?;
                prop_assert!(matches!(c.state, ContainerState::Created | ContainerState::Running), "attach to {c:?}");
                self.observed.attached.insert(*session);
            }
            Action::Start { session, container } => {
                prop_assert!(self.observed.attached.contains(session), "started before attaching");
                let c = self.observed.containers.get_mut(container).ok_or_else(|| TestCaseError::fail("gone"))?;
                prop_assert_eq!(c.state, ContainerState::Created);
                c.state = ContainerState::Running;
            }
            Action::Stop { container, .. } => {
                self.not_a_healthy_sessions_container(container)?;
                let c = self.observed.containers.get_mut(container).ok_or_else(|| TestCaseError::fail("gone"))?;
                c.state = ContainerState::Exited;
                c.exit_code = Some(143);
            }
            Action::Remove { container, .. } => {
                self.not_a_healthy_sessions_container(container)?;
                self.observed.containers.remove(container);
            }
            Action::BulkRemove { containers, .. } => {
                for c in containers {
                    self.not_a_healthy_sessions_container(c)?;
                    self.observed.containers.remove(c);
                }
            }
        }
        Ok(())
    }

    /// What happens between passes: removals under way finish, streams of stopped containers close, the
    /// controller records ends and forgets gone sessions, and a fresh list is taken a second later.
    fn settle(&mut self, ends: &[(SessionId, EndReason)]) {
        let owner = self.desired.owner.clone();
        self.observed
            .containers
            .retain(|_, c| c.labels.owner != owner || (!c.removal_requested && c.state != ContainerState::Removing));
        let streaming: BTreeSet<SessionId> = self
            .observed
            .containers
            .values()
            .filter(|c| c.labels.owner == owner && matches!(c.state, ContainerState::Created | ContainerState::Running))
            .map(|c| c.labels.session)
            .collect();
        self.observed.attached.retain(|s| streaming.contains(s));
        for (id, reason) in ends {
            if let Some(s) = self.desired.sessions.get_mut(id) {
                s.ending.get_or_insert_with(|| reason.clone());
            }
        }
        let observed = &self.observed;
        let scope = self.desired.clone();
        self.desired.sessions.retain(|_, s| status_of(s, observed, &scope).phase != Phase::Gone);
        self.now = self.now.add(Duration::from_secs(1));
        self.observed.listed_at = Some(self.now);
    }
}

fn foreign(observed: &Observed, owner: &InstanceId) -> BTreeMap<ContainerId, ObservedContainer> {
    observed
        .containers
        .iter()
        .filter(|(_, c)| &c.labels.owner != owner)
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_world_converges_without_taking_down_a_healthy_session(g in gen_world()) {
        let (mut sim, fresh) = Sim::build(&g);
        let foreign_before = foreign(&sim.observed, &sim.desired.owner);

        for _ in 0..ROUNDS {
            let p = plan(&sim.desired, &sim.observed, &sim.policy, sim.now);
            for action in &p.actions {
                sim.apply(action)?;
            }
            sim.settle(&p.ends);
        }

        let last = plan(&sim.desired, &sim.observed, &sim.policy, sim.now);
        prop_assert!(last.actions.is_empty() && last.ends.is_empty(), "not converged after {} passes: {:?}", ROUNDS, last);

        let owner = sim.desired.owner.clone();
        for s in sim.desired.sessions.values() {
            let mine: Vec<&ObservedContainer> = sim
                .observed
                .containers
                .values()
                .filter(|c| c.labels.owner == owner && c.labels.session == s.id)
                .collect();
            if s.ending.is_some() {
                prop_assert!(mine.is_empty(), "ending session {:?} still has {:?}", s.id, mine);
                continue;
            }
            prop_assert_eq!(mine.len(), 1, "session {:?} has {:?}", s.id, mine);
            prop_assert_eq!(mine[0].state, ContainerState::Running);
            prop_assert!(sim.observed.attached.contains(&s.id), "session {:?} is not attached", s.id);
        }
        for c in sim.observed.containers.values().filter(|c| c.labels.owner == owner) {
            prop_assert!(sim.desired.sessions.contains_key(&c.labels.session), "orphan {:?} survived", c.id);
        }
        prop_assert_eq!(foreign(&sim.observed, &owner), foreign_before, "another instance's containers changed");
        for id in &fresh {
            let s = sim.desired.sessions.get(id);
            prop_assert!(s.is_some_and(|s| s.ending.is_none()), "new session {:?} was ended: {:?}", id, s.map(|s| &s.ending));
        }
    }
}
