use std::time::Duration;

use super::*;
use crate::labels::ClaimedName;
use crate::policy::{PoolPolicy, Profile, StartupMode};

fn name(s: &str) -> ProfileName {
    s.parse().expect("valid profile name")
}

fn profile(size: usize) -> Profile {
    let mut p = Profile::with_image("berth-session:latest");
    p.command = Some(vec!["/bin/sh".into()]);
    p.pool = PoolPolicy { size, max_age: Duration::from_secs(600) };
    p
}

fn policy(size: usize) -> Policy {
    Policy { profiles: BTreeMap::from([(name("default"), profile(size))]), ..Policy::default() }
}

fn cid(n: u32) -> ContainerId {
    format!("{n:012x}").parse().expect("a container id")
}

const T0: Timestamp = Timestamp::from_secs(1_000_000);

struct Pool {
    view: PoolView,
    next: u32,
}

impl Pool {
    fn new() -> Self {
        Self { view: PoolView { listed: true, sentinel_up: true, ..PoolView::default() }, next: 0 }
    }

    /// Adds a container of `default` created at `at` from `policy`'s profile, in `state`, attached.
    fn with(mut self, policy: &Policy, state: ContainerState, at: Timestamp) -> Self {
        self.next += 1;
        let id = cid(self.next);
        let hash = policy.profiles[&name("default")].hash();
        let labels = PoolLabels {
            profile: name("default"),
            owner: "a".parse().expect("valid"),
            epoch: 1,
            created_at: at,
            policy_hash: hash,
        };
        let c = PooledContainer {
            id: id.clone(),
            labels,
            state,
            attached: true,
            waiting: true,
            claimed_by: None,
            removal_requested: false,
        };
        self.view.containers.insert(id, c);
        self
    }

    fn ready(self, policy: &Policy, n: usize) -> Self {
        (0..n).fold(self, |p, _| p.with(policy, ContainerState::Running, T0))
    }
}

fn removals(actions: &[PoolAction]) -> Vec<(ContainerId, PoolRemoveReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            PoolAction::Remove { container, reason } => Some((container.clone(), *reason)),
            _ => None,
        })
        .collect()
}

fn fills(actions: &[PoolAction]) -> usize {
    actions.iter().map(|a| if let PoolAction::Fill { count, .. } = a { *count } else { 0 }).sum()
}

#[test]
fn plans_nothing_before_the_first_complete_list() {
    let mut pool = Pool::new();
    pool.view.listed = false;
    assert_eq!(plan_pool(&pool.view, &policy(3), T0), Vec::new());
}

#[test]
fn refills_a_pool_below_its_size_counting_creates_in_flight() {
    let p = policy(5);
    let mut pool = Pool::new().ready(&p, 2);
    pool.view.creating.insert(name("default"), 1);
    assert_eq!(plan_pool(&pool.view, &p, T0), vec![PoolAction::Fill { profile: name("default"), count: 2 }]);
}

#[test]
fn a_refill_waits_for_claims_to_be_quiet_while_the_pool_holds_more_than_half() {
    let p = policy(6);
    let mut pool = Pool::new().ready(&p, 4);
    pool.view.last_claim = Some(T0);
    assert_eq!(fills(&plan_pool(&pool.view, &p, T0.add(Duration::from_millis(999)))), 0, "4 of 6: it waits");
    assert_eq!(fills(&plan_pool(&pool.view, &p, T0.add(REFILL_QUIET))), 2, "quiet for REFILL_QUIET: it refills");
    let mut low = Pool::new().ready(&p, 3);
    low.view.last_claim = Some(T0);
    assert_eq!(fills(&plan_pool(&low.view, &p, T0)), 3, "half or less: it refills at once");
}

#[test]
fn no_refill_begins_while_a_client_waits_for_a_cold_start() {
    let p = policy(4);
    let mut pool = Pool::new().ready(&p, 1);
    pool.view.starting = 2;
    assert_eq!(fills(&plan_pool(&pool.view, &p, T0)), 0, "two cold starts under way");
    pool.view.starting = 0;
    assert_eq!(fills(&plan_pool(&pool.view, &p, T0)), 3, "then it refills");
}

#[test]
fn keeps_no_pool_for_a_profile_with_size_zero() {
    let p = policy(0);
    assert_eq!(plan_pool(&Pool::new().view, &p, T0), Vec::new());
    let pool = Pool::new().ready(&policy(2), 2);
    assert_eq!(removals(&plan_pool(&pool.view, &p, T0)).len(), 2, "a pool set to 0 is emptied");
}

#[test]
fn shrinks_a_pool_whose_size_was_lowered_oldest_first() {
    let p = policy(1);
    let pool = Pool::new().with(&p, ContainerState::Running, T0).with(
        &p,
        ContainerState::Running,
        T0.add(Duration::from_secs(5)),
    );
    assert_eq!(
        plan_pool(&pool.view, &p, T0.add(Duration::from_secs(10))),
        vec![PoolAction::Remove { container: cid(1), reason: PoolRemoveReason::Shrunk }]
    );
}

#[test]
fn drains_the_pool_when_the_profile_changes_and_refills_it_from_the_new_one() {
    let old = policy(2);
    let pool = Pool::new().ready(&old, 2);
    let mut new = old.clone();
    new.profiles.get_mut(&name("default")).expect("profile").image = "berth-session:v2".into();
    let actions = plan_pool(&pool.view, &new, T0);
    assert_eq!(removals(&actions), vec![(cid(1), PoolRemoveReason::Drained), (cid(2), PoolRemoveReason::Drained)]);
    assert_eq!(fills(&actions), 2);
    assert_eq!(choose(&pool.view, &name("default"), &new, T0), None, "no session gets the old profile's container");
}

#[test]
fn resizing_a_pool_does_not_drain_it() {
    let p = policy(2);
    let pool = Pool::new().ready(&p, 2);
    let actions = plan_pool(&pool.view, &policy(4), T0);
    assert_eq!(actions, vec![PoolAction::Fill { profile: name("default"), count: 2 }]);
}

#[test]
fn recycles_containers_past_their_maximum_age() {
    let p = policy(1);
    let pool = Pool::new().ready(&p, 1);
    let later = T0.add(Duration::from_secs(600));
    let actions = plan_pool(&pool.view, &p, later);
    assert_eq!(removals(&actions), vec![(cid(1), PoolRemoveReason::Expired)]);
    assert_eq!(fills(&actions), 1);
    assert_eq!(choose(&pool.view, &name("default"), &p, later), None);
}

#[test]
fn attaches_then_starts_a_created_container_and_removes_a_stuck_or_dead_one() {
    let p = policy(3);
    let mut pool = Pool::new().with(&p, ContainerState::Created, T0).with(&p, ContainerState::Created, T0).with(
        &p,
        ContainerState::Exited,
        T0,
    );
    pool.view.containers.get_mut(&cid(1)).expect("c001").attached = false;
    let actions = plan_pool(&pool.view, &p, T0);
    assert!(actions.contains(&PoolAction::Attach { container: cid(1) }));
    assert!(actions.contains(&PoolAction::Start { container: cid(2) }));
    assert_eq!(removals(&actions), vec![(cid(3), PoolRemoveReason::Failed)]);
    let stuck = plan_pool(&pool.view, &p, T0.add(p.reconcile.start_timeout));
    assert_eq!(removals(&stuck).len(), 3);
}

#[test]
fn refills_only_use_the_room_live_sessions_leave() {
    let mut p = policy(10);
    p.limits.max_sessions = 12;
    let mut pool = Pool::new().ready(&p, 2);
    pool.view.sessions = 7;
    assert_eq!(fills(&plan_pool(&pool.view, &p, T0)), 3, "12 - 7 sessions - 2 pooled");
    pool.view.sessions = 10;
    assert_eq!(plan_pool(&pool.view, &p, T0), Vec::new());
}

#[test]
fn sessions_displace_pooled_containers_at_the_cap_least_ready_first() {
    let mut p = policy(3);
    p.limits.max_sessions = 4;
    let mut pool = Pool::new()
        .with(&p, ContainerState::Running, T0)
        .with(&p, ContainerState::Running, T0.add(Duration::from_secs(1)))
        .with(&p, ContainerState::Created, T0);
    pool.view.sessions = 3;
    let actions = plan_pool(&pool.view, &p, T0);
    assert_eq!(removals(&actions), vec![(cid(3), PoolRemoveReason::Displaced), (cid(2), PoolRemoveReason::Displaced)]);
    assert_eq!(fills(&actions), 0);
}

#[test]
fn never_touches_a_claimed_container() {
    let p = policy(1);
    let mut pool = Pool::new().ready(&p, 1);
    let c = pool.view.containers.values_mut().next().expect("one");
    c.claimed_by = Some(SessionId::from_bytes([1; 16]));
    c.state = ContainerState::Exited;
    pool.view.sessions = 1;
    let mut changed = p.clone();
    changed.profiles.get_mut(&name("default")).expect("profile").image = "other".into();
    for (policy, now) in [(&p, T0), (&changed, T0.add(Duration::from_secs(10_000)))] {
        let actions = plan_pool(&pool.view, policy, now);
        assert_eq!(removals(&actions), Vec::new());
        assert_eq!(fills(&actions), 1, "a claimed container leaves the pool: it is refilled");
        assert_eq!(choose(&pool.view, &name("default"), policy, now), None);
    }
}

#[test]
fn empties_the_pool_at_shutdown_only_when_the_shutdown_mode_removes() {
    let mut p = policy(2);
    let mut pool = Pool::new().ready(&p, 2);
    pool.view.draining = true;
    p.reconcile.shutdown = ShutdownMode::Remove;
    assert_eq!(removals(&plan_pool(&pool.view, &p, T0)).len(), 2);
    p.reconcile.shutdown = ShutdownMode::Leave;
    assert_eq!(plan_pool(&pool.view, &p, T0), Vec::new(), "left for the next start, which adopts or removes them");
    assert_eq!(choose(&pool.view, &name("default"), &p, T0), None, "no claim while shutting down");
}

#[test]
fn creates_nothing_while_the_sentinel_is_down() {
    let p = policy(2);
    let mut pool = Pool::new().with(&p, ContainerState::Created, T0);
    pool.view.sentinel_up = false;
    assert_eq!(plan_pool(&pool.view, &p, T0), Vec::new());
}

#[test]
fn a_session_claims_the_oldest_ready_container() {
    let p = policy(3);
    let mut pool = Pool::new()
        .with(&p, ContainerState::Running, T0.add(Duration::from_secs(2)))
        .with(&p, ContainerState::Running, T0)
        .with(&p, ContainerState::Created, T0);
    pool.view.containers.get_mut(&cid(1)).expect("c001").attached = false;
    let now = T0.add(Duration::from_secs(3));
    assert_eq!(choose(&pool.view, &name("default"), &p, now).map(|c| c.id.clone()), Some(cid(2)));
    assert_eq!(choose(&pool.view, &name("other"), &p, now), None);
    assert_eq!(counts(&pool.view, &p, now), BTreeMap::from([(name("default"), (1, 3))]));
}

#[test]
fn a_profile_with_a_pool_is_noted_and_one_without_is_not() {
    assert_eq!(notes(&policy(0)), Vec::<String>::new());
    let n = notes(&policy(3));
    assert_eq!(n.len(), 1);
    assert!(n[0].starts_with("note: profiles.default.pool: 3 containers wait"), "{n:?}");
    assert!(n[0].contains("limits.max_sessions (100)"), "{n:?}");
}

fn listed(n: u32, owner: &str, state: ContainerState, at: Timestamp, claimed: Option<ClaimedName>) -> ListedPooled {
    ListedPooled {
        id: cid(n),
        labels: PoolLabels {
            profile: name("default"),
            owner: owner.parse().expect("valid"),
            epoch: 1,
            created_at: at,
            policy_hash: "ab".into(),
        },
        state,
        exit_code: None,
        claimed,
    }
}

#[test]
fn startup_keeps_or_removes_unclaimed_containers_by_mode_and_hands_claimed_ones_to_their_sessions() {
    use crate::desired::SessionKind;
    let mut p = policy(3);
    p.reconcile.stale_age = Duration::from_secs(3600);
    let now = T0.add(Duration::from_secs(7200));
    let claim =
        ClaimedName { session: SessionId::from_bytes([4; 16]), kind: SessionKind::Anonymous, resume_hash: None };
    let list = [
        listed(1, "a", ContainerState::Running, now, None),
        listed(2, "a", ContainerState::Running, T0, None),
        listed(3, "a", ContainerState::Exited, now, None),
        listed(4, "a", ContainerState::Running, T0, Some(claim.clone())),
        listed(5, "b", ContainerState::Running, now, None),
    ];
    let owner: crate::ids::InstanceId = "a".parse().expect("valid");
    for (mode, adopt, remove) in [
        (StartupMode::Adopt, vec![cid(1), cid(2)], vec![cid(3)]),
        (StartupMode::Conservative, vec![cid(1)], vec![cid(2), cid(3)]),
        (StartupMode::RemoveAll, vec![], vec![cid(1), cid(2), cid(3)]),
    ] {
        p.reconcile.startup = mode;
        let s = startup_pool(&list, &owner, &p, now);
        assert_eq!((s.adopt, s.remove), (adopt, remove), "{mode:?}");
        assert_eq!(s.claimed.len(), 1, "{mode:?}");
        assert_eq!((s.claimed[0].id.clone(), s.claimed[0].labels.session), (cid(4), claim.session));
    }
}
