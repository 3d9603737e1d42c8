//! The admission queue: new sessions that found no room, in arrival order, each with its deadline and the
//! position its connection shows. Who may be admitted, and in which order, is `berth_reconciler::admission`'s
//! decision; this part only holds the waiters.

use std::collections::VecDeque;

use berth_reconciler::admission::Candidate;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::handle::{OpenError, SessionRequest, Ticket};

/// One waiting session request.
pub(super) struct Waiter {
    pub req: SessionRequest,
    pub reply: oneshot::Sender<Result<Ticket, OpenError>>,
    position: watch::Sender<usize>,
    deadline: Instant,
}

/// What a queued request's connection watches: its position, and the admission's result.
pub(super) type Queued = (watch::Receiver<usize>, oneshot::Receiver<Result<Ticket, OpenError>>);

#[derive(Default)]
pub(super) struct AdmissionQueue {
    waiters: VecDeque<Waiter>,
}

impl AdmissionQueue {
    pub(super) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Queues `req` at the back until `deadline`.
    pub(super) fn enqueue(&mut self, req: SessionRequest, deadline: Instant) -> Queued {
        let (position, position_rx) = watch::channel(self.waiters.len() + 1);
        let (reply, result) = oneshot::channel();
        self.waiters.push_back(Waiter { req, reply, position, deadline });
        (position_rx, result)
    }

    /// The waiters as admission sees them, in order.
    pub(super) fn candidates(&self) -> Vec<Candidate> {
        self.waiters.iter().map(|w| Candidate { kind: w.req.kind, ip: w.req.client_ip }).collect()
    }

    /// Drops waiters whose connection left, and takes out (to be answered) those whose time ran out at `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Waiter> {
        self.waiters.retain(|w| !w.reply.is_closed());
        let mut expired = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            if now >= w.deadline {
                expired.push(w);
            } else {
                self.waiters.push_back(w);
            }
        }
        expired
    }

    /// Takes the `i`th waiter out (to be admitted).
    pub(super) fn take(&mut self, i: usize) -> Option<Waiter> {
        self.waiters.remove(i)
    }

    /// Tells each waiter its position, where it changed.
    pub(super) fn renumber(&self) {
        for (i, w) in self.waiters.iter().enumerate() {
            w.position.send_if_modified(|p| {
                let changed = *p != i + 1;
                *p = i + 1;
                changed
            });
        }
    }

    /// Empties the queue (shutdown).
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Waiter> + '_ {
        self.waiters.drain(..)
    }

    /// The earliest deadline in the queue.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiters.iter().map(|w| w.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use berth_reconciler::SessionKind;

    use super::*;

    fn request() -> SessionRequest {
        SessionRequest {
            profile: None,
            kind: SessionKind::Anonymous,
            env: vec![],
            resume_hash: None,
            client_ip: None,
            id: None,
            identity: None,
            size: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_leave_when_gone_or_late_and_the_rest_are_renumbered() {
        let mut q = AdmissionQueue::default();
        let now = Instant::now();
        let (_p1, r1) = q.enqueue(request(), now + Duration::from_secs(1));
        let (_p2, _r2) = q.enqueue(request(), now + Duration::from_secs(5));
        let (p3, _r3) = q.enqueue(request(), now + Duration::from_secs(5));
        assert_eq!(*p3.borrow(), 3);
        assert_eq!(q.next_deadline(), Some(now + Duration::from_secs(1)));
        drop(r1);
        assert!(q.expire(now).is_empty(), "the first left: dropped, not answered");
        assert_eq!(q.len(), 2);
        q.renumber();
        assert_eq!(*p3.borrow(), 2);
        let late = q.expire(now + Duration::from_secs(5));
        assert_eq!((late.len(), q.len()), (2, 0), "at its deadline exactly a waiter is late");
    }
}
