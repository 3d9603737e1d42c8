//! The controller's public face: a cheap, cloneable handle that asks for sessions, watches them, detaches,
//! resumes and releases them. It only sends commands; the controller task owns all state.

use std::net::IpAddr;
use std::time::Duration;

use berth_reconciler::plan::Plan;
use berth_reconciler::{EndReason, EnvVar, ProfileName, SessionId, SessionKind, Status};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::grants::{Granted, JoinError, Joined, Presence, Role, ShareError};

/// A request for a new session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// The profile; `None` for the policy's default.
    pub profile: Option<ProfileName>,
    /// Anonymous or authenticated.
    pub kind: SessionKind,
    /// Environment, already filtered through the profile's allowlist and credential mapping.
    pub env: Vec<EnvVar>,
    /// SHA-256 (hex) of the resume secret handed to the client.
    pub resume_hash: Option<String>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The id to give the session: the one the WebSocket layer already announced to the load balancer in the
    /// upgrade response. `None` (or an id already in use) draws a fresh one.
    pub id: Option<SessionId>,
    /// Who opened it (a static token's name or a JWT's subject), for the audit log; `None` when anonymous.
    pub identity: Option<String>,
    /// The terminal size (columns, rows) the client asked for: a pooled container's launcher sets it at the
    /// claim, so the session's first resize needs no engine call. `None`: the first resize sets it.
    pub size: Option<(u16, u16)>,
}

/// A session the caller holds: its id, its status, and the lease that identifies this holder.
#[derive(Debug)]
pub struct Ticket {
    /// The session.
    pub id: SessionId,
    /// Its status as it changes.
    pub status: watch::Receiver<Status>,
    /// Identifies this holder; a later resume takes over with a new lease.
    pub lease: u64,
    /// How the session came to its container: claimed from the warm pool, created cold, or resumed.
    pub start: crate::metrics::Start,
}

/// The answer to an open request.
#[derive(Debug)]
pub enum Admission {
    /// Admitted at once.
    Admitted(Ticket),
    /// Waiting for capacity: `position` counts down (1 = next); `result` resolves when admitted or refused.
    Queued {
        /// Position in the queue.
        position: watch::Receiver<usize>,
        /// The final answer.
        result: oneshot::Receiver<Result<Ticket, OpenError>>,
    },
}

/// Why a session was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// berth is shutting down.
    #[error("berth is shutting down")]
    Draining,
    /// A cap is reached and the queue is full, off, or not for this cap.
    #[error("no capacity ({reason}); retry after {retry_after:?}")]
    Full {
        /// Which cap.
        reason: &'static str,
        /// A hint for when to retry.
        retry_after: Duration,
    },
    /// Waited in the queue past the policy's queue wait.
    #[error("waited {0:?} in the queue without a free slot")]
    QueueTimeout(Duration),
    /// The profile is not in the policy.
    #[error("unknown profile {0}")]
    UnknownProfile(String),
    /// The controller is gone.
    #[error("controller stopped")]
    Stopped,
}

/// Why a resume was refused. One variant for unknown ids and wrong secrets alike: no oracle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The session does not exist here, has ended, or the secret does not match.
    #[error("unknown session or wrong resume secret")]
    Refused,
    /// The session runs here under another replica that is restarting or not yet found dead: try again soon.
    #[error("the session belongs to another replica that is not reachable now; retry in a few seconds")]
    Elsewhere,
    /// The controller is gone.
    #[error("controller stopped")]
    Stopped,
}

/// One session as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// Its phase.
    pub status: Status,
    /// Its profile.
    pub profile: ProfileName,
    /// Anonymous or authenticated.
    pub kind: SessionKind,
    /// Seconds since creation.
    pub age_seconds: u64,
    /// Seconds since the last input or output.
    pub idle_seconds: u64,
    /// Whether a client holds it.
    pub attached: bool,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// The instance that owns it.
    pub owner: String,
    /// Hash of the profile its container was created from.
    pub policy_hash: Option<String>,
    /// Hash of the profile as it is now.
    pub current_policy_hash: Option<String>,
    /// Adopted from an earlier run or a dead peer.
    pub adopted: bool,
}

/// One entry in a session's decision log.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// When, in Unix milliseconds.
    pub at: u64,
    /// `observed`, `planned`, `outcome` or `ended`.
    pub kind: &'static str,
    /// What happened, in words.
    pub detail: String,
}

/// A session with its recent decisions.
#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    /// The listing.
    pub session: SessionInfo,
    /// Recent decisions, oldest first (at most 20).
    pub decisions: Vec<Decision>,
}

/// Whether the controller is ready to serve.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Docker answers.
    pub docker_up: bool,
    /// The first complete list has been applied.
    pub listed: bool,
    /// This replica's sentinel runs (or is being started for the first time, or replaced after a loss less than
    /// half a lease ago), so peers see it alive and leave its containers alone.
    pub sentinel: bool,
    /// Shutting down.
    pub draining: bool,
    /// Hash of the policy in force.
    pub policy_hash: String,
}

impl Readiness {
    /// Ready to take sessions.
    pub fn is_ready(&self) -> bool {
        self.docker_up && self.listed && self.sentinel && !self.draining
    }

    /// Why not ready, in a few words (for a 503's body), or `None` when ready.
    pub fn why_not(&self) -> Option<&'static str> {
        if self.draining {
            Some("draining")
        } else if !self.docker_up {
            Some("not ready: docker unreachable")
        } else if !self.listed {
            Some("not ready: first container list pending")
        } else if !self.sentinel {
            Some("not ready: no sentinel running")
        } else {
            None
        }
    }
}

pub(crate) enum Command {
    Open {
        req: SessionRequest,
        reply: oneshot::Sender<Result<Admission, OpenError>>,
    },
    Resume {
        id: SessionId,
        secret: String,
        reply: oneshot::Sender<Result<Ticket, ResumeError>>,
    },
    Detach {
        id: SessionId,
        lease: u64,
    },
    Release {
        id: SessionId,
        reason: EndReason,
    },
    List {
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    Show {
        id: SessionId,
        reply: oneshot::Sender<Option<SessionDetail>>,
    },
    DryRun {
        reply: oneshot::Sender<Plan>,
    },
    Resync,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Share {
        id: SessionId,
        lease: u64,
        role: Role,
        ttl: Option<Duration>,
        label: Option<String>,
        reply: oneshot::Sender<Result<Granted, ShareError>>,
    },
    Revoke {
        id: SessionId,
        lease: u64,
        grant_id: String,
        reply: oneshot::Sender<Result<(), ShareError>>,
    },
    Join {
        id: SessionId,
        secret: String,
        identity: Option<String>,
        reply: oneshot::Sender<Result<(Joined, watch::Receiver<Status>), JoinError>>,
    },
    Leave {
        id: SessionId,
        conn: u64,
    },
    Presence {
        id: SessionId,
        lease: u64,
        reply: oneshot::Sender<Option<watch::Receiver<Presence>>>,
    },
}

/// A handle on the controller. Clones are cheap.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) ready: watch::Receiver<Readiness>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open { .. } => "Open",
            Self::Resume { .. } => "Resume",
            Self::Detach { .. } => "Detach",
            Self::Release { .. } => "Release",
            Self::List { .. } => "List",
            Self::Show { .. } => "Show",
            Self::DryRun { .. } => "DryRun",
            Self::Resync => "Resync",
            Self::Shutdown { .. } => "Shutdown",
            Self::Share { .. } => "Share",
            Self::Revoke { .. } => "Revoke",
            Self::Join { .. } => "Join",
            Self::Leave { .. } => "Leave",
            Self::Presence { .. } => "Presence",
        })
    }
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Asks for a new session.
    ///
    /// # Errors
    /// When no capacity is free and queueing is not possible, or berth is shutting down.
    pub async fn open(&self, req: SessionRequest) -> Result<Admission, OpenError> {
        self.ask(|reply| Command::Open { req, reply }).await.unwrap_or(Err(OpenError::Stopped))
    }

    /// Asks for a new session and waits through the queue, if any.
    ///
    /// # Errors
    /// As [`Handle::open`], plus a queue timeout.
    pub async fn open_and_wait(&self, req: SessionRequest) -> Result<Ticket, OpenError> {
        match self.open(req).await? {
            Admission::Admitted(t) => Ok(t),
            Admission::Queued { result, .. } => result.await.unwrap_or(Err(OpenError::Stopped)),
        }
    }

    /// Takes over an existing session with its resume secret.
    ///
    /// # Errors
    /// When the session is unknown, ended, or the secret is wrong.
    pub async fn resume(&self, id: SessionId, secret: String) -> Result<Ticket, ResumeError> {
        self.ask(|reply| Command::Resume { id, secret, reply }).await.unwrap_or(Err(ResumeError::Stopped))
    }

    /// Marks the session detached, if `lease` still holds it. It stays resumable for the resume grace.
    pub async fn detach(&self, id: SessionId, lease: u64) {
        let _ = self.tx.send(Command::Detach { id, lease }).await;
    }

    /// Ends the session.
    pub async fn release(&self, id: SessionId, reason: EndReason) {
        let _ = self.tx.send(Command::Release { id, reason }).await;
    }

    /// Lists every session.
    pub async fn list(&self) -> Vec<SessionInfo> {
        self.ask(|reply| Command::List { reply }).await.unwrap_or_default()
    }

    /// One session with its recent decisions.
    pub async fn show(&self, id: SessionId) -> Option<SessionDetail> {
        self.ask(|reply| Command::Show { id, reply }).await.flatten()
    }

    /// The plan a reconcile pass would make now, without doing it.
    pub async fn dry_run(&self) -> Option<Plan> {
        self.ask(|reply| Command::DryRun { reply }).await
    }

    /// Asks for a full list and reconcile now.
    pub async fn resync(&self) {
        let _ = self.tx.send(Command::Resync).await;
    }

    /// Stops new work and drains; returns once the controller has finished.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    /// Makes a share grant on a session that `lease` holds; `ttl` is bounded by the profile (`None`: its bound).
    ///
    /// # Errors
    /// When `lease` does not hold the session, the profile does not allow sharing, or the session has too many
    /// grants.
    pub async fn share(
        &self,
        id: SessionId,
        lease: u64,
        role: Role,
        ttl: Option<Duration>,
        label: Option<String>,
    ) -> Result<Granted, ShareError> {
        self.ask(|reply| Command::Share { id, lease, role, ttl, label, reply })
            .await
            .unwrap_or(Err(ShareError::Stopped))
    }

    /// Revokes a grant of a session that `lease` holds; its connections are closed.
    ///
    /// # Errors
    /// When `lease` does not hold the session or the grant is not the session's.
    pub async fn revoke(&self, id: SessionId, lease: u64, grant_id: String) -> Result<(), ShareError> {
        self.ask(|reply| Command::Revoke { id, lease, grant_id, reply }).await.unwrap_or(Err(ShareError::Stopped))
    }

    /// Joins a session through a grant: the join, and the session's status.
    ///
    /// # Errors
    /// When the grant is unknown, revoked or expired, or the session is full or gone.
    pub async fn join(
        &self,
        id: SessionId,
        secret: String,
        identity: Option<String>,
    ) -> Result<(Joined, watch::Receiver<Status>), JoinError> {
        self.ask(|reply| Command::Join { id, secret, identity, reply }).await.unwrap_or(Err(JoinError::Stopped))
    }

    /// A joined connection left.
    pub async fn leave(&self, id: SessionId, conn: u64) {
        let _ = self.tx.send(Command::Leave { id, conn }).await;
    }

    /// Who is connected through grants to a session that `lease` holds, as it changes.
    pub async fn presence(&self, id: SessionId, lease: u64) -> Option<watch::Receiver<Presence>> {
        self.ask(|reply| Command::Presence { id, lease, reply }).await.flatten()
    }

    /// Readiness as it changes.
    pub fn readiness(&self) -> watch::Receiver<Readiness> {
        self.ready.clone()
    }
}
