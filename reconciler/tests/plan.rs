//! Planner, startup and status tests: small builder fixtures, one behaviour per test, assertions on the exact plan.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_reconciler::desired::{Attachment, Desired, DesiredSession, EnvVar, SessionKind};
use berth_reconciler::ids::{ContainerId, InstanceId, ProfileName, SessionId};
use berth_reconciler::labels::ManagedLabels;
use berth_reconciler::observed::{ContainerState, Health, Observed, ObservedContainer};
use berth_reconciler::plan::{Action, ContainerSpec, Plan, RemoveReason, plan};
use berth_reconciler::policy::{LogLimits, Policy, Profile, Resources, Security, StartupMode, UnhealthyAction};
use berth_reconciler::startup::{Startup, startup};
use berth_reconciler::status::{EndReason, Phase, status_of};
use berth_reconciler::time::Timestamp;

// ---------------------------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------------------------

/// "Now" in every test, unless a test says otherwise.
const NOW: Timestamp = Timestamp::from_secs(1_000_000);

fn ago(secs: u64) -> Timestamp {
    NOW.sub(Duration::from_secs(secs))
}

fn sid(n: u8) -> SessionId {
    SessionId::from_bytes([n; 16])
}

fn cid(n: u32) -> ContainerId {
    format!("c0ffee{n:06x}").parse().expect("valid container id")
}

fn us() -> InstanceId {
    "berth-a".parse().expect("valid instance id")
}

fn them() -> InstanceId {
    "berth-b".parse().expect("valid instance id")
}

fn profile_name(name: &str) -> ProfileName {
    name.parse().expect("valid profile name")
}

/// A desired session under construction.
#[derive(Debug)]
struct SessionBuilder(DesiredSession);

/// Session `n`, attached, created ten seconds ago, on the default profile.
fn session(n: u8) -> SessionBuilder {
    SessionBuilder(DesiredSession::new(sid(n), ProfileName::default_name(), SessionKind::Anonymous, ago(10)))
}

impl SessionBuilder {
    fn bound(mut self, c: u32) -> Self {
        self.0.container = Some(cid(c));
        self
    }

    fn ending(mut self, reason: EndReason) -> Self {
        self.0.ending = Some(reason);
        self
    }

    fn created(mut self, at: Timestamp) -> Self {
        self.0.created_at = at;
        self
    }

    fn active(mut self, at: Timestamp) -> Self {
        self.0.last_activity = at;
        self
    }

    fn detached_since(mut self, since: Timestamp) -> Self {
        self.0.attachment = Attachment::Detached { since };
        self
    }

    fn profile(mut self, name: &str) -> Self {
        self.0.profile = profile_name(name);
        self
    }
}

/// An observed container under construction.
#[derive(Debug)]
struct ContainerBuilder(ObservedContainer);

/// Container `c` of session `s`, ours, running, created five seconds ago.
fn container(c: u32, s: u8) -> ContainerBuilder {
    ContainerBuilder(ObservedContainer {
        id: cid(c),
        labels: ManagedLabels {
            session: sid(s),
            owner: us(),
            created_at: ago(5),
            profile: ProfileName::default_name(),
            kind: SessionKind::Anonymous,
            policy_hash: "00".into(),
            resume_hash: None,
            epoch: 0,
        },
        state: ContainerState::Running,
        exit_code: None,
        oom_killed: false,
        health: Health::Unknown,
        removal_requested: false,
    })
}

impl ContainerBuilder {
    fn state(mut self, state: ContainerState) -> Self {
        self.0.state = state;
        self
    }

    fn created(mut self, at: Timestamp) -> Self {
        self.0.labels.created_at = at;
        self
    }

    fn exited(mut self, code: Option<i64>, oom_killed: bool) -> Self {
        self.0.state = ContainerState::Exited;
        self.0.exit_code = code;
        self.0.oom_killed = oom_killed;
        self
    }

    fn owner(mut self, owner: InstanceId) -> Self {
        self.0.labels.owner = owner;
        self
    }

    fn health(mut self, health: Health) -> Self {
        self.0.health = health;
        self
    }

    fn removal_requested(mut self) -> Self {
        self.0.removal_requested = true;
        self
    }
}

/// Desired and observed state, a policy and a clock: everything `plan` reads.
#[derive(Debug)]
struct World {
    desired: Desired,
    observed: Observed,
    policy: Policy,
    now: Timestamp,
}

impl World {
    /// Nothing desired, nothing observed, fully listed one second ago, default policy.
    fn new() -> Self {
        Self {
            desired: Desired::new(us()),
            observed: Observed { listed_at: Some(ago(1)), ..Observed::default() },
            policy: Policy::default(),
            now: NOW,
        }
    }

    fn desired(mut self, s: SessionBuilder) -> Self {
        self.desired.sessions.insert(s.0.id, s.0);
        self
    }

    fn observed(mut self, c: ContainerBuilder) -> Self {
        self.observed.containers.insert(c.0.id.clone(), c.0);
        self
    }

    fn attached(mut self, s: u8) -> Self {
        self.observed.attached.insert(sid(s));
        self
    }

    fn listed_at(mut self, at: Option<Timestamp>) -> Self {
        self.observed.listed_at = at;
        self
    }

    fn draining(mut self) -> Self {
        self.desired.draining = true;
        self
    }

    fn without_sentinel(mut self) -> Self {
        self.desired.sentinel_up = false;
        self
    }

    fn policy(mut self, f: impl FnOnce(&mut Policy)) -> Self {
        f(&mut self.policy);
        self
    }

    fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }

    fn plan(&self) -> Plan {
        plan(&self.desired, &self.observed, &self.policy, self.now)
    }

    fn startup(&self) -> Startup {
        startup(&self.desired, &self.observed, &self.policy, self.now)
    }

    fn status(&self, s: u8) -> berth_reconciler::status::Status {
        status_of(&self.desired.sessions[&sid(s)], &self.observed, &self.desired)
    }
}

fn attach(s: u8, c: u32) -> Action {
    Action::Attach { session: sid(s), container: cid(c) }
}

fn start(s: u8, c: u32) -> Action {
    Action::Start { session: sid(s), container: cid(c) }
}

fn stop(s: u8, c: u32, timeout: Duration) -> Action {
    Action::Stop { session: sid(s), container: cid(c), timeout }
}

fn remove(s: u8, c: u32, reason: RemoveReason) -> Action {
    Action::Remove { session: Some(sid(s)), container: cid(c), reason }
}

fn bulk_remove(cs: &[u32], reason: RemoveReason) -> Action {
    Action::BulkRemove { containers: cs.iter().map(|c| cid(*c)).collect(), reason }
}

fn create_failed(error: &str) -> EndReason {
    EndReason::CreateFailed { error: error.into() }
}

// ---------------------------------------------------------------------------------------------------------------
// The first list
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn plans_nothing_before_the_first_full_list() {
    let world = World::new()
        .listed_at(None)
        .desired(session(1))
        .desired(session(2).bound(2))
        .desired(session(3).ending(EndReason::Released).bound(3))
        .observed(container(3, 3))
        .observed(container(4, 4).created(ago(3600)).state(ContainerState::Exited));
    assert_eq!(world.plan(), Plan::default());
}

// ---------------------------------------------------------------------------------------------------------------
// Creating
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn creates_a_hardened_labelled_container_named_after_a_new_session() {
    let mut s = session(1);
    s.0.kind = SessionKind::Authenticated;
    s.0.resume_hash = Some("ab".repeat(32));
    s.0.env = vec![
        EnvVar { name: "TERM".into(), value: "xterm-256color".into(), sensitive: false },
        EnvVar { name: "API_TOKEN".into(), value: "s3cret".into(), sensitive: true },
    ];
    let mut world = World::new().desired(s).policy(|p| {
        let profile = p.profiles.get_mut(&ProfileName::default_name()).expect("default profile");
        profile.env = BTreeMap::from([("TERM".into(), "dumb".into()), ("LANG".into(), "C.UTF-8".into())]);
    });
    world.desired.epoch = 7;
    let profile = world.policy.profiles[&ProfileName::default_name()].clone();

    let expected = ContainerSpec {
        name: "berth-01010101010101010101010101010101".into(),
        image: "berth-session:latest".into(),
        command: None,
        env: vec![
            EnvVar { name: "LANG".into(), value: "C.UTF-8".into(), sensitive: false },
            EnvVar { name: "TERM".into(), value: "xterm-256color".into(), sensitive: false },
            EnvVar { name: "API_TOKEN".into(), value: "s3cret".into(), sensitive: true },
        ],
        labels: BTreeMap::from(
            [
                ("io.berth.managed", "true".to_owned()),
                ("io.berth.session", "01010101010101010101010101010101".to_owned()),
                ("io.berth.owner", "berth-a".to_owned()),
                ("io.berth.created", NOW.as_millis().to_string()),
                ("io.berth.profile", "default".to_owned()),
                ("io.berth.kind", "authenticated".to_owned()),
                ("io.berth.policy-hash", profile.hash()),
                ("io.berth.epoch", "7".to_owned()),
                ("io.berth.resume-hash", "ab".repeat(32)),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        ),
        user: "1000:1000".into(),
        working_dir: None,
        resources: Resources::default(),
        security: Security::default(),
        network: "none".into(),
        healthcheck: None,
        logs: LogLimits::default(),
        runtime: None,
        launcher: None,
    };
    assert_eq!(
        world.plan(),
        Plan { actions: vec![Action::Create { session: sid(1), spec: Box::new(expected) }], ends: vec![] }
    );
}

#[test]
fn every_create_of_one_profile_in_one_pass_gets_its_own_full_spec() {
    // The planner builds the first spec of a profile in full and makes the others from it: each must equal the
    // spec built for its session alone (kind, resume hash and env differ here).
    let mut world = World::new().policy(|p| {
        let d = p.profiles.get_mut(&ProfileName::default_name()).expect("default profile");
        d.env.insert("FIXED".into(), "1".into());
        d.env.insert("OVERRIDDEN".into(), "profile".into());
    });
    for n in 1..=4u8 {
        let mut s = session(n);
        if n % 2 == 0 {
            s.0.kind = SessionKind::Authenticated;
            s.0.resume_hash = Some(format!("{n:02x}").repeat(32));
        }
        if n == 3 {
            s.0.env = vec![EnvVar { name: "OVERRIDDEN".into(), value: "client".into(), sensitive: false }];
        }
        world = world.desired(s);
    }
    let plan = world.plan();
    assert_eq!(plan.actions.len(), 4, "{plan:?}");
    let profile = world.policy.profiles.get(&ProfileName::default_name()).expect("default profile");
    for action in &plan.actions {
        let Action::Create { session, spec } = action else { panic!("expected creates, got {action:?}") };
        let s = &world.desired.sessions[session];
        let alone = ContainerSpec::build(&world.desired, s, profile, &world.policy, world.now);
        assert_eq!(**spec, alone, "session {session}");
    }
}

#[test]
fn the_default_profile_confines_new_containers() {
    let world = World::new().desired(session(1));
    let plan = world.plan();
    let [Action::Create { spec, .. }] = plan.actions.as_slice() else {
        panic!("expected one create, got {:?}", plan.actions);
    };
    assert!(spec.is_marked(&world.policy.docker.namespace));
    assert_eq!(spec.network, "none");
    assert_eq!(spec.user, "1000:1000");
    assert!(spec.security.read_only_root);
    assert!(spec.security.cap_drop_all);
    assert!(spec.security.no_new_privileges);
    assert!(spec.security.init);
    assert!(spec.resources.memory_bytes > 0 && spec.resources.nano_cpus > 0 && spec.resources.pids > 0);
}

#[test]
fn creates_from_the_sessions_own_profile() {
    let mut locked = Profile::with_image("registry.example/locked:1");
    locked.resources.pids = 20;
    locked.security.seccomp = Some("/etc/berth/seccomp.json".into());
    let world = World::new().desired(session(1).profile("locked")).policy(|p| {
        p.profiles.insert(profile_name("locked"), locked.clone());
    });
    let plan = world.plan();
    let [Action::Create { spec, .. }] = plan.actions.as_slice() else {
        panic!("expected one create, got {:?}", plan.actions);
    };
    assert_eq!(spec.image, "registry.example/locked:1");
    assert_eq!(spec.resources, locked.resources);
    assert_eq!(spec.security, locked.security);
    assert_eq!(spec.labels["io.berth.profile"], "locked");
    assert_eq!(spec.labels["io.berth.policy-hash"], locked.hash());
}

#[test]
fn ends_a_session_whose_profile_left_the_policy_before_it_had_a_container() {
    let world = World::new().desired(session(1).profile("gone"));
    assert_eq!(
        world.plan(),
        Plan { actions: vec![], ends: vec![(sid(1), create_failed("profile gone is no longer in the policy"))] }
    );
}

#[test]
fn a_container_created_late_in_a_sessions_life_is_not_taken_for_stuck() {
    // A session two hours old gets a new container (a slow create, a retry, an unhealthy replacement).
    let world = World::new().desired(session(1).created(ago(7200)).detached_since(ago(1)));
    let plan = world.plan();
    let [Action::Create { spec, .. }] = plan.actions.as_slice() else {
        panic!("expected one create, got {:?}", plan.actions);
    };
    // Docker reports the container back with the labels berth gave it.
    let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    let labels = ManagedLabels::parse(&world.policy.docker.namespace, &labels).expect("parses").expect("managed");
    let mut c = container(1, 1).state(ContainerState::Created);
    c.0.labels = labels;
    let later =
        World { desired: world.desired.clone(), ..World::new() }.observed(c).at(NOW.add(Duration::from_secs(2)));
    assert_eq!(later.plan(), Plan { actions: vec![attach(1, 1)], ends: vec![] });
}

// ---------------------------------------------------------------------------------------------------------------
// Attaching and starting
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn attaches_before_starting_and_leaves_a_running_attached_container_alone() {
    use ContainerState::{Created, Running};
    let table: [(&str, ContainerState, bool, Vec<Action>); 4] = [
        ("created, not attached", Created, false, vec![attach(1, 1)]),
        ("created, attached", Created, true, vec![start(1, 1)]),
        ("running, not attached", Running, false, vec![attach(1, 1)]),
        ("running, attached", Running, true, vec![]),
    ];
    for (case, state, attached, expected) in table {
        let mut world = World::new().desired(session(1).bound(1)).observed(container(1, 1).state(state));
        if attached {
            world = world.attached(1);
        }
        assert_eq!(world.plan(), Plan { actions: expected, ends: vec![] }, "{case}");
    }
}

#[test]
fn takes_an_unbound_container_of_the_session_as_its_own() {
    let world = World::new().desired(session(1)).observed(container(1, 1).state(ContainerState::Created));
    assert_eq!(world.plan(), Plan { actions: vec![attach(1, 1)], ends: vec![] });
}

#[test]
fn leaves_paused_and_restarting_containers_alone() {
    for state in [ContainerState::Paused, ContainerState::Restarting] {
        let world = World::new().desired(session(1).bound(1)).observed(container(1, 1).state(state)).attached(1);
        assert_eq!(world.plan(), Plan::default(), "{state:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Containers that stopped by themselves
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn ends_a_session_whose_container_stopped_by_itself_and_removes_the_container() {
    let table: [(&str, Option<i64>, bool, EndReason); 6] = [
        ("exit 0", Some(0), false, EndReason::Exited { code: 0 }),
        ("exit 3", Some(3), false, EndReason::Exited { code: 3 }),
        ("docker kill", Some(137), false, EndReason::Killed { signal: 9 }),
        ("sigterm", Some(143), false, EndReason::Killed { signal: 15 }),
        ("oom killer", Some(137), true, EndReason::OomKilled),
        ("no exit code", None, false, EndReason::Killed { signal: 9 }),
    ];
    for (case, code, oom, reason) in table {
        let world = World::new().desired(session(1).bound(1)).observed(container(1, 1).exited(code, oom)).attached(1);
        assert_eq!(
            world.plan(),
            Plan { actions: vec![remove(1, 1, RemoveReason::SessionEnded)], ends: vec![(sid(1), reason)] },
            "{case}"
        );
    }
}

#[test]
fn ends_a_session_whose_container_is_dead() {
    let world = World::new().desired(session(1).bound(1)).observed(container(1, 1).state(ContainerState::Dead));
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![remove(1, 1, RemoveReason::SessionEnded)],
            ends: vec![(sid(1), EndReason::Killed { signal: 9 })]
        }
    );
}

#[test]
fn ends_a_session_whose_bound_container_was_removed_outside_berth() {
    let world = World::new().desired(session(1).bound(1)).attached(1);
    assert_eq!(world.plan(), Plan { actions: vec![], ends: vec![(sid(1), EndReason::RemovedOutsideBerth)] });
}

// ---------------------------------------------------------------------------------------------------------------
// Orphans and other owners
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn removes_orphans_listed_before_the_list_in_one_bulk_remove() {
    let world = World::new()
        .observed(container(2, 2).created(ago(3600)))
        .observed(container(1, 1).created(ago(2)).state(ContainerState::Exited))
        .observed(container(3, 3).created(ago(60)).state(ContainerState::Created));
    assert_eq!(world.plan(), Plan { actions: vec![bulk_remove(&[1, 2, 3], RemoveReason::Orphan)], ends: vec![] });
}

#[test]
fn removes_container_whose_session_was_released_and_dropped() {
    let world =
        World::new().desired(session(1).bound(1)).observed(container(1, 1)).observed(container(2, 2)).attached(1);
    assert_eq!(world.plan(), Plan { actions: vec![bulk_remove(&[2], RemoveReason::Orphan)], ends: vec![] });
}

#[test]
fn leaves_an_orphan_newer_than_the_list_for_a_later_pass() {
    let listed = ago(1);
    let world = World::new()
        .observed(container(1, 1).created(listed))
        .observed(container(2, 2).created(listed.add(Duration::from_millis(1))))
        .observed(container(3, 3).created(listed.sub(Duration::from_millis(1))));
    assert_eq!(world.plan(), Plan { actions: vec![bulk_remove(&[3], RemoveReason::Orphan)], ends: vec![] });

    let next = world.listed_at(Some(NOW));
    assert_eq!(next.plan(), Plan { actions: vec![bulk_remove(&[1, 2, 3], RemoveReason::Orphan)], ends: vec![] });
}

#[test]
fn never_touches_containers_of_another_instance() {
    let world = World::new()
        // Would be an orphan if it were ours.
        .observed(container(1, 9).owner(them()).created(ago(3600)))
        // Would be a duplicate, an exit or a stuck container of our sessions if it were ours.
        .desired(session(2).bound(2))
        .observed(container(2, 2))
        .attached(2)
        .observed(container(3, 2).owner(them()).exited(Some(1), false))
        .observed(container(4, 2).owner(them()).state(ContainerState::Created).created(ago(3600)))
        // An ending session: only our container goes.
        .desired(session(5).bound(5).ending(EndReason::Released))
        .observed(container(5, 5))
        .observed(container(6, 5).owner(them()))
        // A session with only a foreign container still gets its own.
        .desired(session(7))
        .observed(container(7, 7).owner(them()));
    let plan = world.plan();
    let foreign = [cid(1), cid(3), cid(4), cid(6), cid(7)];
    for action in &plan.actions {
        assert!(action.containers().iter().all(|c| !foreign.contains(c)), "{action:?} touches a foreign container");
    }
    assert_eq!(plan.ends, vec![]);
    assert_eq!(plan.actions.len(), 2, "{:?}", plan.actions);
    assert_eq!(plan.actions[0], remove(5, 5, RemoveReason::SessionEnded));
    assert!(matches!(&plan.actions[1], Action::Create { session, .. } if *session == sid(7)));
}

#[test]
fn ignores_a_foreign_container_even_when_a_session_is_bound_to_it() {
    let world =
        World::new().desired(session(1).bound(1)).observed(container(1, 1).owner(them()).exited(Some(0), false));
    assert_eq!(world.plan(), Plan { actions: vec![], ends: vec![(sid(1), EndReason::RemovedOutsideBerth)] });
}

// ---------------------------------------------------------------------------------------------------------------
// Duplicates
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn keeps_the_bound_container_and_removes_a_duplicate() {
    let world = World::new()
        .desired(session(1).bound(2))
        .observed(container(1, 1).created(ago(30)))
        .observed(container(2, 1).state(ContainerState::Created))
        .attached(1);
    assert_eq!(world.plan(), Plan { actions: vec![remove(1, 1, RemoveReason::Duplicate), start(1, 2)], ends: vec![] });
}

#[test]
fn keeps_the_running_container_when_none_is_bound() {
    let world = World::new()
        .desired(session(1))
        .observed(container(1, 1).created(ago(30)).state(ContainerState::Created))
        .observed(container(2, 1).created(ago(5)))
        .observed(container(3, 1).created(ago(2)))
        .attached(1);
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![remove(1, 1, RemoveReason::Duplicate), remove(1, 3, RemoveReason::Duplicate)],
            ends: vec![]
        }
    );
}

#[test]
fn keeps_the_oldest_container_when_none_is_bound_or_running() {
    let world = World::new()
        .desired(session(1))
        .observed(container(1, 1).created(ago(2)).state(ContainerState::Created))
        .observed(container(2, 1).created(ago(5)).state(ContainerState::Created));
    assert_eq!(world.plan(), Plan { actions: vec![remove(1, 1, RemoveReason::Duplicate), attach(1, 2)], ends: vec![] });
}

// ---------------------------------------------------------------------------------------------------------------
// Containers stuck in created
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn gives_up_on_a_container_stuck_in_created_past_the_start_timeout() {
    let timeout = Duration::from_secs(60);
    for (case, created) in [("exactly at the timeout", NOW.sub(timeout)), ("long past it", ago(3600))] {
        let world = World::new()
            .policy(|p| p.reconcile.start_timeout = timeout)
            .desired(session(1).bound(1))
            .observed(container(1, 1).state(ContainerState::Created).created(created))
            .attached(1);
        assert_eq!(
            world.plan(),
            Plan {
                actions: vec![remove(1, 1, RemoveReason::StuckCreated)],
                ends: vec![(sid(1), create_failed("container did not start within 60s"))],
            },
            "{case}"
        );
    }
}

#[test]
fn attaches_and_starts_a_created_container_before_the_start_timeout() {
    let timeout = Duration::from_secs(60);
    let just_before = NOW.sub(timeout).add(Duration::from_millis(1));
    for (attached, expected) in [(false, attach(1, 1)), (true, start(1, 1))] {
        let mut world = World::new()
            .policy(|p| p.reconcile.start_timeout = timeout)
            .desired(session(1).bound(1))
            .observed(container(1, 1).state(ContainerState::Created).created(just_before));
        if attached {
            world = world.attached(1);
        }
        assert_eq!(world.plan(), Plan { actions: vec![expected], ends: vec![] }, "attached: {attached}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Removals under way
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn does_not_ask_twice_for_a_removal_under_way() {
    type UnderWay = fn(ContainerBuilder) -> ContainerBuilder;
    let table: [(&str, UnderWay); 2] = [
        ("removal requested", ContainerBuilder::removal_requested),
        ("removing", |c| c.state(ContainerState::Removing)),
    ];
    for (case, under_way) in table {
        let world = World::new()
            .desired(session(1).bound(1).ending(EndReason::Released))
            .observed(under_way(container(1, 1)))
            .observed(under_way(container(2, 2).created(ago(3600))))
            .desired(session(3).bound(3))
            .observed(container(3, 3))
            .observed(under_way(container(4, 3)))
            .attached(3);
        assert_eq!(world.plan(), Plan::default(), "{case}");
    }
}

#[test]
fn does_not_create_while_a_removal_for_the_session_is_under_way() {
    for under_way in [container(1, 1).removal_requested(), container(1, 1).state(ContainerState::Removing)] {
        let world = World::new().desired(session(1)).observed(under_way);
        assert_eq!(world.plan(), Plan::default());
    }
}

#[test]
fn creates_once_the_removal_has_finished() {
    let world = World::new().desired(session(1));
    assert!(matches!(world.plan().actions.as_slice(), [Action::Create { .. }]));
}

// ---------------------------------------------------------------------------------------------------------------
// Ending sessions
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn removes_container_whose_session_was_released() {
    let world =
        World::new().desired(session(1).bound(1).ending(EndReason::Released)).observed(container(1, 1)).attached(1);
    assert_eq!(world.plan(), Plan { actions: vec![remove(1, 1, RemoveReason::SessionEnded)], ends: vec![] });
}

#[test]
fn removes_every_live_container_of_an_ending_session() {
    let world = World::new()
        .desired(session(1).bound(1).ending(EndReason::Shutdown))
        .observed(container(1, 1))
        .observed(container(2, 1).state(ContainerState::Created))
        .observed(container(3, 1).exited(Some(0), false))
        .observed(container(4, 1).removal_requested());
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![
                remove(1, 1, RemoveReason::SessionEnded),
                remove(1, 2, RemoveReason::SessionEnded),
                remove(1, 3, RemoveReason::SessionEnded),
            ],
            ends: vec![]
        }
    );
}

#[test]
fn stops_a_running_container_with_the_stop_timeout_before_removing_it() {
    let grace = Duration::from_secs(10);
    let world = World::new()
        .policy(|p| p.reconcile.stop_timeout = grace)
        .desired(session(1).bound(1).ending(EndReason::Released))
        .observed(container(1, 1))
        .observed(container(2, 1).state(ContainerState::Created))
        .desired(session(3).bound(3).ending(EndReason::Idle))
        .observed(container(3, 3).exited(Some(143), false));
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![
                stop(1, 1, grace),
                remove(1, 2, RemoveReason::SessionEnded),
                remove(3, 3, RemoveReason::SessionEnded)
            ],
            ends: vec![]
        }
    );
}

#[test]
fn does_nothing_more_for_an_ending_session_whose_containers_are_gone() {
    let world = World::new().desired(session(1).bound(1).ending(EndReason::Released));
    assert_eq!(world.plan(), Plan::default());
}

// ---------------------------------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn ends_a_session_when_a_timer_runs_out() {
    let hour = Duration::from_secs(3600);
    let table: [(&str, SessionBuilder, Option<EndReason>); 7] = [
        ("fresh", session(1), None),
        ("lifetime reached", session(1).created(NOW.sub(4 * hour)).active(NOW), Some(EndReason::LifetimeReached)),
        (
            "lifetime nearly reached",
            session(1).created(NOW.sub(4 * hour).add(Duration::from_millis(1))).active(NOW),
            None,
        ),
        ("resume grace expired", session(1).detached_since(ago(300)), Some(EndReason::ResumeGraceExpired)),
        ("detached within the grace", session(1).detached_since(ago(299)), None),
        ("idle", session(1).created(ago(1800)).active(ago(1800)), Some(EndReason::Idle)),
        (
            "lifetime wins over idle",
            session(1).created(ago(4 * 3600)).active(ago(4 * 3600)),
            Some(EndReason::LifetimeReached),
        ),
    ];
    for (case, s, reason) in table {
        let world = World::new()
            .policy(|p| {
                p.sessions.max_lifetime = 4 * hour;
                p.sessions.resume_grace = Duration::from_secs(300);
                p.sessions.idle_timeout = Duration::from_secs(1800);
            })
            .desired(s.bound(1))
            .observed(container(1, 1))
            .attached(1);
        let expected = match reason {
            Some(r) => Plan { actions: vec![remove(1, 1, RemoveReason::SessionEnded)], ends: vec![(sid(1), r)] },
            None => Plan::default(),
        };
        assert_eq!(world.plan(), expected, "{case}");
    }
}

#[test]
fn a_timer_ends_a_session_even_before_it_has_a_container() {
    let world = World::new().desired(session(1).detached_since(ago(3600)));
    assert_eq!(world.plan(), Plan { actions: vec![], ends: vec![(sid(1), EndReason::ResumeGraceExpired)] });
}

// ---------------------------------------------------------------------------------------------------------------
// Draining
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn creates_and_starts_nothing_while_draining() {
    let world = World::new()
        .draining()
        .desired(session(1))
        .desired(session(2).bound(2))
        .observed(container(2, 2).state(ContainerState::Created))
        .attached(2)
        .desired(session(3).bound(3))
        .observed(container(3, 3).state(ContainerState::Created));
    assert_eq!(world.plan(), Plan::default());
}

#[test]
fn creates_nothing_while_the_sentinel_is_down_but_starts_and_attaches_what_exists() {
    let world = World::new()
        .without_sentinel()
        .desired(session(1))
        .desired(session(2).bound(2))
        .observed(container(2, 2).state(ContainerState::Created))
        .attached(2)
        .desired(session(3).bound(3))
        .observed(container(3, 3));
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![
                Action::Start { session: sid(2), container: cid(2) },
                Action::Attach { session: sid(3), container: cid(3) },
            ],
            ends: vec![],
        }
    );
    let late = World::new().without_sentinel().desired(session(1).created(ago(60)));
    assert_eq!(
        late.plan(),
        Plan {
            actions: vec![],
            ends: vec![(
                sid(1),
                create_failed("this replica's sentinel has not run for 60s, so it creates no container (see /readyz)")
            )],
        },
        "a session does not wait longer than the start timeout"
    );
    let mut up = world;
    up.desired.sentinel_up = true;
    let plan = up.plan();
    assert!(
        matches!(plan.actions.first(), Some(Action::Create { session, .. }) if *session == sid(1)),
        "once the sentinel runs, the held session is created: {plan:?}"
    );
}

#[test]
fn still_removes_while_draining() {
    let world = World::new()
        .draining()
        .desired(session(1).bound(1).ending(EndReason::Shutdown))
        .observed(container(1, 1))
        .desired(session(2).bound(2))
        .observed(container(2, 2).exited(Some(0), false))
        .desired(session(3).bound(3))
        .observed(container(3, 3).state(ContainerState::Created).created(ago(3600)))
        .observed(container(4, 4).created(ago(3600)));
    assert_eq!(
        world.plan(),
        Plan {
            actions: vec![
                remove(1, 1, RemoveReason::SessionEnded),
                remove(2, 2, RemoveReason::SessionEnded),
                remove(3, 3, RemoveReason::StuckCreated),
                bulk_remove(&[4], RemoveReason::Orphan),
            ],
            ends: vec![
                (sid(2), EndReason::Exited { code: 0 }),
                (sid(3), create_failed("container did not start within 60s"))
            ],
        }
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn replaces_an_unhealthy_container_of_a_detached_session_when_the_profile_says_so() {
    let world = World::new()
        .policy(|p| {
            p.profiles.get_mut(&ProfileName::default_name()).expect("default profile").on_unhealthy =
                UnhealthyAction::Replace;
        })
        .desired(session(1).bound(1).detached_since(ago(10)))
        .observed(container(1, 1).health(Health::Unhealthy))
        .attached(1);
    assert_eq!(world.plan(), Plan { actions: vec![remove(1, 1, RemoveReason::Unhealthy)], ends: vec![] });
}

#[test]
fn creates_a_replacement_once_an_unhealthy_container_is_gone_and_unbound() {
    // The controller clears the binding when the unhealthy container's removal completes; while it is still
    // bound the planner would take its absence for a removal outside berth.
    let replace = |p: &mut Policy| {
        p.profiles.get_mut(&ProfileName::default_name()).expect("default profile").on_unhealthy =
            UnhealthyAction::Replace;
    };
    let still_bound =
        World::new().policy(replace).desired(session(1).bound(1).created(ago(7200)).detached_since(ago(10)));
    assert_eq!(still_bound.plan(), Plan { actions: vec![], ends: vec![(sid(1), EndReason::RemovedOutsideBerth)] });

    let unbound = World::new().policy(replace).desired(session(1).created(ago(7200)).detached_since(ago(10)));
    let plan = unbound.plan();
    let [Action::Create { session, spec }] = plan.actions.as_slice() else {
        panic!("expected one create, got {:?}", plan.actions);
    };
    assert_eq!(*session, sid(1));
    assert_eq!(spec.labels["io.berth.created"], NOW.as_millis().to_string());
}

#[test]
fn leaves_an_unhealthy_container_alone_while_attached_or_when_the_profile_only_reports() {
    let table = [
        ("attached, replace", false, UnhealthyAction::Replace, Health::Unhealthy),
        ("detached, report", true, UnhealthyAction::Report, Health::Unhealthy),
        ("attached, report", false, UnhealthyAction::Report, Health::Unhealthy),
        ("detached, replace, healthy", true, UnhealthyAction::Replace, Health::Healthy),
        ("detached, replace, starting", true, UnhealthyAction::Replace, Health::Starting),
    ];
    for (case, detached, action, health) in table {
        let s = if detached { session(1).bound(1).detached_since(ago(10)) } else { session(1).bound(1) };
        let world = World::new()
            .policy(|p| {
                p.profiles.get_mut(&ProfileName::default_name()).expect("default profile").on_unhealthy = action;
            })
            .desired(s)
            .observed(container(1, 1).health(health))
            .attached(1);
        assert_eq!(world.plan(), Plan::default(), "{case}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------------------------------------------

/// One container of each kind startup meets: fresh running, stale running, exited, created, being removed,
/// another instance's, and one whose session is already desired.
fn startup_world(mode: StartupMode) -> World {
    let mut resumable = container(1, 1).created(ago(60));
    resumable.0.labels.resume_hash = Some("cd".repeat(32));
    resumable.0.labels.kind = SessionKind::Authenticated;
    World::new()
        .policy(|p| {
            p.reconcile.startup = mode;
            p.reconcile.stale_age = Duration::from_secs(7200);
        })
        .observed(resumable)
        .observed(container(2, 2).created(ago(3 * 3600)))
        .observed(container(3, 3).exited(Some(0), false))
        .observed(container(4, 4).state(ContainerState::Created))
        .observed(container(5, 5).state(ContainerState::Removing))
        .observed(container(6, 6).removal_requested())
        .observed(container(7, 7).owner(them()))
        .observed(container(8, 7).owner(them()).exited(Some(1), false))
        .desired(session(9).bound(9))
        .observed(container(9, 9).exited(Some(0), false))
}

fn adopted(c: &ContainerBuilder) -> DesiredSession {
    let mut s =
        DesiredSession::new(c.0.labels.session, c.0.labels.profile.clone(), c.0.labels.kind, c.0.labels.created_at);
    s.attachment = Attachment::Detached { since: NOW };
    s.last_activity = NOW;
    s.resume_hash = c.0.labels.resume_hash.clone();
    s.container = Some(c.0.id.clone());
    s.adopted = true;
    s
}

#[test]
fn startup_in_adopt_mode_adopts_running_containers_as_detached_and_removes_the_rest() {
    let world = startup_world(StartupMode::Adopt);
    let got = world.startup();
    let c1 = ContainerBuilder(world.observed.containers[&cid(1)].clone());
    let c2 = ContainerBuilder(world.observed.containers[&cid(2)].clone());
    assert_eq!(got, Startup { adopted: vec![adopted(&c1), adopted(&c2)], remove: vec![cid(3), cid(4)] });
    assert_eq!(got.adopted[0].attachment, Attachment::Detached { since: NOW });
    assert_eq!(got.adopted[0].created_at, ago(60), "an adopted session keeps its age");
    assert_eq!(got.adopted[0].kind, SessionKind::Authenticated);
    assert_eq!(got.adopted[0].resume_hash, Some("cd".repeat(32)));
}

#[test]
fn startup_in_remove_all_mode_removes_every_container_of_this_instance() {
    let got = startup_world(StartupMode::RemoveAll).startup();
    assert_eq!(got, Startup { adopted: vec![], remove: vec![cid(1), cid(2), cid(3), cid(4)] });
}

#[test]
fn startup_in_conservative_mode_removes_stopped_and_stale_containers_and_adopts_the_rest() {
    let world = startup_world(StartupMode::Conservative);
    let c1 = ContainerBuilder(world.observed.containers[&cid(1)].clone());
    assert_eq!(world.startup(), Startup { adopted: vec![adopted(&c1)], remove: vec![cid(2), cid(3), cid(4)] });
}

#[test]
fn startup_adopts_one_container_per_session() {
    let world = World::new().observed(container(1, 1).created(ago(20))).observed(container(2, 1).created(ago(10)));
    let got = world.startup();
    assert_eq!(got.adopted.len(), 1);
    assert_eq!(got.adopted[0].container, Some(cid(1)));
    // The planner then removes the second one as a duplicate.
    let mut after = world;
    for s in got.adopted {
        after.desired.sessions.insert(s.id, s);
    }
    assert_eq!(after.attached(1).plan(), Plan { actions: vec![remove(1, 2, RemoveReason::Duplicate)], ends: vec![] });
}

#[test]
fn startup_adopted_sessions_are_left_running_by_the_planner() {
    let world = startup_world(StartupMode::Adopt);
    let got = world.startup();
    let mut after = world.listed_at(Some(NOW));
    for s in got.adopted {
        after.desired.sessions.insert(s.id, s);
    }
    for c in got.remove {
        after.observed.containers.remove(&c);
    }
    // The adopted sessions are re-attached; nothing is removed but the desired session's exited container.
    assert_eq!(
        after.plan(),
        Plan {
            actions: vec![attach(1, 1), attach(2, 2), remove(9, 9, RemoveReason::SessionEnded)],
            ends: vec![(sid(9), EndReason::Exited { code: 0 })]
        }
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Status
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn status_follows_the_session_from_pending_to_gone() {
    let table: [(&str, World, Phase, Option<EndReason>); 8] = [
        ("no container yet", World::new().desired(session(1)), Phase::Pending, None),
        (
            "created",
            World::new().desired(session(1).bound(1)).observed(container(1, 1).state(ContainerState::Created)),
            Phase::Creating,
            None,
        ),
        (
            "created and attached",
            World::new()
                .desired(session(1).bound(1))
                .observed(container(1, 1).state(ContainerState::Created))
                .attached(1),
            Phase::Creating,
            None,
        ),
        (
            "running, not attached yet",
            World::new().desired(session(1).bound(1)).observed(container(1, 1)),
            Phase::Creating,
            None,
        ),
        (
            "running and attached",
            World::new().desired(session(1).bound(1)).observed(container(1, 1)).attached(1),
            Phase::Running,
            None,
        ),
        (
            "released, container still there",
            World::new().desired(session(1).bound(1).ending(EndReason::Released)).observed(container(1, 1)).attached(1),
            Phase::Terminating,
            Some(EndReason::Released),
        ),
        (
            "released, container being removed",
            World::new()
                .desired(session(1).bound(1).ending(EndReason::Released))
                .observed(container(1, 1).state(ContainerState::Removing)),
            Phase::Terminating,
            Some(EndReason::Released),
        ),
        (
            "released, container gone",
            World::new().desired(session(1).bound(1).ending(EndReason::Released)),
            Phase::Gone,
            Some(EndReason::Released),
        ),
    ];
    for (case, world, phase, reason) in table {
        let status = world.status(1);
        assert_eq!((status.phase, status.reason), (phase, reason), "{case}");
    }
}

#[test]
fn status_names_the_bound_container_and_its_health() {
    let world = World::new()
        .desired(session(1).bound(2))
        .observed(container(1, 1))
        .observed(container(2, 1).health(Health::Unhealthy))
        .attached(1);
    let status = world.status(1);
    assert_eq!(status.container, Some(cid(2)));
    assert_eq!(status.health, Health::Unhealthy);
    assert_eq!(status.phase, Phase::Running);
}
