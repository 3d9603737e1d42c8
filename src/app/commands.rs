//! The commands: `policy check`, `policy diff`, the admin CLI (`sessions`, `gc`), and `serve`'s process life:
//! configuration checked before anything starts, the instance id, signals, and exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use berth_reconciler::policy_file::parse_policy_with;
use berth_reconciler::{InstanceId, Policy};
use tracing::{error, info, warn};

use super::server::{ServeError, Server};
use super::{EXIT_CONFIG, telemetry};
use crate::cli::{AdminArgs, RecordingsCommand, ServeArgs, SessionsCommand};

/// `berth policy check FILE`.
pub(super) fn policy_check(file: &Path) -> ExitCode {
    match load_policy(file) {
        Ok(policy) => {
            for note in policy.unsafe_notes() {
                println!("note: {note}");
            }
            // Settings a profile's runtime cannot apply are stated, never dropped silently.
            for note in berth_reconciler::isolation::notes(&policy) {
                println!("{note}");
            }
            for note in berth_reconciler::pool::notes(&policy) {
                println!("{note}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `berth policy diff OLD NEW`.
pub(super) fn policy_diff(old: &Path, new: &Path) -> ExitCode {
    match (load_policy(old), load_policy(new)) {
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
    }
}

/// `berth sessions ls|show|rm`.
pub(super) fn sessions(admin: &AdminArgs, command: &SessionsCommand) -> ExitCode {
    let (method, path) = match command {
        SessionsCommand::Ls => ("GET", "/admin/sessions".to_owned()),
        SessionsCommand::Show { id } => ("GET", format!("/admin/sessions/{}", url_safe(id))),
        SessionsCommand::Rm { id } => ("DELETE", format!("/admin/sessions/{}", url_safe(id))),
    };
    admin_call(admin, method, &path, matches!(command, SessionsCommand::Ls))
}

/// `berth recordings ls|play|rm`.
pub(super) fn recordings(admin: &AdminArgs, command: &RecordingsCommand) -> ExitCode {
    let name = |n: &str| -> Option<String> {
        if crate::recording::is_recording_name(n) {
            Some(n.to_owned())
        } else {
            eprintln!("berth: {n:?} is not a recording's name (see `berth recordings ls`)");
            None
        }
    };
    match command {
        RecordingsCommand::Ls => admin_with(admin, "GET", "/admin/recordings", |body| {
            print!("{}", crate::admin_client::recordings_table(&body));
            ExitCode::SUCCESS
        }),
        RecordingsCommand::Rm { name: n } => match name(n) {
            Some(n) => admin_call(admin, "DELETE", &format!("/admin/recordings/{n}"), false),
            None => ExitCode::FAILURE,
        },
        RecordingsCommand::Play { name: n, speed, no_wait } => {
            let Some(n) = name(n) else { return ExitCode::FAILURE };
            let speed = if *no_wait { None } else { Some(*speed) };
            admin_with(admin, "GET", &format!("/admin/recordings/{n}"), move |body| {
                match crate::recording::asciicast::parse(&body) {
                    Ok((_, events)) => {
                        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
                        match rt {
                            Ok(rt) => rt.block_on(crate::admin_client::play(&events, speed)),
                            Err(e) => {
                                eprintln!("berth: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("berth: the recording does not parse: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// `berth gc [--dry-run]`.
pub(super) fn gc(admin: &AdminArgs, dry_run: bool) -> ExitCode {
    let (method, path) = if dry_run { ("GET", "/admin/plan") } else { ("POST", "/admin/reconcile") };
    admin_call(admin, method, path, false)
}

/// Keeps only characters a session id can have, so nothing else reaches the request line.
fn url_safe(id: &str) -> String {
    id.chars().filter(char::is_ascii_alphanumeric).take(64).collect()
}

fn admin_call(admin: &AdminArgs, method: &str, path: &str, table: bool) -> ExitCode {
    admin_with(admin, method, path, |body| {
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
    })
}

/// Calls the admin API and hands a 2xx body to `then`.
fn admin_with(admin: &AdminArgs, method: &str, path: &str, then: impl FnOnce(String) -> ExitCode) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = rt.block_on(crate::admin_client::request(&admin.admin_url, admin.token_file.as_deref(), method, path));
    drop(rt);
    match answer {
        Ok(body) => then(body),
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

pub(super) fn serve(args: ServeArgs) -> ExitCode {
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
    telemetry::init(args.log_format, &policy);
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
