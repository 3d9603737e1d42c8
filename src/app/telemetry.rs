//! What berth tells about itself: the log setup (with the policy's notes on weakened confinement and warm pools) and a span
//! for every task the service spawns, so that what a task logs names the task.

use std::future::Future;

use berth_reconciler::Policy;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::cli::LogFormat;

/// Sets up logging, then logs what in `policy` weakens session confinement.
pub(super) fn init(format: LogFormat, policy: &Policy) {
    crate::logging::init(format);
    for note in policy.unsafe_notes() {
        warn!(note = %note, "the policy weakens session confinement");
    }
    for note in berth_reconciler::pool::notes(policy) {
        info!(note = %note, "warm pool");
    }
}

/// The span of one of berth's long-lived tasks (`task` names it).
pub(super) fn task_span(task: &'static str) -> Span {
    info_span!("task", task)
}

/// Spawns `fut` under its task span.
pub(super) fn spawn<F>(task: &'static str, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(task_span(task)))
}
