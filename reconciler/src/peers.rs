//! Several replicas on one Docker engine: who is alive, who has taken whom over, and which epoch a replica
//! runs at. Pure; the controller feeds it the sentinel and claim containers of each full list.
//!
//! - Every replica runs a **sentinel** container whose stdin berth holds open for the replica's whole life; when
//!   the process dies, even by `kill -9`, the stream closes, `cat` exits and the sentinel stops. A peer with no
//!   running sentinel is *down*; one down for the lease timeout is *dead*. A sentinel that is created but not
//!   yet started means its replica is starting it (Docker can take seconds to start a container under load):
//!   such a peer is dead only after the lease plus the Docker call timeout, the longest a live replica waits
//!   for the start before it gives up and tries again.
//! - A survivor takes a dead peer over by creating a **claim** container named after the peer and the highest
//!   epoch it covers. Docker names are unique, so of several survivors exactly one create succeeds.
//! - The holder of a claim manages the covered containers as if they were its own (adopted detached, or
//!   removed), and also whatever the dead peer itself held claims on.
//! - **Fencing**: a replica that finds a claim on itself by someone else no longer touches the containers the
//!   claim covers, and runs at an epoch above it, so containers it creates afterwards are not covered.
//! - A claim on a replica whose sentinel runs at an epoch the claim covers was not made by a takeover (anyone
//!   who reaches the Docker API can create one): it is **void**, every replica ignores it, and the claimed
//!   replica removes it.
//!   See `docs/decisions/0012-replica-liveness-and-takeover.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::desired::Desired;
use crate::ids::{ContainerId, InstanceId};
use crate::labels::{PeerLabels, PeerRole};
use crate::observed::{ContainerState, Observed};
use crate::policy::Policy;
use crate::time::Timestamp;

/// A sentinel or claim container as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerContainer {
    /// Docker's id.
    pub id: ContainerId,
    /// Its labels.
    pub labels: PeerLabels,
    /// Its state (only sentinels ever run; claims stay created).
    pub state: ContainerState,
}

impl PeerContainer {
    /// Whether it runs: for a sentinel, whether its replica is alive.
    pub fn running(&self) -> bool {
        self.state == ContainerState::Running
    }

    /// A sentinel created and never started: its replica is starting it, or died doing so.
    pub fn starting(&self) -> bool {
        self.labels.role == PeerRole::Sentinel && self.state == ContainerState::Created
    }
}

/// Everything Docker needs to create a sentinel or a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkerSpec {
    /// Unique Docker name: the claim's lock.
    pub name: String,
    /// Image (it needs `cat` and `true`).
    pub image: String,
    /// Command.
    pub command: Vec<String>,
    /// Labels, peer key included; never the managed marker.
    pub labels: BTreeMap<String, String>,
    /// Keep stdin open and close it with the attach stream (sentinels).
    pub stdin: bool,
}

/// The sentinel of `owner` at `epoch`. `nonce` (a few random hex digits) keeps its name apart from an earlier
/// sentinel whose removal Docker has not finished: nothing locks on a sentinel's name, only on its labels.
pub fn sentinel_spec(policy: &Policy, owner: &InstanceId, epoch: u64, nonce: &str) -> MarkerSpec {
    let labels = PeerLabels { role: PeerRole::Sentinel, owner: owner.clone(), epoch, claimed: None };
    MarkerSpec {
        name: format!("{}-sentinel-{owner}-{epoch}-{nonce}", policy.docker.name_prefix),
        image: policy.peer_image().to_owned(),
        command: vec!["cat".into()],
        labels: labels.to_labels(&policy.docker.namespace),
        stdin: true,
    }
}

/// The claim by `holder` (at `epoch`) on `dead`'s containers up to `through`.
pub fn claim_spec(policy: &Policy, holder: &InstanceId, epoch: u64, dead: &InstanceId, through: u64) -> MarkerSpec {
    let labels = claim_labels(holder, epoch, dead, through);
    MarkerSpec {
        name: format!("{}-claim-{dead}-{through}", policy.docker.name_prefix),
        image: policy.peer_image().to_owned(),
        command: vec!["true".into()],
        labels: labels.to_labels(&policy.docker.namespace),
        stdin: false,
    }
}

/// The labels of the claim by `holder` (at `epoch`) on `dead`'s containers up to `through`.
pub fn claim_labels(holder: &InstanceId, epoch: u64, dead: &InstanceId, through: u64) -> PeerLabels {
    PeerLabels { role: PeerRole::Claim, owner: holder.clone(), epoch, claimed: Some((dead.clone(), through)) }
}

/// Whether `claim` is void: it names a replica whose sentinel runs at an epoch the claim covers. A takeover
/// claims a replica only once no sentinel of it has run for a lease, and a replica that comes back runs at an
/// epoch above every claim on it (its sentinel's included), so no takeover makes such a claim; someone else
/// created it (anyone who reaches the Docker API can). Void claims are ignored: they neither fence nor pass on.
pub fn is_void(claim: &PeerContainer, peers: &[PeerContainer]) -> bool {
    let Some((dead, through)) = &claim.labels.claimed else { return false };
    peers.iter().any(|s| {
        s.labels.role == PeerRole::Sentinel && s.running() && &s.labels.owner == dead && s.labels.epoch <= *through
    })
}

/// The claims that are not void.
fn honoured(peers: &[PeerContainer]) -> impl Iterator<Item = &PeerContainer> {
    peers.iter().filter(|p| p.labels.claimed.is_some() && !is_void(p, peers))
}

/// The void claims on `me` (see [`is_void`]): `me` refuses them, and removes them.
pub fn void_claims_on<'p>(me: &InstanceId, peers: &'p [PeerContainer]) -> Vec<&'p PeerContainer> {
    peers
        .iter()
        .filter(|p| p.labels.claimed.as_ref().is_some_and(|(dead, _)| dead == me) && is_void(p, peers))
        .collect()
}

/// Containers of a replica that nobody else will ever manage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stranded {
    /// Its own session containers that a claim disowned, while no live replica manages them.
    pub containers: Vec<ContainerId>,
    /// The claims on it, when no live replica manages anything of it through them.
    pub claims: Vec<ContainerId>,
}

/// What `remove_all` (at startup) and `shutdown: remove` remove besides the containers `me` manages: its own
/// containers that a claim disowned but that no live replica manages (the claim's holder, and whoever inherited
/// its claims, run no sentinel), and the claims on `me` whose holder is no such live replica.
pub fn stranded(me: &InstanceId, observed: &Observed, peers: &[PeerContainer]) -> Stranded {
    let alive: BTreeSet<&InstanceId> = peers
        .iter()
        .filter(|p| p.labels.role == PeerRole::Sentinel && p.running() && &p.labels.owner != me)
        .map(|p| &p.labels.owner)
        .collect();
    // The highest epoch of `me` that a live replica manages, through its own claims or inherited ones.
    let held = alive.iter().filter_map(|r| effective_claims(r, peers).get(me).copied()).max();
    let disowned = disowned_through(me, peers);
    let containers = observed
        .containers
        .values()
        .filter(|c| &c.labels.owner == me && c.state != ContainerState::Removing && !c.removal_requested)
        .filter(|c| disowned.is_some_and(|e| c.labels.epoch <= e) && held.is_none_or(|h| c.labels.epoch > h))
        .map(|c| c.id.clone())
        .collect();
    let claims = honoured(peers)
        .filter(|p| p.labels.claimed.as_ref().is_some_and(|(dead, _)| dead == me))
        .filter(|p| !alive.contains(&p.labels.owner) && held.is_none())
        .map(|p| p.id.clone())
        .collect();
    Stranded { containers, claims }
}

/// The owners `me` manages besides itself, with the highest epoch covered: the claims it holds, and
/// (transitively) the claims held by replicas it has taken over. Void claims count for nothing.
pub fn effective_claims(me: &InstanceId, peers: &[PeerContainer]) -> BTreeMap<InstanceId, u64> {
    let mut out: BTreeMap<InstanceId, u64> = BTreeMap::new();
    loop {
        let mut grew = false;
        for p in honoured(peers) {
            let Some((dead, through)) = &p.labels.claimed else { continue };
            let held = &p.labels.owner == me || out.get(&p.labels.owner).is_some_and(|e| p.labels.epoch <= *e);
            if held && dead != me && out.get(dead).is_none_or(|e| e < through) {
                out.insert(dead.clone(), *through);
                grew = true;
            }
        }
        if !grew {
            return out;
        }
    }
}

/// The highest epoch of `me`'s containers another replica has claimed: those are no longer `me`'s.
pub fn disowned_through(me: &InstanceId, peers: &[PeerContainer]) -> Option<u64> {
    honoured(peers)
        .filter(|p| &p.labels.owner != me)
        .filter_map(|p| p.labels.claimed.as_ref().filter(|(dead, _)| dead == me).map(|(_, e)| *e))
        .max()
}

/// The epoch for a (re)start of `me`: above every epoch found on its containers, its sentinels and the claims
/// on it, and above `current`.
pub fn next_epoch(me: &InstanceId, current: u64, observed: &Observed, peers: &[PeerContainer]) -> u64 {
    let containers = observed.containers.values().filter(|c| &c.labels.owner == me).map(|c| c.labels.epoch);
    let sentinels = peers.iter().filter(|p| &p.labels.owner == me).map(|p| p.labels.epoch);
    let claims = disowned_through(me, peers);
    containers.chain(sentinels).chain(claims).fold(current, u64::max) + 1
}

/// What a replica should do about its peers after a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerPlan {
    /// Replicas with containers or claims and no running sentinel: `down_since` should hold them.
    pub down: BTreeSet<InstanceId>,
    /// Dead past the lease, not yet claimed: claim each up to the epoch given.
    pub claim: Vec<(InstanceId, u64)>,
    /// Bookkeeping containers to remove: stopped sentinels of replicas taken over (or of dead ones that left
    /// nothing), this replica's own earlier sentinels, and claims with nothing left to cover.
    pub remove: Vec<ContainerId>,
}

/// Decides liveness and takeover. `down_since` is when this replica first saw each peer down; `sentinel` is
/// its own current sentinel, if it has one.
pub fn assess(
    desired: &Desired,
    observed: &Observed,
    peers: &[PeerContainer],
    down_since: &BTreeMap<InstanceId, Timestamp>,
    sentinel: Option<&ContainerId>,
    policy: &Policy,
    now: Timestamp,
) -> PeerPlan {
    let me = &desired.owner;
    let mut out = PeerPlan::default();
    let alive: BTreeSet<&InstanceId> =
        peers.iter().filter(|p| p.labels.role == PeerRole::Sentinel && p.running()).map(|p| &p.labels.owner).collect();
    let starting: BTreeSet<&InstanceId> = peers.iter().filter(|p| p.starting()).map(|p| &p.labels.owner).collect();
    let covered = |owner: &InstanceId, epoch: u64| {
        honoured(peers)
            .any(|p| p.labels.claimed.as_ref().is_some_and(|(dead, through)| dead == owner && epoch <= *through))
            || desired.claimed.get(owner).is_some_and(|e| epoch <= *e)
    };
    // Highest epoch of each peer's uncovered containers, claims held, and sentinels.
    let mut stuff: BTreeMap<&InstanceId, u64> = BTreeMap::new();
    for c in observed.containers.values() {
        let owner = &c.labels.owner;
        if owner != me && !covered(owner, c.labels.epoch) {
            let e = stuff.entry(owner).or_insert(0);
            *e = (*e).max(c.labels.epoch);
        }
    }
    for p in honoured(peers).filter(|p| p.labels.role == PeerRole::Claim && &p.labels.owner != me) {
        if desired.claimed.get(&p.labels.owner).is_none_or(|e| p.labels.epoch > *e) {
            let e = stuff.entry(&p.labels.owner).or_insert(0);
            *e = (*e).max(p.labels.epoch);
        }
    }
    let mut sentinel_epoch: BTreeMap<&InstanceId, u64> = BTreeMap::new();
    for p in peers.iter().filter(|p| p.labels.role == PeerRole::Sentinel && &p.labels.owner != me) {
        let e = sentinel_epoch.entry(&p.labels.owner).or_insert(0);
        *e = (*e).max(p.labels.epoch);
    }
    let dead_for_lease = |owner: &InstanceId| {
        let allowance = if starting.contains(owner) { policy.reconcile.docker_timeout } else { Duration::ZERO };
        down_since.get(owner).is_some_and(|since| now >= since.add(policy.peers.lease_timeout + allowance))
    };
    for (owner, epoch) in &stuff {
        if alive.contains(owner) {
            continue;
        }
        out.down.insert((*owner).clone());
        if dead_for_lease(owner) {
            let through = (*epoch).max(sentinel_epoch.get(owner).copied().unwrap_or(0));
            out.claim.push(((*owner).clone(), through));
        }
    }
    for p in peers {
        let owner = &p.labels.owner;
        match p.labels.role {
            PeerRole::Sentinel if p.running() => {}
            PeerRole::Sentinel if owner == me => {
                // An earlier one; never the one being started now (at the current epoch, not yet running).
                if sentinel != Some(&p.id) && p.labels.epoch < desired.epoch {
                    out.remove.push(p.id.clone());
                }
            }
            PeerRole::Sentinel => {
                let taken = desired.claimed.get(owner).is_some_and(|e| p.labels.epoch <= *e);
                let left_nothing =
                    !stuff.contains_key(owner) && !alive.contains(owner) && !covered(owner, p.labels.epoch);
                if !left_nothing && !taken {
                    continue;
                }
                if taken {
                    out.remove.push(p.id.clone());
                } else {
                    // A stopped sentinel of a replica that left nothing behind: gone once it has been down a lease.
                    out.down.insert(owner.clone());
                    if dead_for_lease(owner) {
                        out.remove.push(p.id.clone());
                    }
                }
            }
            PeerRole::Claim => {
                let Some((dead, through)) = &p.labels.claimed else { continue };
                if is_void(p, peers) {
                    // Its target removes it (`void_claims_on`); nobody else acts on it.
                    continue;
                }
                let held = owner == me || desired.claimed.get(owner).is_some_and(|e| p.labels.epoch <= *e);
                let containers_left =
                    observed.containers.values().any(|c| &c.labels.owner == dead && c.labels.epoch <= *through);
                let claims_left = peers.iter().any(|q| q.labels.role == PeerRole::Claim && &q.labels.owner == dead);
                if held && !containers_left && !claims_left {
                    out.remove.push(p.id.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;
    use crate::desired::SessionKind;
    use crate::labels::ManagedLabels;
    use crate::observed::{Health, ObservedContainer};

    fn id(n: u8) -> ContainerId {
        format!("{n:064x}").parse().expect("id")
    }

    fn inst(s: &str) -> InstanceId {
        s.parse().expect("instance")
    }

    fn container(n: u8, owner: &str, epoch: u64) -> ObservedContainer {
        ObservedContainer {
            id: id(n),
            labels: ManagedLabels {
                session: SessionId::from_bytes([n; 16]),
                owner: inst(owner),
                created_at: Timestamp::from_millis(0),
                profile: "default".parse().expect("profile"),
                kind: SessionKind::Anonymous,
                policy_hash: "00".into(),
                resume_hash: None,
                epoch,
            },
            state: ContainerState::Running,
            exit_code: None,
            oom_killed: false,
            health: Health::Unknown,
            removal_requested: false,
        }
    }

    fn sentinel(n: u8, owner: &str, epoch: u64, running: bool) -> PeerContainer {
        let state = if running { ContainerState::Running } else { ContainerState::Exited };
        PeerContainer {
            id: id(n),
            labels: PeerLabels { role: PeerRole::Sentinel, owner: inst(owner), epoch, claimed: None },
            state,
        }
    }

    /// A sentinel created and not (yet) started.
    fn starting_sentinel(n: u8, owner: &str, epoch: u64) -> PeerContainer {
        PeerContainer { state: ContainerState::Created, ..sentinel(n, owner, epoch, false) }
    }

    fn claim(n: u8, holder: &str, dead: &str, through: u64) -> PeerContainer {
        PeerContainer {
            id: id(n),
            labels: PeerLabels {
                role: PeerRole::Claim,
                owner: inst(holder),
                epoch: 1,
                claimed: Some((inst(dead), through)),
            },
            state: ContainerState::Created,
        }
    }

    fn world(containers: &[ObservedContainer]) -> Observed {
        Observed {
            listed_at: Some(Timestamp::from_millis(0)),
            containers: containers.iter().map(|c| (c.id.clone(), c.clone())).collect(),
            attached: BTreeSet::new(),
        }
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.peers.lease_timeout = Duration::from_secs(10);
        p
    }

    #[test]
    fn a_live_peer_is_never_claimed_and_a_dead_one_only_after_the_lease() {
        let me = Desired::new(inst("b"));
        let observed = world(&[container(1, "a", 3), container(2, "a", 2), container(3, "b", 1)]);
        let now = Timestamp::from_millis(100_000);
        let live = [sentinel(10, "a", 3, true), sentinel(11, "b", 1, true)];
        let p = assess(&me, &observed, &live, &BTreeMap::new(), Some(&id(11)), &policy(), now);
        assert!(p.down.is_empty() && p.claim.is_empty() && p.remove.is_empty(), "{p:?}");

        let dead = [sentinel(10, "a", 3, false), sentinel(11, "b", 1, true)];
        let p = assess(&me, &observed, &dead, &BTreeMap::new(), Some(&id(11)), &policy(), now);
        assert_eq!(p.down, BTreeSet::from([inst("a")]));
        assert!(p.claim.is_empty(), "not before the lease: {p:?}");
        let since = BTreeMap::from([(inst("a"), now.sub(Duration::from_secs(9)))]);
        assert!(assess(&me, &observed, &dead, &since, Some(&id(11)), &policy(), now).claim.is_empty());
        let since = BTreeMap::from([(inst("a"), now.sub(Duration::from_secs(10)))]);
        let p = assess(&me, &observed, &dead, &since, Some(&id(11)), &policy(), now);
        assert_eq!(p.claim, vec![(inst("a"), 3)], "covers every epoch of its containers and its sentinel");
    }

    #[test]
    fn a_peer_starting_its_sentinel_gets_the_docker_timeout_on_top_of_the_lease() {
        let me = Desired::new(inst("b"));
        let policy = policy();
        let lease = policy.peers.lease_timeout;
        let allowance = policy.reconcile.docker_timeout;
        let now = Timestamp::from_millis(1_000_000);
        let mine = sentinel(11, "b", 1, true);
        // A new replica with sessions already, its sentinel not started yet (or an old one stopped and the new
        // one not started yet): down, but not dead after a lease.
        for peers in [
            vec![starting_sentinel(10, "a", 2), mine.clone()],
            vec![sentinel(9, "a", 1, false), starting_sentinel(10, "a", 2), mine.clone()],
        ] {
            let observed = world(&[container(1, "a", 2)]);
            let since = BTreeMap::from([(inst("a"), now.sub(lease))]);
            let p = assess(&me, &observed, &peers, &since, Some(&id(11)), &policy, now);
            assert_eq!(p.down, BTreeSet::from([inst("a")]));
            assert!(p.claim.is_empty(), "a starting sentinel is not a dead one: {p:?}");
            let since = BTreeMap::from([(inst("a"), now.sub(lease + allowance))]);
            let p = assess(&me, &observed, &peers, &since, Some(&id(11)), &policy, now);
            assert_eq!(p.claim, vec![(inst("a"), 2)], "one that never starts is: {p:?}");
        }
        // With nothing else of a's: its starting sentinel is left alone for as long.
        let peers = [starting_sentinel(10, "a", 2), mine];
        let since = BTreeMap::from([(inst("a"), now.sub(lease))]);
        let p = assess(&me, &world(&[]), &peers, &since, Some(&id(11)), &policy, now);
        assert!(p.remove.is_empty(), "{p:?}");
        let since = BTreeMap::from([(inst("a"), now.sub(lease + allowance))]);
        let p = assess(&me, &world(&[]), &peers, &since, Some(&id(11)), &policy, now);
        assert_eq!(p.remove, vec![id(10)]);
    }

    #[test]
    fn claimed_containers_are_not_claimed_again_and_the_holder_cleans_up() {
        let mut me = Desired::new(inst("b"));
        let peers = [sentinel(10, "a", 3, false), sentinel(11, "b", 1, true), claim(12, "b", "a", 3)];
        me.claimed = effective_claims(&me.owner, &peers);
        assert_eq!(me.claimed, BTreeMap::from([(inst("a"), 3)]));
        let observed = world(&[container(1, "a", 3)]);
        let since = BTreeMap::from([(inst("a"), Timestamp::from_millis(0))]);
        let now = Timestamp::from_millis(1_000_000);
        let p = assess(&me, &observed, &peers, &since, Some(&id(11)), &policy(), now);
        assert!(p.claim.is_empty(), "{p:?}");
        assert_eq!(p.remove, vec![id(10)], "the dead sentinel goes; the claim stays while a container is covered");
        let p = assess(&me, &world(&[]), &peers, &since, Some(&id(11)), &policy(), now);
        assert_eq!(p.remove, vec![id(10), id(12)], "nothing left to cover: the claim goes too");
        // Someone else's claim, its holder alive: c neither claims nor removes anything of theirs.
        let c = Desired::new(inst("c"));
        let p = assess(&c, &observed, &peers, &BTreeMap::new(), None, &policy(), now);
        assert!(p.claim.is_empty() && p.down.is_empty(), "{p:?}");
        assert!(!p.remove.contains(&id(12)) && !p.remove.contains(&id(11)), "{p:?}");
    }

    #[test]
    fn a_dead_holder_is_claimed_and_its_claims_pass_on() {
        // b took a over, then died; c claims b and so manages a's containers too.
        let peers = [claim(12, "b", "a", 3), sentinel(13, "b", 1, false), claim(14, "c", "b", 1)];
        let claimed = effective_claims(&inst("c"), &peers);
        assert_eq!(claimed, BTreeMap::from([(inst("a"), 3), (inst("b"), 1)]));
        // Before c's claim: b holds a claim and has no running sentinel, so b is down.
        let c = Desired::new(inst("c"));
        let since = BTreeMap::from([(inst("b"), Timestamp::from_millis(0))]);
        let p = assess(
            &c,
            &world(&[container(1, "a", 3)]),
            &peers[..2],
            &since,
            None,
            &policy(),
            Timestamp::from_millis(60_000),
        );
        assert_eq!(p.claim, vec![(inst("b"), 1)]);
    }

    #[test]
    fn fencing_disowns_claimed_epochs_and_raises_the_next_epoch() {
        let peers = [claim(12, "b", "a", 4), sentinel(10, "a", 2, false)];
        assert_eq!(disowned_through(&inst("a"), &peers), Some(4));
        assert_eq!(disowned_through(&inst("b"), &peers), None);
        let observed = world(&[container(1, "a", 3)]);
        assert_eq!(next_epoch(&inst("a"), 0, &observed, &peers), 5);
        assert_eq!(next_epoch(&inst("z"), 0, &observed, &peers), 1);
        assert_eq!(next_epoch(&inst("z"), 7, &observed, &peers), 8);
        let mut a = Desired::new(inst("a"));
        a.disowned_through = Some(4);
        assert!(!a.manages(&container(1, "a", 3).labels));
        assert!(a.manages(&container(1, "a", 5).labels));
    }

    #[test]
    fn own_old_sentinels_are_removed_and_stopped_sentinels_of_empty_peers_after_the_lease() {
        let mut me = Desired::new(inst("b"));
        me.epoch = 3;
        let peers = [
            sentinel(10, "b", 1, false),
            sentinel(11, "b", 2, true),
            sentinel(12, "a", 1, false),
            sentinel(13, "b", 3, false),
        ];
        let since = BTreeMap::from([(inst("a"), Timestamp::from_millis(0))]);
        let p = assess(&me, &world(&[]), &peers, &BTreeMap::new(), Some(&id(11)), &policy(), Timestamp::from_millis(1));
        assert_eq!(p.remove, vec![id(10)], "not the one at the current epoch, created but not yet started");
        let p = assess(&me, &world(&[]), &peers, &since, Some(&id(11)), &policy(), Timestamp::from_millis(60_000));
        assert_eq!(p.remove, vec![id(10), id(12)]);
    }

    #[test]
    fn a_claim_on_a_replica_whose_sentinel_runs_at_the_claimed_epoch_is_void_and_honoured_by_nobody() {
        // a runs at epoch 3, with a container at 3; x (no sentinel, ever) forges a claim on a through 3.
        let peers = [sentinel(10, "a", 3, true), claim(12, "x", "a", 3)];
        assert!(is_void(&peers[1], &peers));
        assert_eq!(disowned_through(&inst("a"), &peers), None, "a keeps its sessions");
        assert!(effective_claims(&inst("x"), &peers).is_empty());
        let refused: Vec<&ContainerId> = void_claims_on(&inst("a"), &peers).iter().map(|p| &p.id).collect();
        assert_eq!(refused, vec![&id(12)]);
        assert!(void_claims_on(&inst("b"), &peers).is_empty());
        // A peer sees neither a nor the forger down, and neither claims nor removes anything.
        let b = Desired::new(inst("b"));
        let since = BTreeMap::from([(inst("x"), Timestamp::from_millis(0))]);
        let now = Timestamp::from_millis(1_000_000);
        let p = assess(&b, &world(&[container(1, "a", 3)]), &peers, &since, None, &policy(), now);
        assert!(p.down.is_empty() && p.claim.is_empty() && p.remove.is_empty(), "{p:?}");
        // Nor does a count x down, or remove the claim here (the controller removes it and counts it).
        let mut a = Desired::new(inst("a"));
        a.epoch = 3;
        let p = assess(&a, &world(&[container(1, "a", 3)]), &peers, &since, Some(&id(10)), &policy(), now);
        assert!(p.down.is_empty() && p.claim.is_empty() && p.remove.is_empty(), "{p:?}");
        // A claim below the running sentinel's epoch is a takeover made while a was down: honoured.
        let peers = [sentinel(10, "a", 4, true), claim(12, "b", "a", 3)];
        assert!(!is_void(&peers[1], &peers));
        assert_eq!(disowned_through(&inst("a"), &peers), Some(3));
    }

    #[test]
    fn stranded_are_own_containers_disowned_by_a_claim_that_no_live_replica_holds() {
        let observed = world(&[container(1, "a", 2), container(2, "a", 5)]);
        // x (never alive) holds a claim on a through 3: a's container at 2 is stranded, and so is the claim.
        let peers = [sentinel(10, "a", 5, true), claim(12, "x", "a", 3)];
        let s = stranded(&inst("a"), &observed, &peers);
        assert_eq!((s.containers, s.claims), (vec![id(1)], vec![id(12)]));
        // b, alive, holds it: b serves that container, and nothing is stranded.
        let peers = [sentinel(10, "a", 5, true), sentinel(11, "b", 1, true), claim(12, "b", "a", 3)];
        assert_eq!(stranded(&inst("a"), &observed, &peers), Stranded::default());
        // c took the dead b over and inherited its claim: c serves it.
        let peers =
            [sentinel(10, "a", 5, true), claim(12, "b", "a", 3), claim(13, "c", "b", 1), sentinel(14, "c", 1, true)];
        assert_eq!(stranded(&inst("a"), &observed, &peers), Stranded::default());
        // Nothing disowned: nothing stranded (a manages its own).
        assert_eq!(stranded(&inst("a"), &observed, &[sentinel(10, "a", 5, true)]), Stranded::default());
    }

    #[test]
    fn specs_name_the_lock_and_never_carry_the_session_marker() {
        let p = Policy::default();
        let s = claim_spec(&p, &inst("b"), 2, &inst("a"), 3);
        assert_eq!(s.name, "berth-claim-a-3");
        assert!(!s.labels.contains_key(&p.docker.namespace.marker()));
        assert!(s.labels.contains_key(&p.docker.namespace.peer_key()));
        let t = sentinel_spec(&p, &inst("b"), 2, "0a1b");
        assert_eq!(
            (t.name.as_str(), t.stdin, t.command.as_slice()),
            ("berth-sentinel-b-2-0a1b", true, ["cat".to_owned()].as_slice())
        );
    }
}
