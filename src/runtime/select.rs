//! Checks the runtimes a policy's profiles name against the ones the engine registered: at start (before the
//! port is bound or any container is created) and at each reload.

use std::time::Duration;

use berth_reconciler::Policy;
use berth_reconciler::isolation::{describe_unknown, names_runtimes, unknown_runtimes};

use super::{DockerOp, Runtime, RuntimeError};
use crate::metrics::Metrics;

/// How long the engine gets to list its runtimes.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The policy's runtimes could not be confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeCheckError {
    /// A profile names a runtime the engine has not registered; one line per profile, then the engine's list.
    #[error("{0}")]
    Unknown(String),
    /// The engine could not be asked.
    #[error("cannot list the engine's runtimes: {0}")]
    Engine(#[source] RuntimeError),
}

/// Confirms every runtime `policy` names is registered with the engine. A policy that names none needs no
/// engine call and always passes.
///
/// # Errors
/// [`RuntimeCheckError::Unknown`] for names the engine lacks; [`RuntimeCheckError::Engine`] when it does not
/// answer (within 10 s).
pub async fn check_runtimes<R: Runtime>(
    runtime: &R,
    policy: &Policy,
    metrics: &Metrics,
) -> Result<(), RuntimeCheckError> {
    if !names_runtimes(policy) {
        return Ok(());
    }
    let registered = crate::executor::timed(metrics, DockerOp::Info, CHECK_TIMEOUT, runtime.runtimes())
        .await
        .map_err(RuntimeCheckError::Engine)?;
    let unknown = unknown_runtimes(policy, &registered);
    if unknown.is_empty() { Ok(()) } else { Err(RuntimeCheckError::Unknown(describe_unknown(&unknown, &registered))) }
}
