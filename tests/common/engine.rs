//! A private Docker engine (`scripts/private-dockerd.sh`) that a test may crash and restart without disturbing any
//! other test or engineer. The guard stops the engine and deletes its directory on drop, also while a failed test
//! unwinds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private Docker engine under a unique directory in /tmp. Dropping it stops the engine and deletes the
/// directory, also when the test panics.
pub struct PrivateEngine {
    dir: PathBuf,
}

impl PrivateEngine {
    /// Creates the directory and starts the engine, with the session image loaded.
    pub fn start_new() -> Self {
        let dir = PathBuf::from(format!("/tmp/berth-pd-{}", super::rand_hex(6)));
        std::fs::create_dir(&dir).expect("private engine directory");
        // The guard exists before the engine does: a failed start is cleaned up too.
        let engine = Self { dir };
        engine.script(&["start"]).expect("private engine starts");
        engine
    }

    /// Its API address (`-H` / `DOCKER_HOST`).
    pub fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// Runs `private-dockerd.sh CMD DIR ARGS...`, passing its log lines on to the test's output.
    pub fn script(&self, args: &[&str]) -> Result<(), String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/private-dockerd.sh");
        let (cmd, rest) = args.split_first().expect("a command");
        let out = Command::new("bash")
            .arg(script)
            .arg(cmd)
            .arg(&self.dir)
            .args(rest)
            .output()
            .map_err(|e| format!("cannot run private-dockerd.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        if out.status.success() { Ok(()) } else { Err(format!("private-dockerd.sh {args:?} failed: {stderr}")) }
    }

    /// SIGKILL to dockerd, as in a crash; its containers' shims are left for the next start.
    pub fn kill(&self) {
        self.script(&["stop", "--kill"]).expect("private engine killed");
    }

    /// Starts it again on the same directories.
    pub fn restart(&self) {
        self.script(&["start"]).expect("private engine restarts");
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Err(e) = self.script(&["stop"]) {
            eprintln!("stopping the private engine: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}
