//! Reading the engine's answers: states, exit codes, health, labels and errors, Podman's quirks included.

use std::collections::HashMap;
use std::time::Duration;

use berth_reconciler::observed::{ContainerState, Health};
use berth_reconciler::{ContainerId, LabelNamespace, ManagedLabels};
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum, HealthStatusEnum};
use tracing::warn;

use crate::runtime::{EventKind, RuntimeError};

/// Whether a reply failed to parse only because a container was in Podman's `stopped` state: its process has
/// exited and Podman has not yet cleaned up (a few milliseconds; longer under load). The Docker API has no such
/// state and the API client cannot read it, so a list or inspect that meets it fails as a whole.
pub(super) fn is_podman_stopped(e: &BollardError) -> bool {
    matches!(e, BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. })
        && e.to_string().contains("unknown variant `stopped`")
}

/// An inspect's state as berth reads it: the state, the exit code once exited, whether the OOM killer hit it,
/// and its health.
pub(super) fn inspected_state(st: bollard::models::ContainerState) -> (ContainerState, Option<i64>, bool, Health) {
    let reinitialised = st.status == Some(ContainerStateStatusEnum::CREATED) && has_run(st.started_at.as_deref());
    let state = match st.status {
        // Only Podman does this: an attach that raced the shell's exit re-initialised the container. Its shell
        // has ended; starting it again would give the session a fresh one.
        Some(ContainerStateStatusEnum::CREATED) if reinitialised => ContainerState::Exited,
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
        _ => ContainerState::Dead,
    };
    let health = match st.health.and_then(|h| h.status) {
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
        _ => Health::Unknown,
    };
    let exited = matches!(state, ContainerState::Exited | ContainerState::Dead);
    // After a re-initialisation Podman reports exit code 0, whatever the shell's was (documented in 0018).
    let exit_code = if exited { st.exit_code } else { None };
    (state, exit_code, st.oom_killed.unwrap_or(false), health)
}

/// Runs a list or inspect again while it fails on Podman's transitional `stopped` state (see
/// [`is_podman_stopped`]): every 50 ms, at most 40 times; the caller's timeout bounds it too. Without this, a
/// list fails whenever any of berth's containers is between its exit and Podman's cleanup, which under a burst
/// of exits is most of the time, and berth's view goes stale.
pub(super) async fn past_stopped<T, F, Fut>(call: F) -> Result<T, BollardError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, BollardError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if is_podman_stopped(&e) && tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

pub(super) fn map_err(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError { status_code: 404, message } => RuntimeError::NotFound(message),
        BollardError::DockerResponseServerError { status_code: 409, message } => RuntimeError::Conflict(message),
        BollardError::DockerResponseServerError { status_code: 400, message } => RuntimeError::Rejected(message),
        BollardError::DockerResponseServerError { status_code, message } => {
            RuntimeError::Other(format!("{status_code}: {message}"))
        }
        BollardError::IOError { err } => RuntimeError::Unreachable(err.to_string()),
        BollardError::HyperResponseError { err } => RuntimeError::Unreachable(err.to_string()),
        BollardError::SocketNotFoundError(p) => RuntimeError::Unreachable(format!("socket not found: {p}")),
        other => RuntimeError::Other(other.to_string()),
    }
}

/// An event's action, as Docker or Podman names it.
pub(super) fn event_kind(action: &str) -> EventKind {
    match action {
        "create" => EventKind::Create,
        "start" => EventKind::Start,
        "die" => EventKind::Die,
        "oom" => EventKind::Oom,
        // Podman says `remove` where Docker says `destroy`.
        "destroy" | "remove" => EventKind::Destroy,
        "cleanup" | "init" => EventKind::Settled,
        a if a.starts_with("health_status") => EventKind::Health,
        _ => EventKind::Other,
    }
}

pub(super) fn label_filter(ns: &LabelNamespace) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{}=true", ns.marker())])])
}

/// Whether a container's `State.StartedAt` says it has ever run. Docker and Podman give the zero time
/// (`0001-01-01T00:00:00Z`) for a container that never started; a `created` container that has a start time was
/// re-initialised by Podman's compat attach after its process ended (see [`EngineFlavour::attach_needs_live_container`]).
pub(super) fn has_run(started_at: Option<&str>) -> bool {
    started_at.is_some_and(|t| !t.is_empty() && !t.starts_with("0001-01-01"))
}

/// `Exited (137) 3 seconds ago` → 137.
pub(super) fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// A container's state as `docker ps` (the list call) gives it.
pub(super) fn list_state(state: Option<ContainerSummaryStateEnum>) -> ContainerState {
    ContainerState::from_docker(&state.map(|s| s.to_string()).unwrap_or_default())
}

pub(super) fn health_from_status(status: &str) -> Health {
    if status.contains("(unhealthy)") {
        Health::Unhealthy
    } else if status.contains("(healthy)") {
        Health::Healthy
    } else if status.contains("(health: starting)") {
        Health::Starting
    } else {
        Health::Unknown
    }
}

pub(super) fn parse_managed(
    ns: &LabelNamespace,
    id: Option<&str>,
    labels: Option<&HashMap<String, String>>,
) -> Option<(ContainerId, ManagedLabels)> {
    let id: ContainerId = id?.parse().ok()?;
    match ManagedLabels::parse(ns, labels?) {
        Ok(Some(l)) => Some((id, l)),
        Ok(None) => None,
        Err(e) => {
            warn!(container = %id.short(), error = %e, "container carries the marker but unreadable labels; ignoring it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podmans_remove_event_is_a_destroy() {
        assert_eq!(event_kind("remove"), EventKind::Destroy);
        assert_eq!(event_kind("destroy"), EventKind::Destroy);
        assert_eq!(event_kind("die"), EventKind::Die);
        assert_eq!(event_kind("cleanup"), EventKind::Settled);
        assert!(!has_run(None));
        assert!(!has_run(Some("0001-01-01T00:00:00Z")));
        assert!(has_run(Some("2026-12-06T23:24:18.759248476Z")));
        assert_eq!(event_kind("init"), EventKind::Settled);
        assert_eq!(event_kind("attach"), EventKind::Other);
        assert_eq!(event_kind("health_status: healthy"), EventKind::Health);
    }

    #[test]
    fn exit_codes_are_read_from_list_status() {
        assert_eq!(exit_code_from_status("Exited (137) 3 seconds ago"), Some(137));
        assert_eq!(exit_code_from_status("Exited (0) About a minute ago"), Some(0));
        assert_eq!(exit_code_from_status("Up 3 seconds"), None);
    }

    #[test]
    fn health_is_read_from_list_status() {
        assert_eq!(health_from_status("Up 3 seconds (unhealthy)"), Health::Unhealthy);
        assert_eq!(health_from_status("Up 3 seconds (healthy)"), Health::Healthy);
        assert_eq!(health_from_status("Up 1 second (health: starting)"), Health::Starting);
        assert_eq!(health_from_status("Up 3 seconds"), Health::Unknown);
    }
}
