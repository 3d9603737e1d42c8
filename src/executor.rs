//! The executor: interprets planned actions against the runtime, with bounded concurrency and a timeout
//! on every call. It decides nothing; outcomes go back to the controller.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use berth_reconciler::observed::Health;
use berth_reconciler::{
    Action, ContainerId, ContainerSpec, ContainerState, LabelNamespace, ManagedLabels, ObservedContainer, SessionId,
};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::expected::Expected;
use crate::metrics::Metrics;
use crate::runtime::{AttachIo, DockerOp, Runtime, RuntimeError};

/// Runs one runtime call under `timeout`, recording its result and latency as `op`.
pub async fn timed<T>(
    metrics: &Metrics,
    op: DockerOp,
    timeout: Duration,
    call: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, RuntimeError> {
    let started = Instant::now();
    let res = match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::Timeout { op, after: timeout }),
    };
    metrics.docker_call(op, res.is_ok(), started.elapsed());
    res
}

/// What one action did.
#[derive(Debug)]
pub enum Outcome {
    /// A container was created.
    Created {
        /// The session.
        session: SessionId,
        /// The container as created (state `created`).
        container: ObservedContainer,
    },
    /// The terminal stream is held.
    Attached {
        /// The session.
        session: SessionId,
    },
    /// A container started.
    Started {
        /// Its id.
        container: ContainerId,
    },
    /// A container stopped.
    Stopped {
        /// Its id.
        container: ContainerId,
    },
    /// Containers were removed and verified gone.
    Removed {
        /// Their ids.
        containers: Vec<ContainerId>,
    },
}

/// An action's result, with the per-container failures of a bulk removal.
#[derive(Debug)]
pub struct Completed {
    /// The action that ran.
    pub action: Action,
    /// What it did, or why it failed.
    pub result: Result<Outcome, RuntimeError>,
    /// For bulk removals: containers that could not be removed.
    pub failed: Vec<(ContainerId, RuntimeError)>,
}

/// Receives attach streams; the terminal registry implements it.
pub trait AttachSink: Send + Sync + 'static {
    /// Takes the attach stream of `session`.
    fn connect(&self, session: SessionId, io: AttachIo);

    /// Whether the stream should start with the container's log: the session has no output here yet (it was
    /// adopted from an earlier run or a dead peer, or it is new and its log is empty anyway).
    fn wants_history(&self, session: SessionId) -> bool;
}

/// Applies actions to a runtime.
pub struct Executor<R> {
    runtime: R,
    ns: LabelNamespace,
    timeout: Duration,
    /// Bounds creates, starts and stops: what a new session waits on.
    permits: Arc<Semaphore>,
    /// Bounds removals separately, so cleaning up ended sessions never delays new ones.
    remove_permits: Arc<Semaphore>,
    concurrency: usize,
    metrics: Arc<Metrics>,
    sink: Arc<dyn AttachSink>,
    /// The changes being made, shared with the observer so it skips their events' inspects.
    expected: Arc<Expected>,
}

/// How long a removal waits for its `destroy` event before inspecting instead (events can be missed across a
/// reconnect; the periodic list is the last safety net).
const DESTROY_WAIT: Duration = Duration::from_secs(2);

impl<R> std::fmt::Debug for Executor<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl<R> Clone for Executor<R>
where
    R: Clone,
{
    fn clone(&self) -> Self {
        Self {
            runtime: self.runtime.clone(),
            ns: self.ns.clone(),
            timeout: self.timeout,
            permits: self.permits.clone(),
            remove_permits: self.remove_permits.clone(),
            concurrency: self.concurrency,
            metrics: self.metrics.clone(),
            sink: self.sink.clone(),
            expected: self.expected.clone(),
        }
    }
}

impl<R: Runtime> Executor<R> {
    /// An executor running at most `concurrency` Docker actions at once.
    pub fn new(
        runtime: R,
        ns: LabelNamespace,
        timeout: Duration,
        concurrency: usize,
        metrics: Arc<Metrics>,
        sink: Arc<dyn AttachSink>,
    ) -> Self {
        let n = concurrency.max(1);
        Self {
            runtime,
            ns,
            timeout,
            permits: Arc::new(Semaphore::new(n)),
            remove_permits: Arc::new(Semaphore::new(n)),
            concurrency: n,
            metrics,
            sink,
            expected: Arc::default(),
        }
    }

    /// Shares `expected` with the observer: berth's own changes are noted there, and removals are verified by
    /// their `destroy` event while the observer follows events.
    #[must_use]
    pub fn with_expected(mut self, expected: Arc<Expected>) -> Self {
        self.expected = expected;
        self
    }

    /// Changes the timeout and concurrency for actions started from now on.
    pub fn reconfigure(&mut self, timeout: Duration, concurrency: usize) {
        self.timeout = timeout;
        let n = concurrency.max(1);
        if n != self.concurrency {
            // New semaphores: actions already holding permits finish under the old bound.
            self.permits = Arc::new(Semaphore::new(n));
            self.remove_permits = Arc::new(Semaphore::new(n));
            self.concurrency = n;
        }
    }

    async fn call<T>(&self, op: DockerOp, f: impl Future<Output = Result<T, RuntimeError>>) -> Result<T, RuntimeError> {
        timed(&self.metrics, op, self.timeout, f).await
    }

    /// Runs one action to completion.
    pub async fn run(&self, action: Action) -> Completed {
        let kind = action.kind();
        let mut failed = Vec::new();
        let result = match &action {
            Action::Create { session, spec } => self.create(*session, spec).await,
            Action::Attach { session, container } => self.attach(*session, container).await,
            Action::Start { container, .. } => {
                let _permit = self.permits.acquire().await;
                let noted = self.expected.starting(container);
                let r = self.call(DockerOp::Start, self.runtime.start(container)).await;
                self.expected.done(noted, r.is_ok());
                r.map(|()| Outcome::Started { container: container.clone() })
            }
            Action::Stop { container, timeout, .. } => {
                let _permit = self.permits.acquire().await;
                let t = *timeout + self.timeout;
                let noted = self.expected.ending(container);
                let r = timed(&self.metrics, DockerOp::Stop, t, self.runtime.stop(container, *timeout)).await;
                self.expected.done(noted, r.is_ok());
                r.map(|()| Outcome::Stopped { container: container.clone() })
            }
            Action::Remove { container, .. } => {
                self.remove_verified(container).await.map(|()| Outcome::Removed { containers: vec![container.clone()] })
            }
            Action::BulkRemove { containers, .. } => {
                let results: Vec<(ContainerId, Result<(), RuntimeError>)> = futures::stream::iter(containers.clone())
                    .map(|id| async move {
                        let r = self.remove_verified(&id).await;
                        (id, r)
                    })
                    .buffer_unordered(containers.len().max(1))
                    .collect()
                    .await;
                let mut removed = Vec::new();
                for (id, r) in results {
                    match r {
                        Ok(()) => removed.push(id),
                        Err(e) => failed.push((id, e)),
                    }
                }
                Ok(Outcome::Removed { containers: removed })
            }
        };
        let ok = result.is_ok() && failed.is_empty();
        self.metrics.action(kind, ok);
        if let Err(e) = &result {
            warn!(action = kind.as_str(), session = ?action.session(), error = %e, "action failed");
        }
        Completed { action, result, failed }
    }

    async fn create(&self, session: SessionId, spec: &ContainerSpec) -> Result<Outcome, RuntimeError> {
        if !spec.is_marked(&self.ns) {
            return Err(RuntimeError::Rejected("refusing to create a container without berth's marker".into()));
        }
        let _permit = self.permits.acquire().await;
        let noted = self.expected.creating(&spec.name);
        let res = self.call(DockerOp::Create, self.runtime.create(spec)).await;
        self.expected.done(noted, res.is_ok());
        let id = res?;
        let labels: std::collections::HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let labels = ManagedLabels::parse(&self.ns, &labels)
            .ok()
            .flatten()
            .ok_or_else(|| RuntimeError::Rejected("spec labels do not parse".into()))?;
        debug!(session = %session, container = %id.short(), "created");
        Ok(Outcome::Created {
            session,
            container: ObservedContainer {
                id,
                labels,
                state: ContainerState::Created,
                exit_code: None,
                oom_killed: false,
                health: Health::Unknown,
                removal_requested: false,
            },
        })
    }

    async fn attach(&self, session: SessionId, container: &ContainerId) -> Result<Outcome, RuntimeError> {
        // Attach does not take a permit: it is a long-lived stream, not a state change, and it must
        // not queue behind creates (it sits between create and start on every session's path).
        let history = self.sink.wants_history(session);
        let io = self.call(DockerOp::Attach, self.runtime.attach(container, history)).await?;
        self.sink.connect(session, io);
        Ok(Outcome::Attached { session })
    }

    /// Force-removes, then waits for the `destroy` event while the observer follows events; without one (or
    /// none within [`DESTROY_WAIT`]) inspects until Docker says 404. The wait holds no removal permit: it makes
    /// no call.
    async fn remove_verified(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let destroyed = self.expected.following().then(|| self.expected.await_destroy(id));
        let permit = self.remove_permits.acquire().await;
        let noted = self.expected.ending(id);
        let res = self.call(DockerOp::Remove, self.runtime.remove(id)).await;
        self.expected.done(noted, res.is_ok());
        res?;
        let _permit = match destroyed {
            Some(rx) => {
                drop(permit);
                if let Ok(Ok(())) = tokio::time::timeout(DESTROY_WAIT, rx).await {
                    return Ok(());
                }
                self.remove_permits.acquire().await
            }
            None => permit,
        };
        let deadline = Instant::now() + self.timeout;
        let mut wait = Duration::from_millis(20);
        loop {
            match self.call(DockerOp::Inspect, self.runtime.inspect(&self.ns, id)).await? {
                None => return Ok(()),
                Some(c) if Instant::now() >= deadline => {
                    return Err(RuntimeError::Other(format!("container still present ({:?}) after removal", c.state)));
                }
                Some(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
