//! Dispatch gating: at most one action in flight per key (a session, or a container no session owns), and a
//! backoff per key after a failure. The gate owns both; the loop asks it before it spawns an action, and tells
//! it how each one ended. The delays themselves are the pure rule in `berth_reconciler::retry`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use berth_reconciler::retry::{Failure, retry_delay};
use berth_reconciler::{Action, ContainerId, SessionId};
use tokio::time::Instant;

/// Where an action's in-flight marker and backoff live.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// Everything done for a session.
    Session(SessionId),
    /// A container no session owns (an orphan, a startup removal).
    Container(ContainerId),
}

impl Key {
    /// The keys an action holds while it runs.
    pub(super) fn of(action: &Action) -> Vec<Key> {
        match action.session() {
            Some(s) => vec![Key::Session(s)],
            None => action.containers().into_iter().map(|c| Key::Container(c.clone())).collect(),
        }
    }
}

/// Why an action was not dispatched: the label of `berth_actions_deferred_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// An action for the same key is still running.
    InFlight,
    /// The key failed recently and its backoff has not run out.
    Backoff,
}

impl Deferred {
    /// Every reason, for pre-creating metric series.
    pub const ALL: [Self; 2] = [Self::InFlight, Self::Backoff];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Backoff => "backoff",
        }
    }
}

#[derive(Debug)]
struct Backoff {
    attempts: u32,
    not_before: Instant,
}

/// In-flight markers and backoffs.
#[derive(Debug, Default)]
pub(super) struct Gate {
    in_flight: HashSet<Key>,
    backoff: HashMap<Key, Backoff>,
}

impl Gate {
    /// Whether an action holding `keys` may start now.
    pub(super) fn check(&self, keys: &[Key], now: Instant) -> Result<(), Deferred> {
        if keys.iter().any(|k| self.in_flight.contains(k)) {
            return Err(Deferred::InFlight);
        }
        if keys.iter().any(|k| self.backing_off(k, now)) {
            return Err(Deferred::Backoff);
        }
        Ok(())
    }

    /// Leaves out of a bulk removal the containers that are busy or backing off.
    pub(super) fn narrow(&self, containers: &mut Vec<ContainerId>, now: Instant) {
        containers.retain(|c| {
            let k = Key::Container(c.clone());
            !self.in_flight.contains(&k) && !self.backing_off(&k, now)
        });
    }

    fn backing_off(&self, key: &Key, now: Instant) -> bool {
        self.backoff.get(key).is_some_and(|b| b.not_before > now)
    }

    /// Marks `keys` in flight.
    pub(super) fn begin(&mut self, keys: Vec<Key>) {
        self.in_flight.extend(keys);
    }

    /// Clears the in-flight markers of a finished action.
    pub(super) fn end(&mut self, keys: &[Key]) {
        for k in keys {
            self.in_flight.remove(k);
        }
    }

    /// Whether an action for `key` is running.
    pub(super) fn busy(&self, key: &Key) -> bool {
        self.in_flight.contains(key)
    }

    /// How many actions are running.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// A success resets the key's backoff.
    pub(super) fn succeeded(&mut self, key: &Key) {
        self.backoff.remove(key);
    }

    /// A failure starts (or lengthens) the key's backoff.
    pub(super) fn failed(&mut self, key: Key, failure: Failure, base: Duration, max: Duration, now: Instant) {
        let b = self.backoff.entry(key).or_insert(Backoff { attempts: 0, not_before: now });
        b.attempts += 1;
        b.not_before = now + retry_delay(failure, b.attempts, base, max);
    }

    /// Every backoff ends now (the engine is back).
    pub(super) fn clear_backoff(&mut self) {
        self.backoff.clear();
    }

    /// Drops the backoffs of keys that no longer exist, so the map stays bounded.
    pub(super) fn retain_backoff(&mut self, mut keep: impl FnMut(&Key) -> bool) {
        self.backoff.retain(|k, _| keep(k));
    }

    /// When the earliest running backoff ends. Only backoffs still running: one that has run out while its
    /// action is in flight would otherwise wake the loop every few milliseconds until that action ends (a hot
    /// loop while Docker hangs).
    pub(super) fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.backoff.values().map(|b| b.not_before).filter(|t| *t > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: u8) -> Key {
        Key::Session(SessionId::from_bytes([n; 16]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_in_flight_or_backing_off_is_deferred_until_it_ends_or_runs_out() {
        let mut g = Gate::default();
        let (a, b) = (session(1), session(2));
        let now = Instant::now();
        g.begin(vec![a.clone()]);
        assert_eq!(g.check(std::slice::from_ref(&a), now), Err(Deferred::InFlight));
        assert_eq!(g.check(std::slice::from_ref(&b), now), Ok(()));
        g.end(std::slice::from_ref(&a));
        g.failed(a.clone(), Failure::Transient, Duration::from_secs(1), Duration::from_secs(8), now);
        assert_eq!(g.check(std::slice::from_ref(&a), now), Err(Deferred::Backoff));
        assert_eq!(g.next_wake(now), Some(now + Duration::from_secs(1)));
        assert_eq!(g.check(std::slice::from_ref(&a), now + Duration::from_secs(1)), Ok(()));
        assert_eq!(g.next_wake(now + Duration::from_secs(1)), None, "a backoff that ran out wakes nothing");
        // A second failure doubles the wait; a success resets it.
        g.failed(a.clone(), Failure::Transient, Duration::from_secs(1), Duration::from_secs(8), now);
        assert_eq!(g.next_wake(now), Some(now + Duration::from_secs(2)));
        g.succeeded(&a);
        assert_eq!(g.check(&[a], now), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bulk_removal_leaves_out_busy_and_backing_off_containers() {
        let mut g = Gate::default();
        let ids: Vec<ContainerId> = ["a", "b", "c"].iter().map(|c| c.repeat(12).parse().expect("valid")).collect();
        let now = Instant::now();
        g.begin(vec![Key::Container(ids[0].clone())]);
        g.failed(
            Key::Container(ids[1].clone()),
            Failure::Transient,
            Duration::from_secs(1),
            Duration::from_secs(1),
            now,
        );
        let mut bulk = ids.clone();
        g.narrow(&mut bulk, now);
        assert_eq!(bulk, vec![ids[2].clone()]);
    }
}
