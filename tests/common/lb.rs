//! A real HAProxy (Debian's) in front of berth replicas, on loopback, with the stickiness of
//! `manifests/lb/haproxy.cfg`: a reconnect's `?session=<id>` is matched against a stick table that learns each
//! session's replica from the `berth-session` header of the upgrade response.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::http_get;

/// A free loopback port (bound, then released for the process that will listen on it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The test's HAProxy configuration: the backend section of `manifests/lb/haproxy.cfg`, with loopback servers
/// and fast health checks.
pub fn config(frontend: SocketAddr, servers: &[(&str, SocketAddr)]) -> String {
    let mut cfg = format!(
        "global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout http-request 10s
frontend berth_public
    bind {frontend}
    http-request set-header X-Forwarded-For %[src]
    default_backend berth
backend berth
    balance roundrobin
    stick-table type string len 32 size 100k expire 2h
    stick match urlp(session)
    stick store-response res.hdr(berth-session)
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host berth-health
    http-check expect status 200
    default-server check inter 500ms fall 1 rise 1
    retry-on conn-failure empty-response 503
    retries 3
    option redispatch 1
"
    );
    for (name, addr) in servers {
        cfg.push_str(&format!("    server {name} {addr}\n"));
    }
    cfg
}

/// A running `haproxy -db`; dropping it stops it by pid.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Writes the config into `dir`, checks it with `haproxy -c`, starts HAProxy and waits until it answers.
    pub async fn start(dir: &Path, servers: &[(&str, SocketAddr)]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config(addr, servers)).expect("writing haproxy.cfg");
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect(
            "running haproxy: install it with `BERTH_SETUP_TEST_TOOLS=1 scripts/setup.sh` (Debian package haproxy)",
        );
        assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting haproxy");
        let me = Self { child, addr };
        let until = Instant::now() + Duration::from_secs(10);
        while !matches!(http_get(addr, "/readyz").await, Ok((200, _))) {
            assert!(Instant::now() < until, "haproxy at {addr} did not pass requests on within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
