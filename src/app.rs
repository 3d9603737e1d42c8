//! Wiring: turns a parsed command line into a running service or a one-shot command. `main.rs` calls
//! [`run`] and nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use berth_reconciler::policy_file::parse_policy_with;
use berth_reconciler::{InstanceId, Policy};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::{Cli, Command, LogFormat, PolicyCommand, ServeArgs};
use crate::controller::{self, ControllerConfig};
use crate::metrics::Metrics;
use crate::runtime::docker::DockerRuntime;

/// EX_USAGE: invalid configuration.
const EXIT_CONFIG: u8 = 64;

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => match load_policy(&file) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => serve(args),
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

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
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
            eprintln!("berth: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve_async(args, policy, instance)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "berth stopped");
            ExitCode::FAILURE
        }
    }
}

/// The instance id: the flag, else the one stored in the state directory (created on first start).
fn instance_id(flag: Option<&str>, state_dir: &Path) -> anyhow::Result<InstanceId> {
    if let Some(s) = flag {
        return s.parse().context("--instance");
    }
    let file: PathBuf = state_dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&file) {
        return s.trim().parse().with_context(|| format!("{}", file.display()));
    }
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    let id = format!("berth-{}", hex::encode(b));
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::write(&file, format!("{id}\n")).with_context(|| format!("writing {}", file.display()))?;
    id.parse().context("generated instance id")
}

async fn serve_async(args: ServeArgs, policy: Policy, instance: InstanceId) -> anyhow::Result<()> {
    let server = Server::start(policy, instance.clone(), args.docker_host.as_deref()).await?;
    if let Some(path) = args.policy.clone() {
        tokio::spawn(reload_on_sighup(path, server.policy.clone(), server.metrics.clone()));
    }
    let local = server.addr;
    info!(address = %local, instance = %instance, "berth listening on http://{local}/");
    println!("berth listening on http://{local}/");

    wait_for_signal().await;
    info!("signal received: draining (a second signal forces exit)");
    tokio::spawn(async {
        wait_for_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
    server.stop().await;
    info!("stopped");
    Ok(())
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
    shutdown: watch::Sender<bool>,
    controller: tokio::task::JoinHandle<()>,
    http: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `policy.server.listen` (port 0 picks one) and starts everything.
    ///
    /// # Errors
    /// When the address cannot be bound or the Docker address is malformed.
    pub async fn start(policy: Policy, instance: InstanceId, docker_host: Option<&str>) -> anyhow::Result<Self> {
        let listen = policy.server.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::new());
        metrics.policy_loaded.set(berth_reconciler::Timestamp::now().as_millis() as f64 / 1000.0);
        let runtime = DockerRuntime::connect_lazy(docker_host)?;
        let limiter = Arc::new(crate::limits::ConnectionLimiter::new(&policy.limits));
        let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
        let cfg = ControllerConfig { instance, epoch: 1 };
        let (handle, terminals, controller) = controller::spawn(runtime, cfg, policy_rx.clone(), metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let edge = Arc::new(crate::ws::Edge {
            handle: handle.clone(),
            terminals,
            policy: policy_rx.clone(),
            metrics: metrics.clone(),
            limiter: limiter.clone(),
            shutdown: shutdown_rx.clone(),
        });
        tokio::spawn(evict_rate_limits(limiter, policy_rx));
        let mut stop_rx = shutdown_rx;
        let http = warp::serve(crate::http::routes(edge)).incoming(listener).graceful(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let http = tokio::spawn(http.run());
        Ok(Self { addr, handle, policy: Arc::new(policy_tx), metrics, shutdown, controller, http })
    }

    /// Tells open connections to reconnect elsewhere (close 4011), drains the controller and stops.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.handle.shutdown().await;
        let _ = self.controller.await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.http).await;
    }
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

async fn reload_on_sighup(path: PathBuf, tx: Arc<watch::Sender<Arc<Policy>>>, metrics: Arc<Metrics>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load_policy(&path) {
            Ok(p) => {
                info!(policy = %p.hash(), "policy reloaded");
                metrics.reloads.with_label_values(&["ok"]).inc();
                metrics.policy_loaded.set(berth_reconciler::Timestamp::now().as_millis() as f64 / 1000.0);
                let _ = tx.send(Arc::new(p));
            }
            Err(e) => {
                warn!(errors = %e, "policy reload refused; the old policy stays in force");
                metrics.reloads.with_label_values(&["error"]).inc();
            }
        }
    }
}
