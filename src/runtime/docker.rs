//! The Docker runtime, through bollard. This is the only module in berth that imports bollard.
//!
//! Containers are found by label filters only; no Docker name filter ever carries client text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_reconciler::isolation::drops_pids_limit;
use berth_reconciler::observed::{ContainerState, Health};
use berth_reconciler::peers::{MarkerSpec, PeerContainer};
use berth_reconciler::policy::Ulimit;
use berth_reconciler::pool::{LAUNCHER_PATH, ListedPooled};
use berth_reconciler::{ClaimedName, PoolLabels};
use berth_reconciler::{ContainerId, ContainerSpec, LabelNamespace, ManagedLabels, ObservedContainer, PeerLabels};
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HealthConfig, HealthStatusEnum,
    HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount, MountType, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, ResizeContainerTTYOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, warn};

use super::flavour::EngineFlavour;
use super::{AttachIo, EventKind, Runtime, RuntimeError, RuntimeEvent, Sentinel};

/// The oldest engine API berth speaks (Docker 20.10); newer engines are negotiated up.
const MIN_API: bollard::ClientVersion = bollard::ClientVersion { major_version: 1, minor_version: 41 };

/// A Docker engine reached through bollard.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Docker or Podman, read from the first version call that succeeds (at the first `ping`), then kept.
    flavour: Arc<OnceLock<EngineFlavour>>,
}

impl DockerRuntime {
    /// Connects to the engine at `host` (a `unix://` path or `tcp://` address), or the local default
    /// (`DOCKER_HOST`, else `/var/run/docker.sock`), negotiating the API version.
    ///
    /// # Errors
    /// When the address is malformed or the engine does not answer the version call.
    pub async fn connect(host: Option<&str>) -> Result<Self, RuntimeError> {
        let docker = match host {
            Some(h) if h.starts_with("unix://") || h.starts_with('/') => {
                Docker::connect_with_socket(h.trim_start_matches("unix://"), 30, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => Docker::connect_with_http(h, 30, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(map_err)?;
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        Ok(Self { docker, flavour: Arc::default() })
    }

    /// Connects without talking to the engine yet; the version is negotiated on first success of `ping`. Without
    /// `host`, `DOCKER_HOST` is honoured as `connect` does (so the tests run against another engine, Podman say).
    ///
    /// # Errors
    /// When the address is malformed.
    pub fn connect_lazy(host: Option<&str>) -> Result<Self, RuntimeError> {
        let from_env = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        let docker = match host.or(from_env.as_deref()) {
            Some(h) if h.starts_with("unix://") || h.starts_with('/') => {
                Docker::connect_with_socket(h.trim_start_matches("unix://"), 30, &MIN_API)
            }
            Some(h) => Docker::connect_with_http(h, 30, &MIN_API),
            None => Docker::connect_with_socket("/var/run/docker.sock", 30, &MIN_API),
        }
        .map_err(map_err)?;
        Ok(Self { docker, flavour: Arc::default() })
    }
}

impl DockerRuntime {
    /// The engine's flavour, asked once (the version call) and then remembered.
    ///
    /// # Errors
    /// When the engine does not answer the version call.
    pub async fn flavour(&self) -> Result<EngineFlavour, RuntimeError> {
        if let Some(f) = self.flavour.get() {
            return Ok(*f);
        }
        let version = self.docker.version().await.map_err(map_err)?;
        let names = version.components.iter().flatten().map(|c| c.name.as_str());
        let flavour = EngineFlavour::from_components(names);
        if self.flavour.set(flavour).is_ok() && flavour == EngineFlavour::Podman {
            info!(
                engine = flavour.name(),
                version = version.version.as_deref().unwrap_or("?"),
                "the engine is Podman's Docker-compatible service"
            );
        }
        Ok(flavour)
    }

    /// On Podman (or before the flavour is known), refuses to attach to a container that has already run (see
    /// [`EngineFlavour::attach_needs_live_container`]): the session then ends on its observed exit.
    async fn check_attachable(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        // Until the flavour is known (its version call is slow on Podman), check anyway: an inspect is cheap, and
        // waiting for the version call would hold every attach of an adopting replica back by seconds.
        if self.flavour.get().is_some_and(|f| !f.attach_needs_live_container()) {
            return Ok(());
        }
        let info = match self.docker.inspect_container(id.as_str(), None).await {
            Ok(info) => info,
            Err(e) if is_podman_stopped(&e) => {
                return Err(RuntimeError::Conflict(
                    "container has stopped (its shell ended); not attaching".to_owned(),
                ));
            }
            Err(e) => return Err(map_err(e)),
        };
        let st = info.state.unwrap_or_default();
        match st.status {
            Some(ContainerStateStatusEnum::CREATED) if has_run(st.started_at.as_deref()) => Err(
                RuntimeError::Conflict("container was re-initialised after its shell ended; not attaching".to_owned()),
            ),
            Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::RUNNING) => Ok(()),
            other => Err(RuntimeError::Conflict(format!(
                "container is {}, not created or running; not attaching (podman would re-initialise it)",
                other.map_or_else(|| "in no state".to_owned(), |s| s.to_string())
            ))),
        }
    }
}

/// Whether a reply failed to parse only because a container was in Podman's `stopped` state: its process has
/// exited and Podman has not yet cleaned up (a few milliseconds; longer under load). The Docker API has no such
/// state and the API client cannot read it, so a list or inspect that meets it fails as a whole.
fn is_podman_stopped(e: &BollardError) -> bool {
    matches!(e, BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. })
        && e.to_string().contains("unknown variant `stopped`")
}

/// An inspect's state as berth reads it: the state, the exit code once exited, whether the OOM killer hit it,
/// and its health.
fn inspected_state(st: bollard::models::ContainerState) -> (ContainerState, Option<i64>, bool, Health) {
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
async fn past_stopped<T, F, Fut>(call: F) -> Result<T, BollardError>
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

fn map_err(e: BollardError) -> RuntimeError {
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
fn event_kind(action: &str) -> EventKind {
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

fn label_filter(ns: &LabelNamespace) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{}=true", ns.marker())])])
}

/// Whether a container's `State.StartedAt` says it has ever run. Docker and Podman give the zero time
/// (`0001-01-01T00:00:00Z`) for a container that never started; a `created` container that has a start time was
/// re-initialised by Podman's compat attach after its process ended (see [`EngineFlavour::attach_needs_live_container`]).
fn has_run(started_at: Option<&str>) -> bool {
    started_at.is_some_and(|t| !t.is_empty() && !t.starts_with("0001-01-01"))
}

/// `Exited (137) 3 seconds ago` → 137.
fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// A container's state as `docker ps` (the list call) gives it.
fn list_state(state: Option<ContainerSummaryStateEnum>) -> ContainerState {
    ContainerState::from_docker(&state.map(|s| s.to_string()).unwrap_or_default())
}

fn health_from_status(status: &str) -> Health {
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

fn parse_managed(
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

impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker.ping().await.map_err(map_err)?;
        // Podman answers the version call slowly (it asks conmon and the OCI runtime for theirs: 2 s on a loaded
        // machine), so the flavour is read beside the ping, not before it returns.
        if self.flavour.get().is_none() {
            let rt = self.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = rt.flavour().await {
                        warn!(error = %e, "cannot tell the engine's flavour yet");
                    }
                }
                .instrument(info_span!("engine_flavour")),
            );
        }
        Ok(())
    }

    async fn runtimes(&self) -> Result<Vec<String>, RuntimeError> {
        let info = self.docker.info().await.map_err(map_err)?;
        Ok(info.runtimes.unwrap_or_default().into_keys().collect())
    }

    async fn list(&self, ns: &LabelNamespace) -> Result<Vec<ObservedContainer>, RuntimeError> {
        let filters = label_filter(ns);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = past_stopped(|| self.docker.list_containers(Some(opts.clone()))).await.map_err(map_err)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let (id, labels) = parse_managed(ns, c.id.as_deref(), c.labels.as_ref())?;
                let state = list_state(c.state);
                let status = c.status.unwrap_or_default();
                Some(ObservedContainer {
                    id,
                    labels,
                    state,
                    exit_code: exit_code_from_status(&status),
                    oom_killed: false,
                    health: health_from_status(&status),
                    removal_requested: false,
                })
            })
            .collect())
    }

    async fn inspect(&self, ns: &LabelNamespace, id: &ContainerId) -> Result<Option<ObservedContainer>, RuntimeError> {
        let info = match past_stopped(|| self.docker.inspect_container(id.as_str(), None)).await.map_err(map_err) {
            Ok(info) => info,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
        let Some((id, labels)) = parse_managed(ns, info.id.as_deref(), labels) else {
            return Ok(None);
        };
        let (state, exit_code, oom_killed, health) = inspected_state(info.state.unwrap_or_default());
        Ok(Some(ObservedContainer { id, labels, state, exit_code, oom_killed, health, removal_requested: false }))
    }

    async fn inspect_pooled(
        &self,
        ns: &LabelNamespace,
        prefix: &str,
        id: &ContainerId,
    ) -> Result<Option<ListedPooled>, RuntimeError> {
        let info = match past_stopped(|| self.docker.inspect_container(id.as_str(), None)).await.map_err(map_err) {
            Ok(info) => info,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(labels) = info.config.as_ref().and_then(|c| c.labels.as_ref()) else { return Ok(None) };
        let labels = match PoolLabels::parse(ns, labels) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(None),
            Err(e) => {
                warn!(container = %id.short(), error = %e, "pooled container with unreadable labels; ignoring it");
                return Ok(None);
            }
        };
        let claimed = info.name.as_deref().and_then(|n| ClaimedName::parse(prefix, n));
        let (state, exit_code, ..) = inspected_state(info.state.unwrap_or_default());
        Ok(Some(ListedPooled { id: id.clone(), labels, state, exit_code, claimed }))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<ContainerId, RuntimeError> {
        let body = create_body(spec);
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let resp = self.docker.create_container(Some(opts), body).await.map_err(map_err)?;
        resp.id.parse().map_err(|_| RuntimeError::Other("docker returned a malformed container id".into()))
    }

    async fn start(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        self.docker.start_container(id.as_str(), None).await.map_err(map_err)
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<(), RuntimeError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(id.as_str(), Some(opts)).await.map_err(map_err) {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, id: &ContainerId) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(id.as_str(), Some(opts)).await.map_err(map_err) {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            // "removal of container ... is already in progress"
            Err(RuntimeError::Conflict(m)) if m.contains("already in progress") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn attach(&self, id: &ContainerId, history: bool) -> Result<AttachIo, RuntimeError> {
        self.check_attachable(id).await?;
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(history)
            .build();
        let res = self.docker.attach_container(id.as_str(), Some(opts)).await.map_err(map_err)?;
        let output = res.output.map_ok(|chunk| chunk.into_bytes()).map_err(map_err).boxed();
        let docker = self.docker.clone();
        let cid = id.clone();
        let flavour = self.flavour.clone();
        // Counts resizes, so that a repeat goes out only after the last of a burst.
        let latest = Arc::new(AtomicU64::new(0));
        let resize = Box::new(move |cols: u16, rows: u16| {
            let docker = docker.clone();
            let cid = cid.clone();
            let latest = latest.clone();
            // Read at each resize, not at the attach: the flavour is learned beside the first ping, and the first
            // sessions attach before Podman's slow version call returns. Until it is known, repeat (harmless).
            let resend_after = flavour.get().map_or(Some(EngineFlavour::RESIZE_RESEND), |f| f.resize_resend_after());
            Box::pin(async move {
                let this = latest.fetch_add(1, Ordering::Relaxed) + 1;
                let opts = ResizeContainerTTYOptionsBuilder::default().w(i32::from(cols)).h(i32::from(rows)).build();
                docker.resize_container_tty(cid.as_str(), opts.clone()).await.map_err(map_err)?;
                if let Some(after) = resend_after {
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        if latest.load(Ordering::Relaxed) == this {
                            let _ = docker.resize_container_tty(cid.as_str(), opts).await;
                        }
                    });
                }
                Ok(())
            }) as futures::future::BoxFuture<'static, Result<(), RuntimeError>>
        });
        Ok(AttachIo { output, input: res.input, resize })
    }

    /// Two streams in one: the session containers' (the marker) and the pooled ones' (the pool key). The
    /// engine's label filters all have to match, so one stream cannot follow both.
    fn events(&self, ns: &LabelNamespace) -> futures::stream::BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let follow = |label: String, pooled: bool| {
            let filters =
                HashMap::from([("type".to_owned(), vec!["container".to_owned()]), ("label".to_owned(), vec![label])]);
            let opts = EventsOptionsBuilder::default().filters(&filters).build();
            self.docker.events(Some(opts)).filter_map(move |ev| async move {
                match ev {
                    Err(e) => Some(Err(map_err(e))),
                    Ok(msg) => {
                        let actor = msg.actor.as_ref()?;
                        let id: ContainerId = actor.id.as_deref()?.parse().ok()?;
                        let name = actor.attributes.as_ref().and_then(|a| a.get("name")).cloned();
                        let action = msg.action.unwrap_or_default();
                        let kind = event_kind(&action);
                        Some(Ok(RuntimeEvent { container: id, kind, name, pooled }))
                    }
                }
            })
        };
        futures::stream::select(follow(format!("{}=true", ns.marker()), false), follow(ns.pool_key(), true)).boxed()
    }

    async fn list_peers(&self, ns: &LabelNamespace) -> Result<Vec<PeerContainer>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![ns.peer_key()])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = past_stopped(|| self.docker.list_containers(Some(opts.clone()))).await.map_err(map_err)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id: ContainerId = c.id.as_deref()?.parse().ok()?;
                let labels = match PeerLabels::parse(ns, c.labels.as_ref()?) {
                    Ok(l) => l?,
                    Err(e) => {
                        warn!(container = %id.short(), error = %e, "peer container with unreadable labels; ignoring it");
                        return None;
                    }
                };
                let state = list_state(c.state);
                Some(PeerContainer { id, labels, state })
            })
            .collect())
    }

    async fn list_pool(&self, ns: &LabelNamespace, prefix: &str) -> Result<Vec<ListedPooled>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![ns.pool_key()])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        // Podman's transitional `stopped` (decision 0018): a pooled container whose launcher exited shows it too.
        let list = past_stopped(|| self.docker.list_containers(Some(opts.clone()))).await.map_err(map_err)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id: ContainerId = c.id.as_deref()?.parse().ok()?;
                let labels = match PoolLabels::parse(ns, c.labels.as_ref()?) {
                    Ok(l) => l?,
                    Err(e) => {
                        warn!(container = %id.short(), error = %e, "pooled container with unreadable labels; ignoring it");
                        return None;
                    }
                };
                let claimed = c.names.iter().flatten().find_map(|n| ClaimedName::parse(prefix, n));
                let exit_code = exit_code_from_status(c.status.as_deref().unwrap_or_default());
                Some(ListedPooled { id, labels, state: list_state(c.state), exit_code, claimed })
            })
            .collect())
    }

    async fn rename(&self, id: &ContainerId, name: &str) -> Result<(), RuntimeError> {
        let opts = RenameContainerOptionsBuilder::default().name(name).build();
        self.docker.rename_container(id.as_str(), opts).await.map_err(map_err)
    }

    async fn log_head(&self, id: &ContainerId, max: usize) -> Result<Vec<u8>, RuntimeError> {
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(false).build();
        let mut logs = self.docker.logs(id.as_str(), Some(opts));
        let mut head = Vec::new();
        while head.len() < max {
            match logs.next().await {
                Some(chunk) => head.extend_from_slice(&chunk.map_err(map_err)?.into_bytes()),
                None => break,
            }
        }
        Ok(head)
    }

    async fn create_marker(&self, spec: &MarkerSpec) -> Result<ContainerId, RuntimeError> {
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let resp = self.docker.create_container(Some(opts), marker_body(spec)).await.map_err(map_err)?;
        resp.id.parse().map_err(|_| RuntimeError::Other("docker returned a malformed container id".into()))
    }

    async fn run_sentinel(&self, spec: &MarkerSpec) -> Result<Sentinel, RuntimeError> {
        let id = self.create_marker(spec).await?;
        let started = async {
            let opts = AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stream(true).build();
            let attached = self.docker.attach_container(id.as_str(), Some(opts)).await.map_err(map_err)?;
            self.docker.start_container(id.as_str(), None).await.map_err(map_err)?;
            Ok::<_, RuntimeError>(attached)
        };
        match started.await {
            Ok(attached) => {
                let bollard::container::AttachContainerResults { mut output, input } = attached;
                let ended = Box::pin(async move {
                    // `cat` writes nothing back; the stream ends when the sentinel stops. The input half is held
                    // here: when this future is dropped, or the process dies, Docker closes the sentinel's stdin.
                    let _stdin = input;
                    while let Some(Ok(_)) = output.next().await {}
                });
                Ok(Sentinel { id, ended })
            }
            Err(e) => {
                let _ = self.remove(&id).await;
                Err(e)
            }
        }
    }
}

/// A sentinel's or claim's create body: the smallest, most confined container Docker runs, logging nothing.
pub fn marker_body(spec: &MarkerSpec) -> ContainerCreateBody {
    let host_config = HostConfig {
        memory: Some(16 << 20),
        memory_swap: Some(16 << 20),
        nano_cpus: Some(100_000_000),
        pids_limit: Some(4),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        network_mode: Some("none".to_owned()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        ulimits: Some(vec![
            ulimit("nofile", Ulimit::fixed(64)),
            ulimit("nproc", Ulimit::fixed(8192)),
            ulimit("core", Ulimit::fixed(0)),
        ]),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig { typ: Some("none".to_owned()), config: None }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.command.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: Some("65534:65534".to_owned()),
        tty: Some(false),
        open_stdin: Some(spec.stdin),
        stdin_once: Some(spec.stdin),
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(spec.stdin),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn ulimit(name: &str, limit: Ulimit) -> ResourcesUlimits {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    ResourcesUlimits { name: Some(name.to_owned()), soft: Some(n(limit.soft)), hard: Some(n(limit.hard)) }
}

fn secs_to_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Translates berth's container spec into Docker's create body: TTY and open stdin, hardening from the profile
/// (per-process limits included), a private cgroup namespace, restart policy `no`, bounded logs.
pub fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let sec = &spec.security;
    let mut security_opt = Vec::new();
    if sec.no_new_privileges {
        security_opt.push("no-new-privileges:true".to_owned());
    }
    if let Some(p) = &sec.seccomp {
        security_opt.push(format!("seccomp={p}"));
    }
    if let Some(p) = &sec.apparmor {
        security_opt.push(format!("apparmor={p}"));
    }
    let tmpfs: HashMap<String, String> = sec.tmpfs.iter().map(|t| (t.path.clone(), t.options.clone())).collect();
    let host_config = HostConfig {
        memory: Some(spec.resources.memory_bytes),
        memory_swap: Some(spec.resources.memory_bytes),
        nano_cpus: Some(spec.resources.nano_cpus),
        // gVisor counts its own threads against this limit and dies on reaching it (berth_reconciler::isolation).
        pids_limit: (!drops_pids_limit(spec.runtime.as_deref())).then_some(spec.resources.pids),
        ulimits: Some(vec![
            ulimit("nofile", spec.resources.nofile),
            ulimit("nproc", spec.resources.nproc),
            ulimit("core", spec.resources.core),
        ]),
        // Docker's default follows the daemon (host on cgroup v1): the session would see the host's cgroup tree.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        runtime: spec.runtime.clone(),
        readonly_rootfs: Some(sec.read_only_root),
        cap_drop: sec.cap_drop_all.then(|| vec!["ALL".to_owned()]),
        security_opt: Some(security_opt),
        tmpfs: Some(tmpfs),
        init: Some(sec.init),
        network_mode: Some(spec.network.clone()),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), spec.logs.max_size.clone()),
                ("max-file".to_owned(), spec.logs.max_files.to_string()),
            ])),
        }),
        ..Default::default()
    };
    let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
        test: Some(std::iter::once("CMD".to_owned()).chain(h.command.iter().cloned()).collect()),
        interval: Some(secs_to_nanos(h.interval)),
        timeout: Some(secs_to_nanos(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(secs_to_nanos(h.start_period)),
        start_interval: None,
    });
    // A warm-pool container runs berth's launcher, mounted read-only like Docker's own --init, ahead of the
    // profile's command (decision 0025).
    let (entrypoint, mounts) = match &spec.launcher {
        Some(path) => (
            Some(vec![LAUNCHER_PATH.to_owned()]),
            Some(vec![Mount {
                target: Some(LAUNCHER_PATH.to_owned()),
                source: Some(path.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }]),
        ),
        None => (None, None),
    };
    let host_config = HostConfig { mounts, ..host_config };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd: spec.command.clone(),
        env: Some(spec.env.iter().map(|e| format!("{}={}", e.name, e.value)).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: Some(spec.user.clone()),
        working_dir: spec.working_dir.clone(),
        tty: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(false),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        healthcheck,
        host_config: Some(host_config),
        ..Default::default()
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
