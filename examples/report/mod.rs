//! What the two load programs (`loadgen` against berth, `floor` against Docker directly) share: bounded
//! arguments, the loopback guard, latency percentiles, the one-line JSON report, and the count of containers a
//! run left behind. Not an example itself: `examples/loadgen.rs` and `examples/floor.rs` include it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use berth::reconciler::LabelNamespace;
use serde_json::{Value, json};

/// Most sessions one run may open.
pub const MAX_SESSIONS: u32 = 2_000;
/// Most sessions in flight at once.
pub const MAX_CONCURRENCY: u32 = 200;
/// Longest churn phase.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// Longest whole run, clean-up included.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(900);
/// Distinct error messages kept in a report.
const MAX_ERROR_KINDS: usize = 20;

/// The command typed to measure an echo round trip, and what its output contains. The typed line (echoed by
/// the TTY) does not contain the answer: the shell has to evaluate it.
pub const ECHO_COMMAND: &[u8] = b"echo lg-$((40+2))\r";
/// The answer to [`ECHO_COMMAND`].
pub const ECHO_ANSWER: &[u8] = b"lg-42";
/// The session image's prompt (`PS1='$ '`).
pub const PROMPT: &[u8] = b"$ ";

/// Parses `250ms`, `30s`, `2m`, `1h`.
///
/// # Errors
/// Anything else, or a duration over [`MAX_TIMEOUT`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if d > MAX_TIMEOUT {
        return Err(format!("{s:?}: at most {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(d)
}

/// Parses `256KiB`, `1MiB` or a plain byte count.
///
/// # Errors
/// Anything else.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?}: expected a number with KiB, MiB or nothing"))?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return Err(format!("{s:?}: unit must be KiB or MiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

/// A URL that points at this machine: `scheme://host:port/path` where host is a loopback address
/// (127.0.0.0/8, ::1) or `localhost` resolving only to loopback addresses.
#[derive(Debug, Clone)]
pub struct LoopbackUrl {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// `host:port` as written (for the Host header).
    pub authority: String,
    /// The path, with a leading slash.
    pub path: String,
}

/// Checks that `url` has one of `schemes` and a loopback host.
///
/// # Errors
/// A malformed URL, another scheme, or a host that is not loopback: these programs never load anything but
/// this machine.
pub fn loopback_url(url: &str, schemes: &[&str]) -> Result<LoopbackUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL"))?;
    if !schemes.contains(&scheme) {
        return Err(format!("{url:?}: the scheme must be one of {schemes:?}"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() => {
            (h, p.parse::<u16>().map_err(|_| format!("{url:?}: bad port {p:?}"))?)
        }
        _ => return Err(format!("{url:?}: give an explicit host:port")),
    };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let refuse = || {
        format!(
            "refusing {url:?}: the host must be a loopback address (127.0.0.0/8, ::1 or localhost); \
             this program only ever loads the machine it runs on"
        )
    };
    let addr = if let Ok(ip) = bare.parse::<IpAddr>() {
        if !ip.is_loopback() {
            return Err(refuse());
        }
        SocketAddr::new(ip, port)
    } else if bare.eq_ignore_ascii_case("localhost") {
        let addrs: Vec<SocketAddr> =
            (bare, port).to_socket_addrs().map_err(|e| format!("{url:?}: cannot resolve localhost: {e}"))?.collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(format!("{} (localhost resolves to {addrs:?})", refuse()));
        }
        addrs[0]
    } else {
        return Err(refuse());
    };
    Ok(LoopbackUrl { addr, authority: authority.to_owned(), path: path.to_owned() })
}

/// p50, p90, p99 and max (nearest rank) of `samples` in milliseconds, with their count and mean.
pub fn percentiles(samples: &[Duration]) -> Value {
    if samples.is_empty() {
        return json!({"n": 0, "p50": null, "p90": null, "p99": null, "max": null, "mean": null});
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * ms.len() as f64).ceil() as usize;
        round1(ms[i.clamp(1, ms.len()) - 1])
    };
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    json!({
        "n": ms.len(),
        "p50": rank(50.0),
        "p90": rank(90.0),
        "p99": rank(99.0),
        "max": round1(ms[ms.len() - 1]),
        "mean": round1(mean),
    })
}

/// Every sample in milliseconds (one decimal), sorted: for drawing distributions (`--samples`).
pub fn samples_ms(samples: &[Duration]) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| round1(d.as_secs_f64() * 1000.0)).collect();
    ms.sort_by(f64::total_cmp);
    json!(ms)
}

/// Rounds to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Failure messages by kind, bounded.
#[derive(Debug, Default)]
pub struct Errors(BTreeMap<String, u64>);

impl Errors {
    /// Counts one failure.
    pub fn add(&mut self, e: &str) {
        let key: String = e.chars().take(160).collect();
        if self.0.len() < MAX_ERROR_KINDS || self.0.contains_key(&key) {
            *self.0.entry(key).or_default() += 1;
        } else {
            *self.0.entry("(other errors)".to_owned()).or_default() += 1;
        }
    }

    /// Failures counted.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: Self) {
        for (k, n) in other.0 {
            if self.0.len() < MAX_ERROR_KINDS || self.0.contains_key(&k) {
                *self.0.entry(k).or_default() += n;
            } else {
                *self.0.entry("(other errors)".to_owned()).or_default() += n;
            }
        }
    }

    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// Containers carrying `ns`'s managed marker, in any state, as the Docker CLI lists them.
///
/// # Errors
/// When the Docker CLI fails.
pub async fn marked_containers(ns: &LabelNamespace) -> Result<Vec<String>, String> {
    let filter = format!("label={}=true", ns.marker());
    let out = tokio::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &filter])
        .output()
        .await
        .map_err(|e| format!("docker CLI: {e}"))?;
    if !out.status.success() {
        return Err(format!("docker ps: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect())
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The bytes most recently received, bounded, for finding a marker in a terminal stream.
#[derive(Debug, Default)]
pub struct Tail {
    buf: Vec<u8>,
    /// Bytes received in total.
    pub total: u64,
}

impl Tail {
    /// Keeps at most this much; markers are short.
    const KEEP: usize = 4096;

    /// Appends output.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() > 4 * Self::KEEP {
            self.buf.drain(..self.buf.len() - Self::KEEP);
        }
    }

    /// Forgets what came before: the next search only sees output from now on.
    pub fn mark(&mut self) {
        self.buf.clear();
    }

    /// Whether output since the last mark contains `needle`.
    pub fn has(&self, needle: &[u8]) -> bool {
        contains(&self.buf, needle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_accepted() {
        assert!(loopback_url("ws://127.0.0.1:8080/ws", &["ws"]).is_ok());
        assert!(loopback_url("ws://127.3.2.1:8080/ws", &["ws"]).is_ok());
        assert!(loopback_url("ws://[::1]:8080/ws", &["ws"]).is_ok());
        assert!(loopback_url("ws://10.0.0.1:8080/ws", &["ws"]).is_err());
        assert!(loopback_url("ws://example.com:8080/ws", &["ws"]).is_err());
        assert!(loopback_url("wss://127.0.0.1:8080/ws", &["ws"]).is_err());
        assert!(loopback_url("ws://127.0.0.1/ws", &["ws"]).is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let v = percentiles(&s);
        assert_eq!(v["p50"], 50.0);
        assert_eq!(v["p99"], 99.0);
        assert_eq!(v["max"], 100.0);
    }
}
