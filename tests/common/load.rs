//! Load helpers for the chaos and soak tests: echo round trips through a session's shell, how a connection
//! ended as its client saw it, and this process's CPU time and resident memory from /proc. berth runs inside
//! the test process, so those figures cover berth and the test's own clients together.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Client, Event};

/// How a connection ended, as its client saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    /// The `exit` message, if one came.
    pub exit: Option<Value>,
    /// When it came.
    pub exit_at: Option<Instant>,
    /// The code of the last `error` message, if one came.
    pub error: Option<String>,
    /// The close code; `None` when the connection dropped without a close frame.
    pub close: Option<u16>,
    /// When the close frame (or the drop) came; `None` when nothing came within the limit.
    pub closed_at: Option<Instant>,
}

impl Ended {
    /// The `exit` reason, if an exit came.
    pub fn reason(&self) -> Option<&str> {
        self.exit.as_ref().and_then(|e| e["reason"].as_str())
    }
}

/// Why an echo did not come back.
#[derive(Debug)]
pub enum EchoError {
    /// The session or the connection ended (an `exit`, an error, a close).
    Ended(Ended),
    /// Nothing within the limit.
    Timeout,
}

/// Reads until the connection closes (at most `limit`), starting from `first`, an event already read; records
/// the `exit` and `error` messages on the way.
pub async fn finish(c: &mut Client, first: Option<Event>, limit: Duration) -> Ended {
    let deadline = tokio::time::Instant::now() + limit;
    let mut ended = Ended { exit: None, exit_at: None, error: None, close: None, closed_at: None };
    let mut next = first;
    loop {
        match next {
            Some(Event::Json(v)) if v["type"] == "exit" => {
                ended.exit = Some(v);
                ended.exit_at = Some(Instant::now());
            }
            Some(Event::Json(v)) if v["type"] == "error" => ended.error = v["code"].as_str().map(str::to_owned),
            Some(Event::Closed(code, _)) => {
                ended.close = code;
                ended.closed_at = Some(Instant::now());
                return ended;
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return ended;
        }
        next = c.next(left).await;
        if next.is_none() {
            return ended;
        }
    }
}

/// Types `echo <tag>$((n+1))` and waits (at most `limit`) for the line `<tag>{n+1}`; returns the round trip.
/// The arithmetic keeps the terminal's echo of the command itself from matching.
///
/// # Errors
/// [`EchoError::Ended`] when the session or the connection ends first (read to the close, at most 5 s more),
/// [`EchoError::Timeout`] when nothing came back within `limit`.
pub async fn echo(c: &mut Client, tag: &str, n: u64, limit: Duration) -> Result<Duration, EchoError> {
    let from = c.output.len();
    let needle = format!("{tag}{}\r\n", n + 1);
    let started = Instant::now();
    let sent = futures::SinkExt::send(
        &mut c.ws,
        tokio_tungstenite::tungstenite::Message::binary(format!("echo {tag}$(({n}+1))\r").into_bytes()),
    )
    .await;
    if sent.is_err() {
        return Err(EchoError::Ended(finish(c, None, Duration::from_secs(5)).await));
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if String::from_utf8_lossy(&c.output[from..]).contains(&needle) {
            return Ok(started.elapsed());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next(left).await {
            None => return Err(EchoError::Timeout),
            Some(Event::Output(_)) => {}
            Some(Event::Json(v)) if v["type"] != "exit" && v["type"] != "error" => {}
            Some(ev) => return Err(EchoError::Ended(finish(c, Some(ev), Duration::from_secs(5)).await)),
        }
    }
}

/// The median of `samples` (zero when empty).
pub fn median(samples: &[Duration]) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The `q` quantile (0..=1) of `samples` (zero when empty).
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    v[i]
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on every Linux we run on).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + system) this process has used, every thread included.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name (field 2) may hold spaces and parentheses: fields after it follow the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).expect("a stat line");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name come state (field 3) ...; utime is field 14 and stime field 15.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

/// This process's resident set size, in bytes (`VmRSS`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// xorshift64, for test choices that are random but reproducible from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is replaced).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x2545_F491_4F6C_DD1D } else { seed })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Shuffles `v` (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
