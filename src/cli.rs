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
}
