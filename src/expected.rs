//! What berth itself is changing in Docker, shared by the executor and the observer (decision record 0027).
//!
//! The executor notes each change it makes before the call (a create by the container's name, a start, stop or
//! removal by id). When the observer gets the Docker event for that change it skips the inspect: the executor's
//! outcome carries the same state to the store. Events for changes berth did not make are still inspected. A
//! removal is verified by its `destroy` event, which the observer hands to the executor waiting for it.
//!
//! Every note is bounded: it ends with its call (a failed call drops it), or a short while after a successful
//! call whose event never came, so the map never grows with missed events.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_reconciler::ContainerId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::runtime::{EventKind, RuntimeEvent};

/// How long a note outlives a successful call whose event has not come yet.
const LINGER: Duration = Duration::from_secs(10);

/// One change berth is making or just made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// A create, by the container's name (the id is only known once Docker answers).
    Create(String),
    /// A start, stop or removal of a known container, by the event it causes.
    Change(ContainerId, EventKind),
}

#[derive(Debug)]
struct Note {
    /// Calls in flight for this key.
    pending: u32,
    /// Dropped after this instant when nothing is in flight.
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    notes: HashMap<Key, Note>,
    destroyed: HashMap<ContainerId, Vec<oneshot::Sender<()>>>,
}

/// The changes berth is making, and the removals waiting for their `destroy` event.
#[derive(Debug, Default)]
pub struct Expected {
    inner: Mutex<Inner>,
    following: AtomicBool,
}

/// A change noted before its call; [`Expected::done`] ends it.
#[derive(Debug)]
#[must_use]
pub struct Noted(Vec<Key>);

impl Expected {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the observer is following the event stream (set by the observer).
    pub fn set_following(&self, on: bool) {
        self.following.store(on, Ordering::SeqCst);
        if !on {
            // Nobody will hear a destroy now: waiters fall back to inspecting.
            self.lock().destroyed.clear();
        }
    }

    /// Whether events are being followed, so a `destroy` can be waited for.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::SeqCst)
    }

    fn note(&self, keys: Vec<Key>) -> Noted {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.notes.retain(|_, n| n.pending > 0 || n.until.is_some_and(|u| u > now));
        for k in &keys {
            inner.notes.entry(k.clone()).or_insert(Note { pending: 0, until: None }).pending += 1;
        }
        Noted(keys)
    }

    /// Notes a create of the container named `name`.
    pub fn creating(&self, name: &str) -> Noted {
        self.note(vec![Key::Create(name.to_owned())])
    }

    /// Notes a start of `id`.
    pub fn starting(&self, id: &ContainerId) -> Noted {
        self.note(vec![Key::Change(id.clone(), EventKind::Start)])
    }

    /// Notes a stop or removal of `id`: its process dies (and, for a removal, it is destroyed).
    pub fn ending(&self, id: &ContainerId) -> Noted {
        self.note(vec![Key::Change(id.clone(), EventKind::Die), Key::Change(id.clone(), EventKind::Oom)])
    }

    /// Ends a note: after a success its event may still come for a short while; after a failure it is dropped.
    pub fn done(&self, noted: Noted, ok: bool) {
        let mut inner = self.lock();
        let until = Instant::now() + LINGER;
        for k in noted.0 {
            if let Some(n) = inner.notes.get_mut(&k) {
                n.pending = n.pending.saturating_sub(1);
                if ok {
                    n.until = Some(until);
                } else if n.pending == 0 {
                    inner.notes.remove(&k);
                }
            }
        }
    }

    /// Registers a wait for `id`'s `destroy` event; call before asking for the removal.
    pub fn await_destroy(&self, id: &ContainerId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        inner.destroyed.retain(|_, v| {
            v.retain(|t| !t.is_closed());
            !v.is_empty()
        });
        inner.destroyed.entry(id.clone()).or_default().push(tx);
        rx
    }

    /// Called by the observer for each event: whether berth made this change itself, so the inspect can be
    /// skipped. A `destroy` wakes the removals waiting for it (and is never skipped: it costs no call).
    pub fn on_event(&self, ev: &RuntimeEvent) -> bool {
        let mut inner = self.lock();
        let key = match ev.kind {
            EventKind::Destroy => {
                for tx in inner.destroyed.remove(&ev.container).unwrap_or_default() {
                    let _ = tx.send(());
                }
                return false;
            }
            EventKind::Create => match &ev.name {
                Some(name) => Key::Create(name.clone()),
                None => return false,
            },
            EventKind::Start | EventKind::Die | EventKind::Oom => Key::Change(ev.container.clone(), ev.kind),
            _ => return false,
        };
        let now = Instant::now();
        match inner.notes.get_mut(&key) {
            Some(n) if n.pending > 0 => true,
            Some(n) if n.until.is_some_and(|u| u > now) => {
                // The call finished first: its outcome is in the store; this event is its echo, heard once.
                inner.notes.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// Notes held, for tests.
    pub fn len(&self) -> usize {
        self.lock().notes.len()
    }

    /// Whether no note is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContainerId {
        format!("{n:064x}").parse().expect("hex")
    }

    fn ev(n: u8, kind: EventKind, name: Option<&str>) -> RuntimeEvent {
        RuntimeEvent { container: id(n), kind, name: name.map(str::to_owned), pooled: false }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_for_berths_own_change_is_skipped_whether_it_comes_before_or_after_the_reply() {
        let e = Expected::default();
        let n = e.creating("s1");
        assert!(e.on_event(&ev(1, EventKind::Create, Some("s1"))), "event during the call");
        e.done(n, true);
        let n = e.starting(&id(1));
        e.done(n, true);
        assert!(e.on_event(&ev(1, EventKind::Start, None)), "event after the reply");
        assert!(!e.on_event(&ev(1, EventKind::Start, None)), "a second start is not berth's");
    }

    #[tokio::test(start_paused = true)]
    async fn events_berth_did_not_cause_are_inspected() {
        let e = Expected::default();
        assert!(!e.on_event(&ev(1, EventKind::Create, Some("other"))));
        assert!(!e.on_event(&ev(1, EventKind::Die, None)));
        let n = e.starting(&id(1));
        assert!(!e.on_event(&ev(2, EventKind::Start, None)), "another container");
        assert!(!e.on_event(&ev(1, EventKind::Die, None)), "a crash while starting");
        e.done(n, false);
        assert!(e.is_empty(), "a failed call leaves nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn notes_whose_event_never_came_expire() {
        let e = Expected::default();
        let n = e.ending(&id(1));
        e.done(n, true);
        tokio::time::sleep(LINGER + Duration::from_millis(1)).await;
        assert!(!e.on_event(&ev(1, EventKind::Die, None)));
        let n = e.starting(&id(2));
        e.done(n, false);
        assert!(e.is_empty(), "expired notes are dropped");
    }

    #[tokio::test]
    async fn a_destroy_event_wakes_the_removal_waiting_for_it() {
        let e = Expected::default();
        let rx = e.await_destroy(&id(1));
        let other = e.await_destroy(&id(2));
        assert!(!e.on_event(&ev(1, EventKind::Destroy, None)));
        rx.await.expect("woken");
        e.set_following(false);
        assert!(other.await.is_err(), "nobody follows events: the waiter falls back");
    }
}
