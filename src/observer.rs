//! The observer: follows Docker's event stream for managed containers and turns each event into an
//! authoritative container state (by inspecting it), reconnecting with backoff when the engine goes away.
//!
//! Events for changes berth itself is making or just made (noted in [`Expected`] by the executor) are not
//! inspected: the executor's outcome brings that state to the store. `destroy` events also wake the executor's
//! removals waiting for them (decision record 0027).
//!
//! Pooled containers (claimed ones included) carry the pool key instead of the session marker: their events come
//! on a second stream. One that stops is inspected as the pool's list would report it; one that goes, or cannot
//! be inspected, asks for a list.
//!
//! Lists are run by the controller; this task tells it when one is needed (at connect and reconnect, and after
//! such an event).

use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::pool::ListedPooled;
use berth_reconciler::{ContainerId, LabelNamespace, ObservedContainer};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::executor::timed;
use crate::expected::Expected;
use crate::metrics::Metrics;
use crate::runtime::{EventKind, Runtime};

/// What the observer reports to the controller.
#[derive(Debug)]
pub enum ObserverMsg {
    /// The engine answers again (or for the first time): take a full list.
    Connected,
    /// The engine stopped answering.
    Disconnected,
    /// A container's current state, after an event.
    Upsert(ObservedContainer),
    /// A container no longer exists.
    Gone(ContainerId),
    /// A pooled container (claimed or not) after an event, as a list of the pool would report it.
    Pooled(ListedPooled),
    /// A pooled container went, or could not be inspected: a list settles it.
    PoolChanged(ContainerId),
}

/// Settings for the observer task.
#[derive(Debug, Clone)]
pub struct ObserverConfig {
    /// The label namespace to follow.
    pub ns: LabelNamespace,
    /// `docker.name_prefix`, under which a claimed pooled container's name names its session.
    pub prefix: String,
    /// Timeout on each call.
    pub timeout: Duration,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// The changes berth is making, shared with the executor.
    pub expected: Arc<Expected>,
}

/// Runs until `shutdown` flips to true or the controller goes away.
pub async fn run<R: Runtime>(
    runtime: R,
    cfg: ObserverConfig,
    tx: mpsc::Sender<ObserverMsg>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut was_up: Option<bool> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let up = timed(&metrics, crate::runtime::DockerOp::Ping, cfg.timeout, runtime.ping()).await.is_ok();
        if !up {
            if was_up != Some(false) {
                warn!("docker engine unreachable; retrying with backoff");
                metrics.set_docker_up(false);
                if tx.send(ObserverMsg::Disconnected).await.is_err() {
                    return;
                }
            }
            was_up = Some(false);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(cfg.max_backoff);
            continue;
        }
        // Subscribe first, then ask for a list: nothing between the two is missed.
        let mut events = runtime.events(&cfg.ns);
        info!("docker engine reachable; following events");
        metrics.set_docker_up(true);
        backoff = Duration::from_millis(100);
        cfg.expected.set_following(true);
        if tx.send(ObserverMsg::Connected).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                ev = events.next() => ev,
                _ = shutdown.changed() => return,
            };
            let ev = match next {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    warn!(error = %e, "docker event stream failed");
                    break;
                }
                None => {
                    warn!("docker event stream ended");
                    break;
                }
            };
            metrics.docker_event(&ev.kind);
            if cfg.expected.on_event(&ev) {
                metrics.docker_event_expected();
                continue;
            }
            let msg = match ev.kind {
                EventKind::Destroy if ev.pooled => ObserverMsg::PoolChanged(ev.container),
                EventKind::Die | EventKind::Oom | EventKind::Settled if ev.pooled => {
                    let op = crate::runtime::DockerOp::Inspect;
                    match timed(&metrics, op, cfg.timeout, runtime.inspect_pooled(&cfg.ns, &cfg.prefix, &ev.container))
                        .await
                    {
                        Ok(Some(c)) => ObserverMsg::Pooled(c),
                        Ok(None) => ObserverMsg::PoolChanged(ev.container),
                        Err(e) => {
                            warn!(container = %ev.container.short(), error = %e, "inspect after event failed; listing");
                            ObserverMsg::PoolChanged(ev.container)
                        }
                    }
                }
                _ if ev.pooled => continue,
                EventKind::Other => continue,
                EventKind::Destroy => ObserverMsg::Gone(ev.container),
                _ => match timed(
                    &metrics,
                    crate::runtime::DockerOp::Inspect,
                    cfg.timeout,
                    runtime.inspect(&cfg.ns, &ev.container),
                )
                .await
                {
                    Ok(Some(c)) => ObserverMsg::Upsert(c),
                    Ok(None) => ObserverMsg::Gone(ev.container),
                    Err(e) => {
                        warn!(container = %ev.container.short(), error = %e, "inspect after event failed");
                        continue;
                    }
                },
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        cfg.expected.set_following(false);
        metrics.set_docker_up(false);
        if tx.send(ObserverMsg::Disconnected).await.is_err() {
            return;
        }
        was_up = Some(false);
    }
}
