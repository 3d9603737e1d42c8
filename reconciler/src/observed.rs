//! The observed view: berth's managed containers as Docker last reported them.
//!
//! Only containers carrying the managed marker ever enter this view.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ids::{ContainerId, SessionId};
use crate::labels::ManagedLabels;
use crate::time::Timestamp;

/// A container's lifecycle state, as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being restarted by Docker.
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead: removal failed half way.
    Dead,
}

impl ContainerState {
    /// Parses Docker's state word; unknown words read as `Dead` so they get cleaned up.
    pub fn from_docker(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            _ => Self::Dead,
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }

    /// Every state, for pre-creating metric series.
    pub const ALL: [Self; 7] =
        [Self::Created, Self::Running, Self::Paused, Self::Restarting, Self::Removing, Self::Exited, Self::Dead];
}

/// Docker's health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No health check, or none reported yet.
    Unknown,
    /// In the start period.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// One managed container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedContainer {
    /// Docker's id.
    pub id: ContainerId,
    /// berth's labels on it.
    pub labels: ManagedLabels,
    /// Its state.
    pub state: ContainerState,
    /// Exit code, once exited and known.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// Health check verdict.
    pub health: Health,
    /// berth has asked Docker to remove it; nobody asks again while that is under way.
    pub removal_requested: bool,
}

/// Everything berth knows about its containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// When the last complete list was taken. `None` until the first one: nothing is planned before it.
    pub listed_at: Option<Timestamp>,
    /// Managed containers by id.
    pub containers: BTreeMap<ContainerId, ObservedContainer>,
    /// Sessions whose terminal stream berth currently holds.
    pub attached: BTreeSet<SessionId>,
}

impl Observed {
    /// Containers grouped by session.
    pub fn by_session(&self) -> BTreeMap<SessionId, Vec<&ObservedContainer>> {
        let mut out: BTreeMap<SessionId, Vec<&ObservedContainer>> = BTreeMap::new();
        for c in self.containers.values() {
            out.entry(c.labels.session).or_default().push(c);
        }
        out
    }
}
