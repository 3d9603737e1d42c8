//! Slow and idle clients before the WebSocket hello: a real berth on 127.0.0.1 (on the in-memory fake engine,
//! since none of this depends on Docker), raw TCP sockets and a real WebSocket client. A half-sent request head
//! is cut off by the header-read timeout; connections past the pending caps (in all and per peer) or the
//! connection cap are closed at once, while an established session keeps working.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::app::Server;
use berth::listener::Dropped;
use berth::reconciler::Policy;
use berth::runtime::fake::FakeRuntime;
use common::client::{Client, connect_with, ready, ready_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Far longer than any wait below: a connection the server has not closed by then is being held open.
const OPEN: Duration = Duration::from_secs(3);

fn policy() -> Policy {
    let mut p = Policy::default();
    p.server.listen = "127.0.0.1:0".parse().expect("address");
    p
}

async fn start(p: Policy) -> Server {
    let server = Server::start_on(FakeRuntime::default(), p, "edge".parse().expect("instance"), None)
        .await
        .expect("berth starts");
    let mut ready = server.handle.readiness();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| r.is_ready()))
        .await
        .expect("ready in time")
        .expect("controller alive");
    server
}

/// A TCP connection to berth from `from` (any 127.0.0.0/8 address works on Linux loopback).
async fn tcp_from(server: &Server, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().expect("ip"), 0)).expect("bind");
    socket.connect(server.addr).await.expect("connect")
}

/// What the server sent before closing, if it closes within `limit`; `None` if the connection is still open.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok().map(|()| got)
}

/// Asserts that the server refused this connection at once: closed, with a 503 or nothing.
async fn refused(s: &mut TcpStream, what: &str) {
    let got = closed_within(s, OPEN).await.unwrap_or_else(|| panic!("{what}: the connection is still open"));
    let text = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || text.starts_with("HTTP/1.1 503"), "{what}: {text}");
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_pending(server: &Server, n: i64) {
    let m = server.metrics.clone();
    until(&format!("{n} pending connections"), move || m.connections_pending() == n).await;
}

async fn still_works(c: &mut Client, tag: &str) {
    c.input(tag).await;
    c.until_output(tag).await;
}

/// The `/healthz` answer on a fresh connection from `from`.
async fn healthz(server: &Server, from: &str) -> String {
    let mut s = tcp_from(server, from).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: berth\r\nconnection: close\r\n\r\n").await.expect("write");
    let got = closed_within(&mut s, Duration::from_secs(5)).await.expect("answered and closed");
    String::from_utf8_lossy(&got).into_owned()
}

fn dropped(server: &Server, reason: Dropped) -> u64 {
    server.metrics.connections_dropped(reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_or_silence_is_cut_off_by_the_header_read_timeout() {
    let mut p = policy();
    p.server.header_read_timeout = Duration::from_millis(500);
    let server = start(p).await;
    let mut half = tcp_from(&server, "127.0.0.1").await;
    half.write_all(b"GET /ws HTTP/1.1\r\nhost: berth\r\nupgrade: websock").await.expect("write");
    let mut silent = tcp_from(&server, "127.0.0.1").await;
    let began = Instant::now();
    assert!(closed_within(&mut half, OPEN).await.is_some(), "half a head is still open after {OPEN:?}");
    assert!(closed_within(&mut silent, OPEN).await.is_some(), "a silent socket is still open after {OPEN:?}");
    assert!(began.elapsed() >= Duration::from_millis(400), "closed before the timeout: {:?}", began.elapsed());
    let m = server.metrics.clone();
    until("two header timeouts counted", move || m.connections_dropped(Dropped::HeaderTimeout) == 2).await;
    until_pending(&server, 0).await;
    assert!(healthz(&server, "127.0.0.1").await.starts_with("HTTP/1.1 200"), "berth still serves");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_pending_caps_are_refused_while_a_live_session_keeps_working() {
    let mut p = policy();
    p.server.max_pending = 3;
    p.server.max_pending_per_ip = 2;
    let server = start(p).await;
    let mut session = ready(server.addr).await;
    until_pending(&server, 0).await;

    // Two idle sockets from one address fill its share; a third from it is refused.
    let _a1 = tcp_from(&server, "127.0.0.1").await;
    let _a2 = tcp_from(&server, "127.0.0.1").await;
    until_pending(&server, 2).await;
    let mut a3 = tcp_from(&server, "127.0.0.1").await;
    refused(&mut a3, "a third pending connection from one address").await;
    assert_eq!(dropped(&server, Dropped::MaxPendingPerIp), 1);

    // Another address still gets in, up to the cap for all.
    let _b1 = tcp_from(&server, "127.0.0.2").await;
    until_pending(&server, 3).await;
    let mut c1 = tcp_from(&server, "127.0.0.3").await;
    refused(&mut c1, "a fourth pending connection in all").await;
    assert_eq!(dropped(&server, Dropped::MaxPending), 1);

    still_works(&mut session, "still-here").await;
    drop(_a1);
    until_pending(&server, 2).await;
    assert!(healthz(&server, "127.0.0.1").await.starts_with("HTTP/1.1 200"), "a freed place is taken again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_upgraded_sessions_and_follows_a_reload() {
    let mut p = policy();
    p.server.max_connections = 2;
    p.server.max_pending = 2;
    let server = start(p.clone()).await;
    let mut session = ready(server.addr).await;
    let _idle = tcp_from(&server, "127.0.0.1").await;
    until_pending(&server, 1).await;
    let m = server.metrics.clone();
    until("two open connections", move || m.connections() == 2).await;
    let mut third = tcp_from(&server, "127.0.0.1").await;
    refused(&mut third, "a third connection with max_connections: 2").await;
    assert_eq!(dropped(&server, Dropped::MaxConnections), 1);
    still_works(&mut session, "after-refusal").await;

    p.server.max_connections = 3;
    p.server.max_pending = 3;
    server.policy.send_replace(Arc::new(p));
    assert!(healthz(&server, "127.0.0.1").await.starts_with("HTTP/1.1 200"), "a raised cap applies at once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_addresses_of_one_ipv6_64_behind_a_trusted_proxy_share_max_per_ip() {
    let mut p = policy();
    p.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("network")];
    p.limits.max_per_ip = 1;
    let server = start(p).await;
    let mut first = ready_with(server.addr, &[("x-forwarded-for", "2001:db8:aa:bb::1")]).await;

    let mut second = connect_with(server.addr, "", &[("x-forwarded-for", "2001:db8:aa:bb::2")]).await.expect("upgrade");
    second.hello().await;
    let (close, code) = second.until_closed(Duration::from_secs(5)).await;
    assert_eq!((close, code.as_deref()), (Some(4029), Some("per_ip")), "messages: {:?}", second.messages);

    let _other = ready_with(server.addr, &[("x-forwarded-for", "2001:db8:aa:cc::1")]).await;
    still_works(&mut first, "first-still-here").await;
    server.stop().await;
}
