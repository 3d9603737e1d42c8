//! The deadline rules: when a session ends because of a timer (its lifetime, the resume grace after its client
//! left, its idle timeout) and when a connection that has not said hello is closed. One pure function of `now`,
//! read by the planner (which ends what is due), the controller's wake-up (which wakes at the earliest deadline)
//! and the WebSocket layer (the hello timeout).

use crate::desired::{Attachment, DesiredSession};
use crate::policy::Policy;
use crate::status::EndReason;
use crate::time::Timestamp;

/// What a deadline is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    /// A live session.
    Session {
        /// When it was asked for (the lifetime runs from here).
        created_at: Timestamp,
        /// Its last input or output (the idle timeout runs from here).
        last_activity: Timestamp,
        /// When its last client left, while none holds it (the resume grace runs from here).
        detached_since: Option<Timestamp>,
    },
    /// A connection that has not said hello yet.
    Connection {
        /// When it was accepted (the hello timeout runs from here).
        accepted: Timestamp,
    },
}

impl Timed {
    /// The clocks of a desired session.
    pub fn session(s: &DesiredSession) -> Self {
        let detached_since = match s.attachment {
            Attachment::Detached { since } => Some(since),
            Attachment::Attached => None,
        };
        Self::Session { created_at: s.created_at, last_activity: s.last_activity, detached_since }
    }
}

/// Which rule a deadline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `sessions.max_lifetime`.
    Lifetime,
    /// `sessions.resume_grace`.
    ResumeGrace,
    /// `sessions.idle_timeout`.
    Idle,
    /// `server.hello_timeout`.
    Hello,
}

impl Rule {
    /// The end reason a session gets when this rule ends it (`None` for the hello timeout, which closes a
    /// connection and ends no session).
    pub fn end_reason(self) -> Option<EndReason> {
        match self {
            Self::Lifetime => Some(EndReason::LifetimeReached),
            Self::ResumeGrace => Some(EndReason::ResumeGraceExpired),
            Self::Idle => Some(EndReason::Idle),
            Self::Hello => None,
        }
    }
}

/// The answer of [`deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A deadline has been reached (at `now` or before). When several have, the first of lifetime, resume grace,
    /// idle is named.
    Due(Rule),
    /// None is reached yet; the earliest falls at this time.
    At(Timestamp),
}

impl Deadline {
    /// When to look again: `now` when due, else the earliest deadline.
    pub fn wake(self, now: Timestamp) -> Timestamp {
        match self {
            Self::Due(_) => now,
            Self::At(t) => t,
        }
    }
}

/// Whether a deadline of `what` is reached at `now` (a deadline is reached at its exact time), and if not, when
/// the earliest falls.
// Inlined: the planner asks for every session on every pass and reads only whether a rule is due, so the
// compiler can drop the rest (a tenth of a pass's instructions at 100k sessions, decision 0027).
#[inline]
pub fn deadline(what: &Timed, policy: &Policy, now: Timestamp) -> Deadline {
    let t = &policy.sessions;
    let rules: [(Rule, Option<Timestamp>); 4] = match *what {
        Timed::Session { created_at, last_activity, detached_since } => [
            (Rule::Lifetime, Some(created_at.add(t.max_lifetime))),
            (Rule::ResumeGrace, detached_since.map(|since| since.add(t.resume_grace))),
            (Rule::Idle, Some(last_activity.add(t.idle_timeout))),
            (Rule::Hello, None),
        ],
        Timed::Connection { accepted } => [
            (Rule::Lifetime, None),
            (Rule::ResumeGrace, None),
            (Rule::Idle, None),
            (Rule::Hello, Some(accepted.add(policy.server.hello_timeout))),
        ],
    };
    let mut earliest = Timestamp::from_millis(u64::MAX);
    for (rule, at) in rules {
        let Some(at) = at else { continue };
        if now >= at {
            return Deadline::Due(rule);
        }
        earliest = earliest.min(at);
    }
    Deadline::At(earliest)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.sessions.max_lifetime = S(100);
        p.sessions.resume_grace = S(10);
        p.sessions.idle_timeout = S(30);
        p.server.hello_timeout = S(5);
        p
    }

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn each_rule_is_due_at_its_exact_bound_and_not_a_millisecond_before() {
        let p = policy();
        // (what, now in ms, expected)
        let session = |last: u64, detached: Option<u64>| Timed::Session {
            created_at: at(0),
            last_activity: at(last),
            detached_since: detached.map(at),
        };
        let table = [
            (session(90_000, None), 99_999, Deadline::At(at(100_000))),
            (session(90_000, None), 100_000, Deadline::Due(Rule::Lifetime)),
            (session(0, None), 29_999, Deadline::At(at(30_000))),
            (session(0, None), 30_000, Deadline::Due(Rule::Idle)),
            (session(15_000, Some(20_000)), 29_999, Deadline::At(at(30_000))),
            (session(15_000, Some(20_000)), 30_000, Deadline::Due(Rule::ResumeGrace)),
            (session(25_000, Some(20_000)), 20_000, Deadline::At(at(30_000))),
            (Timed::Connection { accepted: at(1_000) }, 5_999, Deadline::At(at(6_000))),
            (Timed::Connection { accepted: at(1_000) }, 6_000, Deadline::Due(Rule::Hello)),
        ];
        for (what, now, expected) in table {
            assert_eq!(deadline(&what, &p, at(now)), expected, "{what:?} at {now} ms");
        }
    }

    #[test]
    fn when_several_are_reached_lifetime_comes_before_grace_and_grace_before_idle() {
        let p = policy();
        let all = Timed::Session { created_at: at(0), last_activity: at(0), detached_since: Some(at(0)) };
        assert_eq!(deadline(&all, &p, at(200_000)), Deadline::Due(Rule::Lifetime));
        let grace_and_idle =
            Timed::Session { created_at: at(50_000), last_activity: at(50_000), detached_since: Some(at(50_000)) };
        assert_eq!(deadline(&grace_and_idle, &p, at(90_000)), Deadline::Due(Rule::ResumeGrace));
    }

    #[test]
    fn the_hello_timeout_ends_no_session_and_the_session_rules_name_their_reasons() {
        assert_eq!(Rule::Hello.end_reason(), None);
        assert_eq!(Rule::Idle.end_reason(), Some(EndReason::Idle));
        assert_eq!(Rule::Lifetime.end_reason(), Some(EndReason::LifetimeReached));
        assert_eq!(Rule::ResumeGrace.end_reason(), Some(EndReason::ResumeGraceExpired));
        assert_eq!(Deadline::Due(Rule::Idle).wake(at(7)), at(7));
        assert_eq!(Deadline::At(at(9)).wake(at(7)), at(9));
    }
}
