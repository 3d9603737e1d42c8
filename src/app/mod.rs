//! Wiring: turns a parsed command line into a running service or a one-shot command. `main.rs` calls
//! [`run`] and nothing else. The one-shot commands and `serve`'s process life (configuration, exit codes,
//! signals) are `commands.rs`; the running service, its listeners and its tasks are `server.rs`; logging and the
//! spans of the tasks berth spawns are `telemetry.rs`.

mod commands;
mod server;
mod telemetry;

use std::process::ExitCode;

pub use commands::load_policy;
pub use server::{ServeError, Server};

use crate::cli::{Cli, Command, PolicyCommand};

/// EX_USAGE: invalid configuration.
const EXIT_CONFIG: u8 = 64;

/// Runs the command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => commands::policy_check(&file),
        Command::Policy(PolicyCommand::Diff { old, new }) => commands::policy_diff(&old, &new),
        Command::Sessions { admin, command } => commands::sessions(&admin, &command),
        Command::Recordings { admin, command } => commands::recordings(&admin, &command),
        Command::Gc { admin, dry_run } => commands::gc(&admin, dry_run),
        Command::Serve(args) => commands::serve(args),
    }
}
