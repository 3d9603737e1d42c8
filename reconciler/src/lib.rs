//! berth's pure core: typed ids, labels, desired and observed state, the policy, the planner and its actions.
//!
//! Nothing here does I/O or needs an async runtime. The `berth` crate wires these types to Docker and the network.

#![warn(clippy::disallowed_methods)]

pub mod admission;
pub mod deadline;
pub mod desired;
pub mod ids;
pub mod isolation;
pub mod labels;
pub mod observed;
pub mod peers;
pub mod plan;
pub mod policy;
pub mod policy_diff;
pub mod policy_file;
mod policy_unsafe;
pub mod pool;
pub mod retention;
pub mod retry;
pub mod startup;
pub mod status;
pub mod time;

pub use desired::{Attachment, Desired, DesiredSession, EnvVar, SessionKind};
pub use ids::{ContainerId, IdError, InstanceId, ProfileName, SessionId};
pub use labels::{
    ClaimedName, LabelNamespace, ManagedLabels, PeerLabels, PeerRole, PoolLabels, resume_hash, resume_hash_matches,
};
pub use observed::{ContainerState, Health, Observed, ObservedContainer};
pub use plan::{Action, ActionKind, ContainerSpec, Plan, RemoveReason, plan};
pub use policy::Policy;
pub use status::{EndReason, Phase, Status, status_in, status_of};
pub use time::Timestamp;
