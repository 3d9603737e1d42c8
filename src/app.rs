//! Wiring: turns a parsed command line into a running service or a one-shot command. `main.rs` calls
//! [`run`] and nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use berth_reconciler::policy_file::parse_policy_with;
use berth_reconciler::{InstanceId, Policy};
use tokio::sync::watch;
use tracing::{error, info, warn};
use warp::Filter;

use crate::cli::{Cli, Command, PolicyCommand, ServeArgs, SessionsCommand};
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
}

/// EX_USAGE: invalid configuration.
const EXIT_CONFIG: u8 = 64;

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => match load_policy(&file) {
            Ok(policy) => {
                for note in policy.unsafe_notes() {
                    println!("note: {note}");
                }
                // Settings a profile's runtime cannot apply are stated, never dropped silently.
                for note in berth_reconciler::isolation::notes(&policy) {
                    println!("{note}");
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Policy(PolicyCommand::Diff { old, new }) => match (load_policy(&old), load_policy(&new)) {
            (Ok(a), Ok(b)) => {
                let changes = berth_reconciler::policy_diff::diff(&a, &b);
                if changes.is_empty() {
                    println!("no changes");
                }
                for c in changes {
                    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
                    println!("{}: {} -> {}\n    applies to: {}", c.key, show(&c.old), show(&c.new), c.reach.describe());
                }
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Sessions { admin, command } => {
            let (method, path) = match &command {
                SessionsCommand::Ls => ("GET", "/admin/sessions".to_owned()),
                SessionsCommand::Show { id } => ("GET", format!("/admin/sessions/{}", url_safe(id))),
                SessionsCommand::Rm { id } => ("DELETE", format!("/admin/sessions/{}", url_safe(id))),
            };
            admin_call(&admin, method, &path, matches!(command, SessionsCommand::Ls))
        }
        Command::Gc { admin, dry_run } => {
            let (method, path) = if dry_run { ("GET", "/admin/plan") } else { ("POST", "/admin/reconcile") };
            admin_call(&admin, method, path, false)
        }
        Command::Serve(args) => serve(args),
    }
}

/// Keeps only characters a session id can have, so nothing else reaches the request line.
fn url_safe(id: &str) -> String {
    id.chars().filter(char::is_ascii_alphanumeric).take(64).collect()
}

fn admin_call(admin: &crate::cli::AdminArgs, method: &str, path: &str, table: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::admin_client::request(&admin.admin_url, admin.token_file.as_deref(), method, path)) {
        Ok(body) => {
            if table {
                print!("{}", crate::admin_client::sessions_table(&body));
            } else {
                let pretty = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or(body);
                println!("{pretty}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads and validates a policy file.
///
/// # Errors
/// Every problem in the file, one per line, each located as `file:line:column: message`.
pub fn load_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    // The parser resolves a relative auth.jwt.key_file against the policy file's directory.
    parse_policy_with(&text, &path.display().to_string(), &|p| std::fs::read_to_string(p)).map_err(|e| e.to_string())
}

fn serve(args: ServeArgs) -> ExitCode {
    // Configuration is validated before any port is bound or Docker is contacted.
    let mut policy = match &args.policy {
        Some(p) => match load_policy(p) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("berth: invalid policy:\n{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Policy::default(),
    };
    if let Some(l) = args.listen {
        policy.server.listen = l;
    }
    let instance = match instance_id(args.instance.as_deref(), &args.state_dir) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(args.log_format);
    for note in policy.unsafe_notes() {
        warn!(note = %note, "the policy weakens session confinement");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(serve_async(args, policy, instance)) {
        Ok(Stopped::Drained) => ExitCode::SUCCESS,
        Ok(Stopped::Forced) => ExitCode::from(130),
        Err(e @ ServeError::UnknownRuntime(_)) => {
            eprintln!("berth: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            error!(error = %e, "berth stopped");
            ExitCode::FAILURE
        }
    };
    // Whatever is still running (a forced exit) gets no more than a moment.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The instance id: the flag, else the one stored in the state directory (created on first start).
fn instance_id(flag: Option<&str>, state_dir: &Path) -> Result<InstanceId, ServeError> {
    let bad = |what: String| move |e: berth_reconciler::IdError| ServeError::Instance(format!("{what}: {e}"));
    if let Some(s) = flag {
        return s.parse().map_err(bad("--instance".into()));
    }
    let file: PathBuf = state_dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&file) {
        return s.trim().parse().map_err(bad(file.display().to_string()));
    }
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| ServeError::Instance(format!("random source: {e}")))?;
    let id = format!("berth-{}", hex::encode(b));
    let io = |what: String| move |e: std::io::Error| ServeError::Instance(format!("{what}: {e}"));
    std::fs::create_dir_all(state_dir).map_err(io(format!("creating {}", state_dir.display())))?;
    std::fs::write(&file, format!("{id}\n")).map_err(io(format!("writing {}", file.display())))?;
    id.parse().map_err(bad("generated instance id".into()))
}

/// How `serve` ended.
enum Stopped {
    /// Drained after a signal.
    Drained,
    /// A second signal cut the drain short.
    Forced,
}

async fn serve_async(args: ServeArgs, policy: Policy, instance: InstanceId) -> Result<Stopped, ServeError> {
    let server = Server::start_with(policy, instance.clone(), args.docker_host.as_deref(), args.policy.clone()).await?;
    let local = server.addr;
    if let Some(admin) = server.admin_addr {
        info!(address = %admin, "admin API listening on http://{admin}/admin/");
    }
    info!(address = %local, instance = %instance, "berth listening on http://{local}/");
    println!("berth listening on http://{local}/");

    wait_for_signal().await;
    info!("signal received: draining (a second signal forces exit)");
    tokio::select! {
        () = server.stop() => {
            info!("stopped");
            Ok(Stopped::Drained)
        }
        () = wait_for_signal() => {
            warn!("second signal: exiting now");
            Ok(Stopped::Forced)
        }
    }
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
        metrics.policy_loaded.set(crate::clock::now().as_millis() as f64 / 1000.0);
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
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let policy_tx = Arc::new(policy_tx);
        let cfg = ControllerConfig { instance, epoch: 1 };
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
        });
        tokio::spawn(evict_rate_limits(limiter, policy_rx.clone()));
        if let Some(path) = policy_file {
            let load: crate::reload::Loader = Arc::new(load_policy);
            let reloader =
                crate::reload::Reloader::new(path, load, policy_tx.clone(), Arc::new(reload_tx), metrics.clone())
                    .with_check(check);
            crate::reload::spawn(reloader);
        }
        let routes = crate::http::routes(edge).or(crate::admin::routes(admin.clone(), crate::admin::Listener::Main));
        let http = crate::listener::serve(listener, routes, policy_rx.clone(), metrics.clone(), shutdown_rx.clone());
        let http = tokio::spawn(http);
        if let (Some(l), Some(bound)) = (admin_listener, admin_addr) {
            let routes = crate::admin::routes(admin, crate::admin::Listener::Dedicated(bound))
                .or(crate::http::health_routes(handle.clone(), metrics.clone()));
            tokio::spawn(crate::listener::serve(l, routes, policy_rx, metrics.clone(), shutdown_rx));
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
