//! The narrow container-runtime interface the controller drives, and its error type.
//!
//! `docker` implements it with bollard (the only module that imports bollard); `fake` is an in-memory
//! engine for controller tests; `faulty` wraps either to inject delays, failures, outages and lost events.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use berth_reconciler::peers::{MarkerSpec, PeerContainer};
use berth_reconciler::pool::ListedPooled;
use berth_reconciler::{ContainerId, ContainerSpec, LabelNamespace, ObservedContainer};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::AsyncWrite;

pub mod docker;
pub mod fake;
pub mod faulty;
pub mod flavour;
pub mod select;

/// An engine operation: the label of `berth_docker_api_calls_total` and `berth_docker_api_seconds`, and the name
/// in timeout errors and logs. One type, so a series cannot be created under one name and counted under another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerOp {
    /// Is the engine there.
    Ping,
    /// The full list of managed containers.
    List,
    /// One container.
    Inspect,
    /// A session container.
    Create,
    /// Starting a created container.
    Start,
    /// Stopping a running one.
    Stop,
    /// Force removal.
    Remove,
    /// The terminal stream.
    Attach,
    /// A terminal size change.
    Resize,
    /// Sentinels and claims.
    ListPeers,
    /// A claim container.
    CreateMarker,
    /// This replica's sentinel.
    RunSentinel,
    /// The engine's registered runtimes (`GET /info`).
    Info,
    /// Warm-pool containers (`label=<ns>.pool`).
    ListPool,
    /// A claim's rename of a pooled container to its session's name.
    Rename,
    /// The head of a container's log: what an earlier run's pooled container printed, read before adopting it.
    Logs,
}

impl DockerOp {
    /// Every operation, for pre-creating metric series.
    pub const ALL: [Self; 16] = [
        Self::Ping,
        Self::List,
        Self::Inspect,
        Self::Create,
        Self::Start,
        Self::Stop,
        Self::Remove,
        Self::Attach,
        Self::Resize,
        Self::ListPeers,
        Self::CreateMarker,
        Self::RunSentinel,
        Self::Info,
        Self::ListPool,
        Self::Rename,
        Self::Logs,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::List => "list",
            Self::Inspect => "inspect",
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Remove => "remove",
            Self::Attach => "attach",
            Self::Resize => "resize",
            Self::ListPeers => "list_peers",
            Self::CreateMarker => "create_marker",
            Self::RunSentinel => "run_sentinel",
            Self::Info => "info",
            Self::ListPool => "list_pool",
            Self::Rename => "rename",
            Self::Logs => "logs",
        }
    }
}

impl std::fmt::Display for DockerOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached (socket missing, connection refused or reset).
    #[error("docker unreachable: {0}")]
    Unreachable(String),
    /// The call did not finish within its timeout.
    #[error("docker call {op} timed out after {after:?}")]
    Timeout {
        /// Which call.
        op: DockerOp,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The container (or image) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A container with that name already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The engine refused the request as invalid; retrying will not help.
    #[error("rejected by docker: {0}")]
    Rejected(String),
    /// Any other engine error.
    #[error("docker error: {0}")]
    Other(String),
}

impl RuntimeError {
    /// Whether retrying the same call can succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Rejected(_))
    }

    /// The kind of failure, for the retry rule (`berth_reconciler::retry`).
    pub fn failure(&self) -> berth_reconciler::retry::Failure {
        use berth_reconciler::retry::Failure;
        match self {
            Self::Unreachable(_) => Failure::Unreachable,
            e if e.is_permanent() => Failure::Permanent,
            _ => Failure::Transient,
        }
    }
}

/// What a Docker event told us about one managed container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The container was created.
    Create,
    /// It started.
    Start,
    /// Its main process exited.
    Die,
    /// The OOM killer hit it.
    Oom,
    /// It was removed.
    Destroy,
    /// Its health status changed.
    Health,
    /// Podman's state settled after an exit (`cleanup`: the state now says `exited`, where the inspect after
    /// `die` may still have found the transitional `stopped`) or a re-initialisation (`init`).
    Settled,
    /// Something else (attach, resize, kill, ...): ignored.
    Other,
}

impl EventKind {
    /// Every kind, for pre-creating metric series.
    pub const ALL: [Self; 8] =
        [Self::Create, Self::Start, Self::Die, Self::Oom, Self::Destroy, Self::Health, Self::Settled, Self::Other];

    /// The `kind` label of `berth_docker_events_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Die => "die",
            Self::Oom => "oom",
            Self::Destroy => "destroy",
            Self::Health => "health",
            Self::Settled => "settled",
            Self::Other => "other",
        }
    }
}

/// One container event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    /// The container.
    pub container: ContainerId,
    /// What happened.
    pub kind: EventKind,
    /// The container's name, when the event carries it (Docker's and Podman's do).
    pub name: Option<String>,
    /// Whether the container is a pooled one (claimed or not): it carries the pool key, not the session marker,
    /// and its state comes from a list, not an inspect (decision 0025).
    pub pooled: bool,
}

/// Resizes a TTY to (columns, rows).
pub type ResizeFn = Box<dyn Fn(u16, u16) -> BoxFuture<'static, Result<(), RuntimeError>> + Send + Sync>;

/// The terminal byte stream of an attached container.
pub struct AttachIo {
    /// Output from the container's TTY.
    pub output: BoxStream<'static, Result<Bytes, RuntimeError>>,
    /// Input to the container's TTY.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Resizes the TTY to (columns, rows).
    pub resize: ResizeFn,
}

impl std::fmt::Debug for AttachIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachIo")
    }
}

/// The calls berth makes to a container engine. Implementations put no timeouts of their own; the
/// executor wraps every call in one.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Checks the engine answers.
    fn ping(&self) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The names of the OCI runtimes the engine has registered (Docker's `Runtimes` in `GET /info`), which a
    /// profile's `runtime` must be one of.
    fn runtimes(&self) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Lists every container carrying `ns`'s managed marker, in any state.
    fn list(&self, ns: &LabelNamespace) -> impl Future<Output = Result<Vec<ObservedContainer>, RuntimeError>> + Send;

    /// Inspects one container; `Ok(None)` when it does not exist or is not managed in `ns`.
    fn inspect(
        &self,
        ns: &LabelNamespace,
        id: &ContainerId,
    ) -> impl Future<Output = Result<Option<ObservedContainer>, RuntimeError>> + Send;

    /// Inspects one pooled container (claimed or not), as a list of the pool would report it, its claim read
    /// from its name under `prefix`; `Ok(None)` when it does not exist or carries no pool key of `ns`.
    fn inspect_pooled(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
        id: &ContainerId,
    ) -> impl Future<Output = Result<Option<ListedPooled>, RuntimeError>> + Send;

    /// Creates a container from `spec`.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<ContainerId, RuntimeError>> + Send;

    /// Starts a created container.
    fn start(&self, id: &ContainerId) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops a running container, killing it after `grace`.
    fn stop(&self, id: &ContainerId, grace: Duration) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Force-removes a container. Removing one that is already gone succeeds.
    fn remove(&self, id: &ContainerId) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Attaches to a container's TTY (stdin, stdout, stderr, streaming). With `history`, the stream starts with
    /// the container's own log (its output so far, bounded by the profile's log limits), so a replica that adopts
    /// a running session can replay it at the offsets its client knows.
    fn attach(&self, id: &ContainerId, history: bool) -> impl Future<Output = Result<AttachIo, RuntimeError>> + Send;

    /// Streams events for containers carrying `ns`'s marker. The stream ends or errors when the engine goes away.
    fn events(&self, ns: &LabelNamespace) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

    /// Lists every sentinel and claim container of `ns` (see `berth_reconciler::peers`), in any state.
    fn list_peers(&self, ns: &LabelNamespace) -> impl Future<Output = Result<Vec<PeerContainer>, RuntimeError>> + Send;

    /// Creates a claim container (never started). Fails with [`RuntimeError::Conflict`] when the name is taken:
    /// that is the lock.
    fn create_marker(&self, spec: &MarkerSpec) -> impl Future<Output = Result<ContainerId, RuntimeError>> + Send;

    /// Creates, attaches to and starts a sentinel. Its stdin stays open as long as the returned [`Sentinel`] is
    /// held, and closes with the process however it ends, which stops the sentinel.
    fn run_sentinel(&self, spec: &MarkerSpec) -> impl Future<Output = Result<Sentinel, RuntimeError>> + Send;

    /// Every warm-pool container of the namespace (`label=<ns>.pool`), claimed ones with the session their name
    /// under `prefix` gives (decision 0025).
    fn list_pool(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ListedPooled>, RuntimeError>> + Send;

    /// Renames a container: the atomic step of a claim. A name already taken is a `Conflict`.
    fn rename(&self, id: &ContainerId, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The first `max` bytes or so of a container's log (its TTY output from the start, as the engine keeps it),
    /// without following it.
    fn log_head(&self, id: &ContainerId, max: usize) -> impl Future<Output = Result<Vec<u8>, RuntimeError>> + Send;
}

/// A running sentinel: hold it for the replica's life.
pub struct Sentinel {
    /// Its container.
    pub id: ContainerId,
    /// Resolves when the sentinel stops (its output stream ends). Dropping it closes the sentinel's stdin.
    pub ended: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel").field("id", &self.id).finish_non_exhaustive()
    }
}
