//! The real `berth` binary as a child process, for tests that must see what an operator sees: a policy file
//! derived from `manifests/policy.yaml`, the listening line on stdout, `/metrics` over HTTP, and signals sent
//! by pid. Every guard here cleans up on drop, also while a failed test unwinds.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::World;

/// How long a started binary has to print its listening line.
const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/berth-<what>-<random>`.
    pub fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("berth-{what}-{}", super::rand_hex(6)));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The default policy file (`manifests/policy.yaml`), pointed at `world`'s label namespace and name prefix,
/// with `edits` applied as `("section.key", "value")`. Written to `dir/policy.yaml`, checked with berth's own
/// loader (so a bad edit fails here, clearly), and its path returned.
pub fn write_policy(dir: &Path, world: &World, edits: &[(&str, &str)]) -> PathBuf {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/policy.yaml");
    let mut yaml = std::fs::read_to_string(&default).unwrap_or_else(|e| panic!("{}: {e}", default.display()));
    yaml = set_key(&yaml, "docker.namespace", world.ns.as_str());
    yaml = set_key(&yaml, "docker.name_prefix", &world.policy.docker.name_prefix);
    for (key, value) in edits {
        yaml = set_key(&yaml, key, value);
    }
    let path = dir.join("policy.yaml");
    std::fs::write(&path, &yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let policy = berth::app::load_policy(&path).unwrap_or_else(|e| panic!("the test's policy is invalid:\n{e}"));
    assert_eq!(policy.docker.namespace, world.ns, "the policy file uses the test's namespace");
    assert_eq!(policy.docker.name_prefix, world.policy.docker.name_prefix, "and its name prefix");
    path
}

/// [`write_policy`], with a warm pool of `size` on the default profile (which then names its shell as its
/// `command`, as a pool needs; decision 0025).
pub fn write_pooled_policy(dir: &Path, world: &World, edits: &[(&str, &str)], size: usize) -> PathBuf {
    let path = write_policy(dir, world, edits);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let pooled = format!("    image: berth-session:latest\n    command: [/bin/sh, -i]\n    pool: {{size: {size}}}\n");
    assert!(text.contains("    image: berth-session:latest\n"), "the default profile's image line");
    std::fs::write(&path, text.replacen("    image: berth-session:latest\n", &pooled, 1))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    berth::app::load_policy(&path).unwrap_or_else(|e| panic!("the test's pooled policy is invalid:\n{e}"));
    path
}

/// Replaces the value of `section.key` in a policy file laid out like `manifests/policy.yaml` (sections at
/// column 0, their keys indented by two spaces). Panics when the key is not there.
pub fn set_key(yaml: &str, path: &str, value: &str) -> String {
    let (section, key) = path.split_once('.').unwrap_or_else(|| panic!("{path}: expected section.key"));
    let mut in_section = false;
    let mut done = false;
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.lines() {
        let top_level = !line.is_empty() && !line.starts_with(' ') && !line.starts_with('#');
        if top_level {
            in_section = line.trim_end() == format!("{section}:");
        }
        if in_section && !done && line.starts_with("  ") && !line.starts_with("   ") {
            let body = &line[2..];
            if body.strip_prefix(key).is_some_and(|rest| rest.starts_with(':')) {
                out.push_str(&format!("  {key}: {value}\n"));
                done = true;
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(done, "the default policy has no key {path}");
    out
}

/// A running `berth serve` child. Dropping it SIGKILLs it (by pid) if it still runs, and prints the end of its
/// log when the test is failing.
pub struct Berth {
    child: Option<Child>,
    /// Its pid, for signals.
    pub pid: u32,
    /// The address from its listening line.
    pub addr: SocketAddr,
    /// When the listening line arrived.
    pub listening_at: Instant,
    log: PathBuf,
}

impl Berth {
    /// Runs `berth serve --policy POLICY --listen 127.0.0.1:0 --state-dir STATE --instance INSTANCE`, with its
    /// log (stderr) appended to `STATE/berth.log`, and waits for the `berth listening on http://ADDR/` line.
    pub fn spawn(policy: &Path, instance: &str, state_dir: &Path) -> Self {
        Self::spawn_with(policy, instance, state_dir, "127.0.0.1:0", None)
    }

    /// [`Self::spawn`] on a chosen listen address (a replica that restarts behind a load balancer comes back on
    /// its port), and optionally another Docker engine (`--docker-host`).
    pub fn spawn_with(
        policy: &Path,
        instance: &str,
        state_dir: &Path,
        listen: &str,
        docker_host: Option<&str>,
    ) -> Self {
        Self::spawn_env(policy, instance, state_dir, listen, docker_host, &[])
    }

    /// [`Self::spawn_with`] with extra environment variables for the child (`BERTH_LOG`, say).
    pub fn spawn_env(
        policy: &Path,
        instance: &str,
        state_dir: &Path,
        listen: &str,
        docker_host: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let log = state_dir.join("berth.log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .arg("--policy")
            .arg(policy)
            .args(["--listen", listen])
            .args(docker_host.map(|h| ["--docker-host", h]).into_iter().flatten())
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--instance", instance])
            .args(["--log-format", "text"])
            .env_remove("BERTH_POLICY")
            .env_remove("BERTH_LISTEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning the berth binary");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        // The guard exists before anything can fail, so a berth that never says where it listens is killed.
        let mut me =
            Self { child: Some(child), pid, addr: "127.0.0.1:0".parse().expect("address"), listening_at: started, log };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                let addr = line
                    .strip_prefix("berth listening on http://")
                    .and_then(|rest| rest.strip_suffix('/'))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                    break;
                }
            }
            // Keep reading, so that berth never writes into a full or closed pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(LISTEN_WAIT) {
            Ok(addr) => {
                me.addr = addr;
                me.listening_at = Instant::now();
            }
            Err(_) => {
                let status = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "berth (pid {pid}) printed no 'berth listening on http://ADDR/' line within {LISTEN_WAIT:?} \
                     (exit status: {status:?}); its log:\n{}",
                    me.log_tail(40)
                );
            }
        }
        eprintln!("berth pid {pid} listening on http://{}/ after {:?}", me.addr, started.elapsed());
        me
    }

    /// `kill -SIG PID`: by pid only, never by name. The pid cannot have been reused, because the child is not
    /// reaped until [`Self::wait`].
    pub fn signal(&self, sig: &str) {
        assert!(self.child.is_some(), "berth pid {} was already reaped", self.pid);
        let status =
            Command::new("kill").arg(format!("-{sig}")).arg(self.pid.to_string()).status().expect("running kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits (bounded) for the child to exit and reaps it.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("a child to wait for");
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for berth") {
                self.child = None;
                return status;
            }
            if Instant::now() >= until {
                panic!("berth pid {} did not exit within {limit:?}; its log:\n{}", self.pid, self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as in a crash; returns once it is reaped.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait(Duration::from_secs(10))
    }

    /// SIGTERM (berth drains), and waits at most `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(limit)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its whole log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls `GET /readyz` until it answers 200, or panics after `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz").await {
                return;
            }
            assert!(Instant::now() < until, "berth was not ready within {limit:?}; its log:\n{}", self.log_tail(40));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        match http_get(self.addr, "/metrics").await {
            Ok((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// Polls `/metrics` until `series` has `value`, or panics at `deadline`.
    pub async fn wait_metric(&self, series: &str, value: f64, deadline: Instant, what: &str) {
        loop {
            let text = self.metrics().await;
            if sample(&text, series) == Some(value) {
                return;
            }
            if Instant::now() >= deadline {
                let name = series.split('{').next().unwrap_or(series);
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
                panic!(
                    "{what}: {series} is not {value}; /metrics has:\n{}\nberth's log:\n{}",
                    lines.join("\n"),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if std::thread::panicking() {
            eprintln!("--- the last lines of berth's log ({}):\n{}\n---", self.log.display(), self.log_tail(60));
        }
        // Never panic here; kill by pid, then reap.
        let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
        let _ = child.wait();
    }
}

/// A minimal `GET` over HTTP/1.0 (the server closes the connection after its answer): status and body.
///
/// # Errors
/// When the connection fails, takes more than 5 s, or the answer is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "GET took over 5 s"))??;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not HTTP: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

/// The value of the sample `series` (name and labels exactly as exposed) in a Prometheus text exposition.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
