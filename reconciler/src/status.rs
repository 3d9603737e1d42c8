//! Session status: the phase a caller watches, and the machine-readable reason a session ended.

use std::fmt;

use serde::Serialize;

use crate::desired::{Desired, DesiredSession};
use crate::ids::ContainerId;
use crate::observed::{ContainerState, Health, Observed, ObservedContainer};

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Asked for; no container yet.
    Pending,
    /// A container exists but is not yet running with its terminal attached.
    Creating,
    /// Running, terminal attached.
    Running,
    /// Ending: its container is being removed.
    Terminating,
    /// Ended and its container is gone.
    Gone,
}

impl Phase {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Terminating => "terminating",
            Self::Gone => "gone",
        }
    }

    /// Every phase, for pre-creating metric series.
    pub const ALL: [Self; 5] = [Self::Pending, Self::Creating, Self::Running, Self::Terminating, Self::Gone];
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum EndReason {
    /// The client or an operator released it.
    Released,
    /// The shell exited by itself.
    Exited {
        /// Its exit code.
        code: i64,
    },
    /// A signal killed it (for example `docker kill`).
    Killed {
        /// The signal number.
        signal: i64,
    },
    /// The kernel's OOM killer ended it.
    OomKilled,
    /// Someone removed its container outside berth.
    RemovedOutsideBerth,
    /// Docker would not create or start its container.
    CreateFailed {
        /// Docker's error, as text.
        error: String,
    },
    /// No input or output for the idle timeout.
    Idle,
    /// It reached the maximum lifetime.
    LifetimeReached,
    /// Nobody resumed it within the resume grace.
    ResumeGraceExpired,
    /// berth shut down with `shutdown: remove`, or an earlier run's container was removed at startup.
    Shutdown,
    /// Docker reported it unhealthy and the policy replaces unhealthy containers.
    Unhealthy,
    /// Its profile requires a recording, and the recording failed (the disk, the queue, or the size cap).
    RecordingFailed {
        /// Why, as text.
        error: String,
    },
}

impl EndReason {
    /// A short stable code, for metrics and the protocol.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Exited { .. } => "exited",
            Self::Killed { .. } => "killed",
            Self::OomKilled => "oom_killed",
            Self::RemovedOutsideBerth => "removed_outside_berth",
            Self::CreateFailed { .. } => "create_failed",
            Self::Idle => "idle",
            Self::LifetimeReached => "lifetime_reached",
            Self::ResumeGraceExpired => "resume_grace_expired",
            Self::Shutdown => "shutdown",
            Self::Unhealthy => "unhealthy",
            Self::RecordingFailed { .. } => "recording_failed",
        }
    }

    /// Every code, for pre-creating metric series.
    pub const CODES: [&'static str; 12] = [
        "released",
        "exited",
        "killed",
        "oom_killed",
        "removed_outside_berth",
        "create_failed",
        "idle",
        "lifetime_reached",
        "resume_grace_expired",
        "shutdown",
        "unhealthy",
        "recording_failed",
    ];

    /// Why a container that stopped by itself stopped.
    pub fn from_exit(container: &ObservedContainer) -> Self {
        match (container.oom_killed, container.exit_code) {
            (true, _) => Self::OomKilled,
            (false, Some(code)) if code > 128 && code < 160 => Self::Killed { signal: code - 128 },
            (false, Some(code)) => Self::Exited { code },
            (false, None) => Self::Killed { signal: 9 },
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exited with code {code}"),
            Self::Killed { signal } => write!(f, "killed by signal {signal}"),
            Self::CreateFailed { error } => write!(f, "create failed: {error}"),
            Self::RecordingFailed { error } => write!(f, "recording failed: {error}"),
            other => f.write_str(other.code()),
        }
    }
}

/// What a watcher sees of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The phase.
    pub phase: Phase,
    /// Why it is ending or ended.
    pub reason: Option<EndReason>,
    /// Its container, once known.
    pub container: Option<ContainerId>,
    /// Docker's health verdict on it.
    pub health: Health,
}

impl Status {
    /// A session just asked for.
    pub fn pending() -> Self {
        Self { phase: Phase::Pending, reason: None, container: None, health: Health::Unknown }
    }

    /// A session that ended for `reason`.
    pub fn gone(reason: EndReason) -> Self {
        Self { phase: Phase::Gone, reason: Some(reason), container: None, health: Health::Unknown }
    }
}

/// The status of `session` given what is observed. Pure. Only containers `desired` manages count, so a
/// session can never be shown a live peer's container. O(containers): passes use [`status_in`].
pub fn status_of(session: &DesiredSession, observed: &Observed, desired: &Desired) -> Status {
    let mine: Vec<&ObservedContainer> =
        observed.containers.values().filter(|c| c.labels.session == session.id && desired.manages(&c.labels)).collect();
    status_in(session, &mine, observed.attached.contains(&session.id))
}

/// The status of `session` given its own containers (already filtered by session and owner) and whether
/// berth holds its terminal stream. Pure.
pub fn status_in(session: &DesiredSession, mine: &[&ObservedContainer], attached: bool) -> Status {
    let bound = session
        .container
        .as_ref()
        .and_then(|id| mine.iter().find(|c| &c.id == id).copied())
        .or_else(|| mine.first().copied());
    let health = bound.map_or(Health::Unknown, |c| c.health);
    let container = bound.map(|c| c.id.clone());
    if let Some(reason) = &session.ending {
        let phase = if mine.is_empty() { Phase::Gone } else { Phase::Terminating };
        return Status { phase, reason: Some(reason.clone()), container, health };
    }
    let phase = match bound {
        None => Phase::Pending,
        Some(c) if c.state == ContainerState::Running && attached => Phase::Running,
        Some(_) => Phase::Creating,
    };
    Status { phase, reason: None, container, health }
}
