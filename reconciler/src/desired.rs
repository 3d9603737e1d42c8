//! Desired state: the sessions berth has been asked to keep, and what each one should look like.
//!
//! The controller is the only writer; the planner reads a snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

use crate::ids::{ContainerId, InstanceId, ProfileName, SessionId};
use crate::labels::ManagedLabels;
use crate::status::EndReason;
use crate::time::Timestamp;

/// Whether a session was opened with credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// No token.
    Anonymous,
    /// A verified token.
    Authenticated,
}

impl SessionKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Authenticated => "authenticated",
        }
    }
}

impl FromStr for SessionKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "anonymous" => Ok(Self::Anonymous),
            "authenticated" => Ok(Self::Authenticated),
            _ => Err(()),
        }
    }
}

/// Whether a client is connected to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Attachment {
    /// A client holds the session.
    Attached,
    /// No client since `since`; the session may be resumed until the resume grace runs out.
    Detached {
        /// When the last client left.
        since: Timestamp,
    },
}

/// One environment variable for a container. Sensitive values never print.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Its value.
    #[serde(skip)]
    pub value: String,
    /// A credential: redacted in every rendering.
    pub sensitive: bool,
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sensitive { write!(f, "{}=<redacted>", self.name) } else { write!(f, "{}={:?}", self.name, self.value) }
    }
}

/// What berth wants for one session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredSession {
    /// The session's id.
    pub id: SessionId,
    /// The profile it runs.
    pub profile: ProfileName,
    /// Anonymous or authenticated.
    pub kind: SessionKind,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// Whether a client holds it.
    pub attachment: Attachment,
    /// Last input or output.
    pub last_activity: Timestamp,
    /// Client and credential environment, already filtered through the profile's allowlist.
    pub env: Vec<EnvVar>,
    /// SHA-256 of the resume secret, hex.
    pub resume_hash: Option<String>,
    /// The client address that opened it, for per-IP limits and the admin API.
    pub client_ip: Option<IpAddr>,
    /// Set once the session is to end; the planner then removes its containers.
    pub ending: Option<EndReason>,
    /// The container berth created or adopted for it.
    pub container: Option<ContainerId>,
    /// Consecutive failed create attempts.
    pub create_attempts: u32,
    /// Taken over from an earlier run or a dead peer rather than created for a client.
    pub adopted: bool,
}

impl DesiredSession {
    /// A new session, attached, with nothing created yet.
    pub fn new(id: SessionId, profile: ProfileName, kind: SessionKind, now: Timestamp) -> Self {
        Self {
            id,
            profile,
            kind,
            created_at: now,
            attachment: Attachment::Attached,
            last_activity: now,
            env: Vec::new(),
            resume_hash: None,
            client_ip: None,
            ending: None,
            container: None,
            create_attempts: 0,
            adopted: false,
        }
    }
}

/// All desired sessions of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The instance these sessions belong to; only containers it [manages](Self::manages) are planned for.
    pub owner: InstanceId,
    /// The instance's fencing epoch, stamped on new containers.
    pub epoch: u64,
    /// Sessions by id.
    pub sessions: BTreeMap<SessionId, DesiredSession>,
    /// Set during shutdown: no container is created or started.
    pub draining: bool,
    /// Whether this replica's sentinel runs. Without one, peers count the replica down and may take its
    /// containers over after the lease, so no container is created until it runs (new sessions wait, pending).
    /// `true` in a new store; the controller clears it until its sentinel starts.
    pub sentinel_up: bool,
    /// Dead replicas this one has taken over (by claim), with the highest epoch of theirs it covers.
    pub claimed: BTreeMap<InstanceId, u64>,
    /// Another replica holds a claim on this one's containers up to this epoch: those are no longer its own.
    pub disowned_through: Option<u64>,
}

impl Desired {
    /// An empty store for `owner`.
    pub fn new(owner: InstanceId) -> Self {
        Self {
            owner,
            epoch: 0,
            sessions: BTreeMap::new(),
            draining: false,
            sentinel_up: true,
            claimed: BTreeMap::new(),
            disowned_through: None,
        }
    }

    /// Whether a container with these labels is this instance's to plan for: its own (unless a peer has
    /// claimed that epoch), or a dead peer's it holds a claim on.
    pub fn manages(&self, labels: &ManagedLabels) -> bool {
        if labels.owner == self.owner {
            self.disowned_through.is_none_or(|e| labels.epoch > e)
        } else {
            self.claimed.get(&labels.owner).is_some_and(|e| labels.epoch <= *e)
        }
    }
}
