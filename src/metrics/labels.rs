//! The label values of berth's metrics that no other module's enum names: each closed set is one small enum, so
//! every label string is written once, here.

use berth_reconciler::admission::Reject;

/// The `result` label of counters that count successes and failures (`ok`, `error`).
pub(super) fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

/// How a connection's session came to its terminal: the `start` label of `berth_time_to_first_output_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new session that claimed a warm-pool container (decision 0025).
    Pool,
    /// A new session whose container was created for it.
    Cold,
    /// A resume of an existing session.
    Resume,
}

impl Start {
    /// Every value, for pre-creating the series.
    pub const ALL: [Self; 3] = [Self::Pool, Self::Cold, Self::Resume];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Cold => "cold",
            Self::Resume => "resume",
        }
    }
}

/// Why an admission is refused: the `reason` label of `berth_admissions_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The instance-wide cap is reached.
    Full,
    /// The anonymous cap is reached.
    AnonymousFull,
    /// The authenticated cap is reached.
    AuthenticatedFull,
    /// This client IP has its maximum of concurrent sessions.
    PerIp,
    /// The client opened connections faster than its rate limit allows.
    RateLimited,
    /// The client waited in the admission queue past its deadline.
    QueueTimeout,
    /// berth is shutting down.
    Draining,
    /// The client's credentials were missing or wrong.
    Unauthorized,
    /// The upgrade request was malformed.
    BadRequest,
}

/// Every reason an admission is refused, as its label (the series pre-created at zero).
pub const REJECT_REASONS: [&str; 9] = [
    "full",
    "anonymous_full",
    "authenticated_full",
    "per_ip",
    "rate_limited",
    "queue_timeout",
    "draining",
    "unauthorized",
    "bad_request",
];

impl Rejection {
    /// Every reason, in the order of [`REJECT_REASONS`].
    pub const ALL: [Self; 9] = [
        Self::Full,
        Self::AnonymousFull,
        Self::AuthenticatedFull,
        Self::PerIp,
        Self::RateLimited,
        Self::QueueTimeout,
        Self::Draining,
        Self::Unauthorized,
        Self::BadRequest,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => Reject::Full.as_str(),
            Self::AnonymousFull => Reject::AnonymousFull.as_str(),
            Self::AuthenticatedFull => Reject::AuthenticatedFull.as_str(),
            Self::PerIp => Reject::PerIp.as_str(),
            Self::RateLimited => "rate_limited",
            Self::QueueTimeout => "queue_timeout",
            Self::Draining => "draining",
            Self::Unauthorized => "unauthorized",
            Self::BadRequest => "bad_request",
        }
    }
}

impl From<Reject> for Rejection {
    fn from(r: Reject) -> Self {
        match r {
            Reject::Full => Self::Full,
            Reject::AnonymousFull => Self::AnonymousFull,
            Reject::AuthenticatedFull => Self::AuthenticatedFull,
            Reject::PerIp => Self::PerIp,
        }
    }
}

/// How a resume attempt ended: the `result` label of `berth_resumes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// The session was found and the secret matched.
    Ok,
    /// No such session.
    Unknown,
    /// The session exists but the secret did not match.
    BadSecret,
    /// The session is held by another replica.
    Elsewhere,
}

impl ResumeOutcome {
    /// Every outcome, for pre-creating metric series.
    pub const ALL: [Self; 4] = [Self::Ok, Self::Unknown, Self::BadSecret, Self::Elsewhere];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unknown => "unknown",
            Self::BadSecret => "bad_secret",
            Self::Elsewhere => "elsewhere",
        }
    }
}

/// How a takeover of a dead peer ended: the `result` label of `berth_peer_takeovers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeoverResult {
    /// This replica took the peer's sessions over.
    Won,
    /// Another replica took them first.
    Lost,
    /// The attempt failed.
    Error,
}

impl TakeoverResult {
    /// Every result, for pre-creating metric series.
    pub const ALL: [Self; 3] = [Self::Won, Self::Lost, Self::Error];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Error => "error",
        }
    }
}

/// How a policy reload ended: the `result` label of `berth_policy_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new file was read and is in force.
    Ok,
    /// The new file was refused; the old policy stays.
    Error,
    /// The file was changed in place, which berth reports but does not apply.
    InPlace,
}

impl ReloadResult {
    /// Every result, for pre-creating metric series.
    pub const ALL: [Self; 3] = [Self::Ok, Self::Error, Self::InPlace];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::InPlace => "in_place",
        }
    }
}

/// Which way terminal bytes went: the `direction` label of `berth_terminal_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the container.
    In,
    /// From the container to the client.
    Out,
}

impl Direction {
    /// Both directions, for pre-creating metric series.
    pub const ALL: [Self; 2] = [Self::In, Self::Out];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_labels_are_the_pre_created_reasons() {
        assert_eq!(Rejection::ALL.map(Rejection::as_str), REJECT_REASONS);
    }

    #[test]
    fn an_admission_refusal_keeps_its_code_as_label() {
        for r in [Reject::Full, Reject::AnonymousFull, Reject::AuthenticatedFull, Reject::PerIp] {
            assert_eq!(Rejection::from(r).as_str(), r.as_str());
        }
    }
}

/// Why a recording failed: the `reason` label of `berth_recording_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingFailureKind {
    /// Its file could not be created.
    Open,
    /// The queue between the data path and the writer was full.
    QueueFull,
    /// It reached its size cap.
    Capped,
    /// A write failed.
    Write,
}

impl RecordingFailureKind {
    /// Every reason (the series pre-created at zero).
    pub const ALL: [Self; 4] = [Self::Open, Self::QueueFull, Self::Capped, Self::Write];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::QueueFull => "queue_full",
            Self::Capped => "capped",
            Self::Write => "write",
        }
    }
}
