//! Command-line interface, built with clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// berth: browser terminals, one hardened Docker container per session.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: controller, WebSocket terminals, health and metrics.
    Serve(ServeArgs),
    /// Check or compare policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List, inspect or end sessions of a running berth (through its admin API).
    Sessions {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// List, replay or remove session recordings of a running berth (through its admin API).
    Recordings {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: RecordingsCommand,
    },
    /// Reconcile now; with --dry-run, print the plan a pass would make without doing it.
    Gc {
        /// Where the admin API is.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the plan as JSON instead of acting.
        #[arg(long)]
        dry_run: bool,
    },
}

/// How the CLI reaches a running berth's admin API.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Base URL of the admin API (`server.admin_listen`, or the main listener when an admin token is set).
    #[arg(long, global = true, env = "BERTH_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub admin_url: String,
    /// A file holding the admin bearer token (whose SHA-256 is `server.admin_token_sha256`).
    #[arg(long, global = true, env = "BERTH_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// `berth sessions ...`.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// One line per session: id, phase, profile, age, idle, client, owner, policy drift.
    Ls,
    /// One session with its last 20 reconcile decisions ("why is my session stuck?").
    Show {
        /// The session id.
        id: String,
    },
    /// End a session now (its container is removed).
    Rm {
        /// The session id.
        id: String,
    },
}

/// `berth recordings ...`.
#[derive(Debug, Subcommand)]
pub enum RecordingsCommand {
    /// One line per recording: name, session, start (UTC), size, and whether it is still being written.
    Ls,
    /// Print a recording's output to this terminal, at the speed it was recorded.
    Play {
        /// The recording's file name (as `ls` shows it).
        name: String,
        /// Play this many times faster (2 = twice as fast).
        #[arg(long, default_value_t = 1.0, value_parser = positive_speed)]
        speed: f64,
        /// Print everything at once, without waiting between events.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a recording (one still being written is refused).
    Rm {
        /// The recording's file name.
        name: String,
    },
}

fn positive_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a speed: use a number above 0, such as 2 or 0.5")),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable when stderr is a terminal, JSON otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// `berth serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The policy file (YAML). Without it, the built-in defaults apply.
    #[arg(long, env = "BERTH_POLICY")]
    pub policy: Option<PathBuf>,
    /// Listen address; overrides the policy's `server.listen`.
    #[arg(long, env = "BERTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This replica's identity, stamped on its containers. Default: read from (or created in) the state directory.
    #[arg(long, env = "BERTH_INSTANCE")]
    pub instance: Option<String>,
    /// Where berth keeps its instance id.
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/lib/berth")]
    pub state_dir: PathBuf,
    /// Docker engine address (`unix:///path` or `tcp://host:port`). Default: DOCKER_HOST or the local socket.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Log format.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// `berth policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: prints "ok", or every error with its line and column. Exits 0 or 1.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Say what changing OLD into NEW would do to new and existing sessions.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The candidate.
        new: PathBuf,
    },
}
