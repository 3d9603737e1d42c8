//! The running service: the controller, the WebSocket layer, the page, health, metrics and admin API on their
//! listeners, the policy reloader and the rate limiter's upkeep, each task under its own span.

use std::path::PathBuf;
use std::sync::Arc;

use berth_reconciler::{InstanceId, Policy};
use tokio::sync::watch;
use tracing::warn;
use warp::Filter;

use super::commands::load_policy;
use super::telemetry::{spawn, task_span};
use crate::controller::{self, ControllerConfig};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::select::{RuntimeCheckError, check_runtimes};

/// Starting the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Docker address is malformed.
    #[error("docker: {0}")]
    Docker(#[from] crate::runtime::RuntimeError),
    /// The instance id is invalid, or could not be read or stored.
    #[error("instance id: {0}")]
    Instance(String),
    /// A profile names an OCI runtime the engine has not registered.
    #[error("invalid policy:\n{0}")]
    UnknownRuntime(String),
    /// The recordings directory or the audit log could not be opened.
    #[error("{what} {path}: {source}")]
    Recordings {
        /// Which.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running berth: controller, WebSocket layer, page, health and metrics on one listener.
#[derive(Debug)]
pub struct Server {
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// The controller.
    pub handle: controller::Handle,
    /// The policy in force; send a new one to reload.
    pub policy: Arc<watch::Sender<Arc<Policy>>>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Every session's terminal (the data path), for inspection.
    pub terminals: crate::terminal::Terminals,
    /// The admin listener's address, when `server.admin_listen` is set.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// The outcome of the last policy reload.
    pub reload: watch::Receiver<crate::reload::ReloadStatus>,
    shutdown: watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `policy.server.listen` (port 0 picks one) and starts everything.
    ///
    /// # Errors
    /// When the address cannot be bound or the Docker address is malformed.
    pub async fn start(policy: Policy, instance: InstanceId, docker_host: Option<&str>) -> Result<Self, ServeError> {
        Self::start_with(policy, instance, docker_host, None).await
    }

    /// As [`Server::start`], also reloading the policy from `policy_file` when it changes or on SIGHUP.
    ///
    /// # Errors
    /// When an address cannot be bound or the Docker address is malformed.
    pub async fn start_with(
        policy: Policy,
        instance: InstanceId,
        docker_host: Option<&str>,
        policy_file: Option<PathBuf>,
    ) -> Result<Self, ServeError> {
        let runtime = DockerRuntime::connect_lazy(docker_host)?;
        Self::start_on(runtime, policy, instance, policy_file).await
    }

    /// As [`Server::start_with`], on a runtime the caller built: tests run berth on the in-memory fake, or on a
    /// [`FaultyRuntime`](crate::runtime::faulty::FaultyRuntime) wrapping Docker to inject faults.
    ///
    /// # Errors
    /// When an address cannot be bound.
    pub async fn start_on<R: Runtime>(
        runtime: R,
        policy: Policy,
        instance: InstanceId,
        policy_file: Option<PathBuf>,
    ) -> Result<Self, ServeError> {
        // The runtimes the profiles name are checked against the engine before the port is bound or any
        // container is created. An engine that does not answer yet is not a policy error: berth starts, and
        // Docker refuses the create of a profile whose runtime it lacks.
        let metrics = Arc::new(Metrics::new());
        match check_runtimes(&runtime, &policy, &metrics).await {
            Ok(()) => {}
            Err(RuntimeCheckError::Unknown(m)) => return Err(ServeError::UnknownRuntime(m)),
            Err(e @ RuntimeCheckError::Engine(_)) => warn!(error = %e, "the profiles' runtimes are not checked"),
        }
        let listen = policy.server.listen;
        let bind_err = |addr| move |source| ServeError::Bind { addr, source };
        let listener = bind(listen).map_err(bind_err(listen))?;
        let addr = listener.local_addr().map_err(bind_err(listen))?;
        metrics.set_policy_loaded(crate::clock::now().as_millis());
        let limiter = Arc::new(crate::limits::ConnectionLimiter::new(&policy.limits));
        let admin_listener = match policy.server.admin_listen {
            Some(a) => Some(bind(a).map_err(bind_err(a))?),
            None => None,
        };
        let admin_addr = match (&admin_listener, policy.server.admin_listen) {
            (Some(l), Some(a)) => Some(l.local_addr().map_err(bind_err(a))?),
            _ => None,
        };
        let (reload_tx, reload_rx) = watch::channel(crate::reload::ReloadStatus {
            policy_hash: policy.hash(),
            ..crate::reload::ReloadStatus::default()
        });
        let audit = open_recordings(&policy).await?;
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let policy_tx = Arc::new(policy_tx);
        let cfg = ControllerConfig { instance, epoch: 1, audit };
        let check = runtime_check(runtime.clone(), metrics.clone());
        let (handle, terminals, controller) = controller::spawn(runtime, cfg, policy_rx.clone(), metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let edge = Arc::new(crate::ws::Edge {
            handle: handle.clone(),
            terminals: terminals.clone(),
            policy: policy_rx.clone(),
            metrics: metrics.clone(),
            limiter: limiter.clone(),
            shutdown: shutdown_rx.clone(),
        });
        let admin = Arc::new(crate::admin::Admin {
            handle: handle.clone(),
            policy: policy_rx.clone(),
            reload: reload_rx.clone(),
            terminals: terminals.clone(),
        });
        spawn("rate_limit_upkeep", evict_rate_limits(limiter, policy_rx.clone()));
        spawn(
            "recordings_retention",
            crate::recording::keeper::run(policy_rx.clone(), terminals.clone(), metrics.clone()),
        );
        if let Some(path) = policy_file {
            let load: crate::reload::Loader = Arc::new(load_policy);
            let reloader =
                crate::reload::Reloader::new(path, load, policy_tx.clone(), Arc::new(reload_tx), metrics.clone())
                    .with_check(check);
            task_span("policy_reload").in_scope(|| crate::reload::spawn(reloader));
        }
        let routes = crate::http::routes(edge).or(crate::admin::routes(admin.clone(), crate::admin::Listener::Main));
        let http = crate::listener::serve(listener, routes, policy_rx.clone(), metrics.clone(), shutdown_rx.clone());
        let http = spawn("http", http);
        if let (Some(l), Some(bound)) = (admin_listener, admin_addr) {
            let routes = crate::admin::routes(admin, crate::admin::Listener::Dedicated(bound))
                .or(crate::page::replay_routes())
                .or(crate::http::health_routes(handle.clone(), metrics.clone()));
            spawn("admin_http", crate::listener::serve(l, routes, policy_rx, metrics.clone(), shutdown_rx));
        }
        Ok(Self {
            addr,
            handle,
            policy: policy_tx,
            metrics,
            terminals,
            admin_addr,
            reload: reload_rx,
            shutdown,
            controller,
            http,
        })
    }

    /// Tells open connections to reconnect elsewhere (close 4011), drains the controller and stops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.handle.shutdown().await;
        let _ = self.controller.await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http).await;
    }
}

/// Creates the recordings directory and repairs what a crash tore in it, then opens the audit log; both before
/// any session can start.
async fn open_recordings(policy: &Policy) -> Result<Option<crate::recording::audit::AuditLog>, ServeError> {
    if let Some(dir) = &policy.recordings.dir {
        let err = |source| ServeError::Recordings { what: "recordings directory", path: dir.clone(), source };
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
        crate::recording::keeper::repair_all(dir).await.map_err(err)?;
    }
    match &policy.audit.log {
        None => Ok(None),
        Some(path) => {
            let (log, _writer) = crate::recording::audit::AuditLog::open(path, 1024)
                .await
                .map_err(|source| ServeError::Recordings { what: "audit log", path: path.clone(), source })?;
            Ok(Some(log))
        }
    }
}

/// The reload step that confirms a new policy's runtimes with the engine (see [`Server::start_on`]).
fn runtime_check<R: Runtime>(runtime: R, metrics: Arc<Metrics>) -> crate::reload::Check {
    Arc::new(move |policy: Policy| {
        let (runtime, metrics) = (runtime.clone(), metrics.clone());
        Box::pin(async move {
            match check_runtimes(&runtime, &policy, &metrics).await {
                Ok(()) => Ok(policy),
                Err(RuntimeCheckError::Unknown(m)) => Err(m),
                Err(e @ RuntimeCheckError::Engine(_)) => {
                    warn!(error = %e, "the new policy's runtimes are not checked");
                    Ok(policy)
                }
            }
        })
    })
}

/// Binds a listening socket with `TCP_NODELAY` set, which Linux passes on to every connection it accepts (warp
/// takes a listener and gives no hook on accepted sockets). A terminal's output leaves in many small writes; with
/// Nagle's algorithm each one after the first waits for the client's delayed ACK, adding 40 ms to every echo.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As `TcpListener::bind` does: a restarted berth may bind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Keeps the per-IP rate limiter's memory bounded, and follows policy changes to its quota.
async fn evict_rate_limits(limiter: Arc<crate::limits::ConnectionLimiter>, mut policy: watch::Receiver<Arc<Policy>>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => limiter.evict(),
            changed = policy.changed() => {
                if changed.is_err() {
                    return;
                }
                let limits = policy.borrow_and_update().limits.clone();
                limiter.reconfigure(&limits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;
    use crate::runtime::fake::FakeRuntime;

    /// The `task` field of every span created.
    #[derive(Clone, Default)]
    struct Tasks(Arc<Mutex<BTreeSet<String>>>);

    impl Visit for Tasks {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "task" {
                self.0.lock().expect("lock").insert(value.to_owned());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "task" {
                self.0.lock().expect("lock").insert(format!("{value:?}").trim_matches('"').to_owned());
            }
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Tasks {
        fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
            attrs.record(&mut self.clone());
        }
    }

    // One thread, so that the server's spans reach this test's subscriber.
    #[tokio::test(flavor = "current_thread")]
    async fn every_task_the_server_spawns_runs_under_a_named_span() {
        let tasks = Tasks::default();
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(tasks.clone()));
        let dir = std::env::temp_dir().join(format!("berth-app-spans-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("policy.toml");
        std::fs::write(&file, "").expect("policy file");
        let mut policy = Policy::default();
        policy.server.listen = "127.0.0.1:0".parse().expect("address");
        policy.server.admin_listen = Some("127.0.0.1:0".parse().expect("address"));
        let instance: InstanceId = "spans".parse().expect("instance");
        let server = Server::start_on(FakeRuntime::default(), policy, instance, Some(file)).await.expect("starts");
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        let seen = tasks.0.lock().expect("lock").clone();
        for task in ["http", "admin_http", "rate_limit_upkeep", "policy_reload"] {
            assert!(seen.contains(task), "no span for the {task} task; spans: {seen:?}");
        }
    }
}
