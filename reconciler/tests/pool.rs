//! The warm pool as a model: any sequence of claims, refills, policy changes, deaths and passes of time, with the
//! pool planner's actions applied as a controller would apply them, never hands one container to two sessions,
//! never touches a claimed container, and never lets the pool take room that live sessions need.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_reconciler::ids::{ContainerId, ProfileName, SessionId};
use berth_reconciler::labels::PoolLabels;
use berth_reconciler::observed::ContainerState;
use berth_reconciler::policy::{Policy, PoolPolicy, Profile};
use berth_reconciler::pool::{PoolAction, PoolView, PooledContainer, choose, plan_pool};
use berth_reconciler::time::Timestamp;
use proptest::prelude::*;

const T0: Timestamp = Timestamp::from_secs(1_000_000);
const PROFILES: [&str; 2] = ["alpha", "beta"];

fn name(i: usize) -> ProfileName {
    PROFILES[i % PROFILES.len()].parse().expect("valid profile name")
}

/// One step of the world.
#[derive(Debug, Clone)]
enum Step {
    /// A client opens a session of profile `.0`: it claims a pooled container, or starts cold.
    Open(usize),
    /// The oldest live session ends.
    End,
    /// The pool planner runs and its actions are applied; `.0` says whether removals finish.
    Pass(bool),
    /// Profile `.0`'s pool is resized to `.1`.
    Resize(usize, usize),
    /// Profile `.0`'s image changes: its hash changes.
    Change(usize),
    /// Time passes.
    Wait(u64),
    /// The `.0`-th pooled container (in id order) dies.
    Die(usize),
    /// Creates in flight land as created containers.
    Land,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..2usize).prop_map(Step::Open),
        2 => Just(Step::End),
        4 => any::<bool>().prop_map(Step::Pass),
        1 => (0..2usize, 0..6usize).prop_map(|(p, n)| Step::Resize(p, n)),
        1 => (0..2usize).prop_map(Step::Change),
        1 => (1..400u64).prop_map(Step::Wait),
        1 => (0..8usize).prop_map(Step::Die),
        2 => Just(Step::Land),
    ]
}

struct World {
    policy: Policy,
    view: PoolView,
    now: Timestamp,
    next: u64,
    /// Every claim ever made: container → session.
    claims: BTreeMap<ContainerId, SessionId>,
    /// Live sessions in open order, with the container a claim gave them.
    sessions: Vec<(SessionId, Option<ContainerId>)>,
    images: [u32; 2],
}

impl World {
    fn new(cap: usize, sizes: (usize, usize)) -> Self {
        let mut policy = Policy::default();
        policy.limits.max_sessions = cap;
        policy.profiles = [0, 1].iter().map(|&i| (name(i), profile(0, [sizes.0, sizes.1][i]))).collect();
        let view = PoolView { listed: true, sentinel_up: true, ..PoolView::default() };
        Self { policy, view, now: T0, next: 0, claims: BTreeMap::new(), sessions: Vec::new(), images: [0, 0] }
    }

    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Open(p) => {
                let session = SessionId::from_bytes(u128::from(self.id()).to_be_bytes());
                let chosen = choose(&self.view, &name(*p), &self.policy, self.now).map(|c| c.id.clone());
                if let Some(id) = &chosen {
                    prop_assert!(self.claims.insert(id.clone(), session).is_none(), "{id:?} claimed twice");
                    let c = self.view.containers.get_mut(id).expect("chosen from the view");
                    prop_assert!(c.claimed_by.is_none());
                    prop_assert_eq!(&c.labels.policy_hash, &self.policy.profiles[&name(*p)].hash());
                    c.claimed_by = Some(session);
                    // Refills wait a moment after a claim (while the pool holds more than half its size).
                    self.view.last_claim = Some(self.now);
                }
                self.sessions.push((session, chosen));
            }
            Step::End => {
                if !self.sessions.is_empty() {
                    let (_, container) = self.sessions.remove(0);
                    // The session planner removes a claimed container with its session.
                    if let Some(id) = container {
                        self.view.containers.remove(&id);
                    }
                }
            }
            Step::Pass(finish) => self.pass(*finish)?,
            Step::Resize(p, n) => {
                self.policy.profiles.get_mut(&name(*p)).expect("profile").pool.size = *n;
            }
            Step::Change(p) => {
                self.images[*p] += 1;
                let size = self.policy.profiles[&name(*p)].pool.size;
                self.policy.profiles.insert(name(*p), profile(self.images[*p], size));
            }
            Step::Wait(s) => self.now = self.now.add(Duration::from_secs(*s)),
            Step::Die(i) => {
                if let Some(c) = self.view.containers.values_mut().nth(*i) {
                    c.state = ContainerState::Exited;
                }
            }
            Step::Land => {
                let creating = std::mem::take(&mut self.view.creating);
                for (profile, n) in creating {
                    for _ in 0..n {
                        let id: ContainerId = format!("{:012x}", self.id()).parse().expect("container id");
                        let labels = PoolLabels {
                            profile: profile.clone(),
                            owner: "berth-a".parse().expect("valid"),
                            epoch: 1,
                            created_at: self.now,
                            policy_hash: self.policy.profiles.get(&profile).map(Profile::hash).unwrap_or_default(),
                        };
                        let c = PooledContainer {
                            id: id.clone(),
                            labels,
                            state: ContainerState::Created,
                            attached: false,
                            waiting: false,
                            claimed_by: None,
                            removal_requested: false,
                        };
                        self.view.containers.insert(id, c);
                    }
                }
            }
        }
        Ok(())
    }

    fn pass(&mut self, finish: bool) -> Result<(), TestCaseError> {
        self.view.sessions = self.sessions.len();
        let actions = plan_pool(&self.view, &self.policy, self.now);
        let creating_before: usize = self.view.creating.values().sum();
        for action in &actions {
            let target = match action {
                PoolAction::Fill { .. } => None,
                PoolAction::Attach { container }
                | PoolAction::Start { container }
                | PoolAction::Remove { container, .. } => Some(container),
            };
            if let Some(id) = target {
                let c = self.view.containers.get(id).expect("planned for a listed container");
                prop_assert!(c.claimed_by.is_none(), "the pool planner touched claimed {id:?}: {action:?}");
            }
            match action {
                PoolAction::Fill { profile, count } => *self.view.creating.entry(profile.clone()).or_default() += count,
                PoolAction::Attach { container } => self.get(container).attached = true,
                PoolAction::Start { container } => {
                    // The launcher announces itself as soon as it runs.
                    let c = self.get(container);
                    c.state = ContainerState::Running;
                    c.waiting = true;
                }
                PoolAction::Remove { container, .. } => {
                    if finish {
                        self.view.containers.remove(container);
                    } else {
                        self.get(container).removal_requested = true;
                    }
                }
            }
        }
        // Fills only take room that sessions leave; once nothing is left to remove, the listed pool and the
        // sessions fit under the cap together, or no pool is left (creates in flight are judged when they land).
        let listed = self.view.containers.values().filter(|c| c.claimed_by.is_none() && !c.removal_requested).count();
        let filled: usize =
            actions.iter().map(|a| if let PoolAction::Fill { count, .. } = a { *count } else { 0 }).sum();
        let cap = self.policy.limits.max_sessions;
        let sessions = self.sessions.len();
        prop_assert!(
            filled == 0 || sessions + listed + creating_before + filled <= cap,
            "filled {filled} with {sessions} sessions, {listed} pooled and {creating_before} being created under {cap}"
        );
        let removes = actions.iter().any(|a| matches!(a, PoolAction::Remove { .. }));
        prop_assert!(
            removes || listed == 0 || sessions + listed <= cap,
            "{sessions} sessions and {listed} pooled under {cap}"
        );
        let claimed = self.view.containers.values().filter(|c| c.claimed_by.is_some()).count();
        prop_assert!(claimed <= sessions);
        Ok(())
    }

    fn get(&mut self, id: &ContainerId) -> &mut PooledContainer {
        self.view.containers.get_mut(id).expect("planned for a listed container")
    }
}

fn profile(image: u32, size: usize) -> Profile {
    let mut p = Profile::with_image(format!("berth-session:v{image}"));
    p.command = Some(vec!["/bin/sh".into()]);
    p.pool = PoolPolicy { size, max_age: Duration::from_secs(900) };
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_container_is_ever_claimed_twice_and_sessions_come_first(
        cap in 1..12usize,
        sizes in (0..6usize, 0..6usize),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut world = World::new(cap, sizes);
        for s in &steps {
            world.apply(s)?;
        }
        // Every claimed container went to exactly one session, which still holds it or has ended.
        let mut seen = std::collections::BTreeSet::new();
        for session in world.claims.values() {
            prop_assert!(seen.insert(*session), "a session claimed two containers");
        }
    }
}
