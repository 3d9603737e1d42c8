//! The session table: what the controller keeps per session for the sessions' holders, beside the desired
//! state itself: the status channel each connection watches, the lease of the connection that holds the session
//! now (a detach from an older connection is ignored), and the last decisions about it (`berth sessions show`).

use std::collections::{HashMap, VecDeque};

use berth_reconciler::SessionId;
use tokio::sync::watch;

use berth_reconciler::Status;

use super::handle::Decision;

/// Decisions kept per session.
const DECISIONS_KEPT: usize = 20;

#[derive(Debug, Default)]
pub(super) struct SessionTable {
    statuses: HashMap<SessionId, watch::Sender<Status>>,
    leases: HashMap<SessionId, u64>,
    next_lease: u64,
    decisions: HashMap<SessionId, VecDeque<Decision>>,
}

impl SessionTable {
    /// Starts tracking `id`, pending; returns what its holder watches.
    pub(super) fn track(&mut self, id: SessionId) -> watch::Receiver<Status> {
        self.statuses.entry(id).or_insert_with(|| watch::channel(Status::pending()).0).subscribe()
    }

    /// The status of a tracked session, to watch.
    pub(super) fn subscribe(&self, id: &SessionId) -> Option<watch::Receiver<Status>> {
        self.statuses.get(id).map(watch::Sender::subscribe)
    }

    /// Tells `id`'s holders its status, if it changed.
    pub(super) fn publish(&self, id: &SessionId, status: Status) {
        if let Some(tx) = self.statuses.get(id) {
            tx.send_if_modified(|cur| {
                let changed = *cur != status;
                *cur = status;
                changed
            });
        }
    }

    /// A new lease on `id`: the connection holding it now.
    pub(super) fn new_lease(&mut self, id: SessionId) -> u64 {
        self.next_lease += 1;
        self.leases.insert(id, self.next_lease);
        self.next_lease
    }

    /// Whether `lease` is the current one on `id`.
    pub(super) fn holds(&self, id: &SessionId, lease: u64) -> bool {
        self.leases.get(id) == Some(&lease)
    }

    /// Notes a decision about `id`, keeping the last few.
    pub(super) fn record(&mut self, id: SessionId, decision: Decision) {
        let log = self.decisions.entry(id).or_default();
        if log.len() >= DECISIONS_KEPT {
            log.pop_front();
        }
        log.push_back(decision);
    }

    /// The decisions kept about `id`, oldest first.
    pub(super) fn decisions(&self, id: &SessionId) -> Vec<Decision> {
        self.decisions.get(id).map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }

    /// Forgets `id` (gone, or taken over): its holders see their status channel close.
    pub(super) fn forget(&mut self, id: &SessionId) {
        self.statuses.remove(id);
        self.leases.remove(id);
        self.decisions.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        format!("{:032x}", n).parse().expect("a valid id")
    }

    #[test]
    fn only_the_newest_lease_holds_and_forgetting_closes_the_status() {
        let mut t = SessionTable::default();
        let rx = t.track(id(1));
        let first = t.new_lease(id(1));
        let second = t.new_lease(id(1));
        assert!(!t.holds(&id(1), first));
        assert!(t.holds(&id(1), second));
        assert!(!t.holds(&id(2), second), "a lease is per session");
        t.forget(&id(1));
        assert!(rx.has_changed().is_err(), "the holder sees the session forgotten");
        assert!(!t.holds(&id(1), second));
    }

    #[test]
    fn decisions_keep_the_last_twenty() {
        let mut t = SessionTable::default();
        for at in 0..25 {
            t.record(id(1), Decision { at, kind: "observed", detail: String::new() });
        }
        let kept = t.decisions(&id(1));
        assert_eq!(kept.len(), DECISIONS_KEPT);
        assert_eq!(kept.first().map(|d| d.at), Some(5));
        assert!(t.decisions(&id(2)).is_empty());
    }
}
