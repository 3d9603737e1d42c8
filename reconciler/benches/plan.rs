//! The planner at 1k, 10k and 100k sessions, in a steady state: every session has a running, attached
//! container, and about one in a hundred needs work (new, exited, released, stuck, duplicated, orphaned).
//!
//! Run with `cargo bench -p berth-reconciler --bench plan`.

use std::hint::black_box;
use std::time::Duration;

use berth_reconciler::desired::{Desired, DesiredSession, SessionKind};
use berth_reconciler::ids::{ContainerId, InstanceId, ProfileName, SessionId};
use berth_reconciler::labels::ManagedLabels;
use berth_reconciler::observed::{ContainerState, Health, Observed, ObservedContainer};
use berth_reconciler::plan::plan;
use berth_reconciler::policy::Policy;
use berth_reconciler::status::EndReason;
use berth_reconciler::time::Timestamp;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const NOW: Timestamp = Timestamp::from_secs(1_000_000);

fn session_id(n: u64) -> SessionId {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    bytes[0] = 0x5e;
    SessionId::from_bytes(bytes)
}

fn container_id(n: u64) -> ContainerId {
    format!("{n:064x}").parse().expect("valid container id")
}

fn container(
    id: u64,
    session: SessionId,
    owner: &InstanceId,
    state: ContainerState,
    created: Timestamp,
) -> ObservedContainer {
    ObservedContainer {
        id: container_id(id),
        labels: ManagedLabels {
            session,
            owner: owner.clone(),
            created_at: created,
            profile: ProfileName::default_name(),
            kind: SessionKind::Anonymous,
            policy_hash: "0123456789abcdef".into(),
            resume_hash: Some("ab".repeat(32)),
            epoch: 1,
        },
        state,
        exit_code: (state == ContainerState::Exited).then_some(0),
        oom_killed: false,
        health: Health::Unknown,
        removal_requested: false,
    }
}

fn add(observed: &mut Observed, c: ObservedContainer) {
    observed.containers.insert(c.id.clone(), c);
}

/// `n` sessions in a steady state, with a realistic sprinkle of work.
fn world(n: u64) -> (Desired, Observed) {
    let owner: InstanceId = "berth-bench".parse().expect("valid instance id");
    let peer: InstanceId = "berth-peer".parse().expect("valid instance id");
    let mut desired = Desired::new(owner.clone());
    let mut observed = Observed { listed_at: Some(NOW.sub(Duration::from_secs(1))), ..Observed::default() };
    let mut next = 0u64;
    for i in 0..n {
        let id = session_id(i);
        let mut s = DesiredSession::new(
            id,
            ProfileName::default_name(),
            SessionKind::Anonymous,
            NOW.sub(Duration::from_secs(600)),
        );
        s.last_activity = NOW.sub(Duration::from_secs(5));
        let created = NOW.sub(Duration::from_secs(590));
        match i % 100 {
            // New: no container yet.
            0 => {}
            // The shell exited.
            1 => {
                next += 1;
                s.container = Some(container_id(next));
                add(&mut observed, container(next, id, &owner, ContainerState::Exited, created));
            }
            // Released by the client.
            2 => {
                next += 1;
                s.container = Some(container_id(next));
                s.ending = Some(EndReason::Released);
                add(&mut observed, container(next, id, &owner, ContainerState::Running, created));
            }
            // Created, waiting for attach.
            3 => {
                next += 1;
                s.container = Some(container_id(next));
                add(
                    &mut observed,
                    container(next, id, &owner, ContainerState::Created, NOW.sub(Duration::from_secs(1))),
                );
            }
            // A duplicate next to the bound container.
            4 => {
                next += 1;
                s.container = Some(container_id(next));
                add(&mut observed, container(next, id, &owner, ContainerState::Running, created));
                next += 1;
                add(&mut observed, container(next, id, &owner, ContainerState::Running, created));
                observed.attached.insert(id);
            }
            // Steady state.
            _ => {
                next += 1;
                s.container = Some(container_id(next));
                add(&mut observed, container(next, id, &owner, ContainerState::Running, created));
                observed.attached.insert(id);
            }
        }
        desired.sessions.insert(id, s);
    }
    // Orphans, and a peer's containers sharing the daemon.
    for i in 0..n / 100 {
        next += 1;
        add(
            &mut observed,
            container(next, session_id(n + i), &owner, ContainerState::Running, NOW.sub(Duration::from_secs(60))),
        );
        next += 1;
        add(
            &mut observed,
            container(next, session_id(2 * n + i), &peer, ContainerState::Running, NOW.sub(Duration::from_secs(60))),
        );
    }
    (desired, observed)
}

fn bench_plan(c: &mut Criterion) {
    let policy = Policy::default();
    let mut group = c.benchmark_group("plan");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [1_000u64, 10_000, 100_000] {
        let (desired, observed) = world(n);
        // Creates, exits, releases, attaches and duplicates: one in a hundred each, then one bulk orphan removal.
        let once = plan(&desired, &observed, &policy, NOW);
        assert_eq!(once.actions.len() as u64, 5 * n / 100 + 1, "unexpected plan shape");
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &(desired, observed), |b, (d, o)| {
            b.iter(|| plan(black_box(d), black_box(o), &policy, NOW));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);
