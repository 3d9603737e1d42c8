//! The Docker runtime, through bollard. This is the only module in berth that imports bollard.
//!
//! Containers are found by label filters only; no Docker name filter ever carries client text.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_reconciler::peers::{MarkerSpec, PeerContainer};
use berth_reconciler::pool::ListedPooled;
use berth_reconciler::{ClaimedName, PoolLabels};
use berth_reconciler::{ContainerId, ContainerSpec, LabelNamespace, ObservedContainer, PeerLabels};
use bollard::Docker;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, ResizeContainerTTYOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, warn};

mod body;
mod read;

pub use body::{create_body, marker_body};
use read::{
    event_kind, exit_code_from_status, has_run, health_from_status, inspected_state, is_podman_stopped, label_filter,
    list_state, map_err, parse_managed, past_stopped,
};

use super::flavour::EngineFlavour;
use super::{AttachIo, Runtime, RuntimeError, RuntimeEvent, Sentinel};

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
