//! Shared sessions against real Docker (docs/protocol.md, "Shared sessions"): an owner, two viewers and a writer
//! on one shell; revoking and expiry; and a stalled viewer that must not slow the owner. A real berth on
//! 127.0.0.1, real containers, real clients (tokio-tungstenite). Bounded, and no container is left behind.

mod common;

use std::time::Duration;

use berth::controller::Role;
use berth::reconciler::Policy;
use common::World;
use common::client::{Client, Event, at_prompt, connect_with};
use common::load::{echo, median};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn sharing(p: &mut Policy) {
    let name = p.default_profile.clone();
    let s = &mut p.profiles.get_mut(&name).expect("default profile").sharing;
    s.enabled = true;
    s.anonymous = true;
}

async fn share(owner: &mut Client, role: &str, ttl_s: u64) -> (String, String) {
    owner.send_json(json!({"type": "share", "role": role, "ttl_s": ttl_s})).await;
    let v = owner.until_json("shared", T).await;
    (v["grant"].as_str().expect("grant").to_owned(), v["grant_id"].as_str().expect("grant_id").to_owned())
}

fn join_hello(session: &str, grant: &str) -> Value {
    json!({"type": "hello", "cols": 80, "rows": 24, "join": {"session": session, "grant": grant}})
}

async fn join(addr: std::net::SocketAddr, session: &str, grant: &str) -> Client {
    let mut c = connect_with(addr, &format!("?session={session}"), &[]).await.expect("connect");
    c.send_json(join_hello(session, grant)).await;
    c
}

/// A joined client with a small TCP receive window (which also turns autotuning off), so that once it stops
/// reading it stops taking data after kilobytes.
async fn join_small_window(addr: std::net::SocketAddr, session: &str, grant: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    let tcp = sock.connect(addr).await.expect("tcp connect");
    let mut req = format!("ws://{addr}/ws?session={session}").into_client_request().expect("request");
    req.headers_mut().insert("sec-websocket-protocol", "berth.v1".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .expect("websocket connect");
    let mut c = Client { ws, output: Vec::new(), messages: Vec::new(), session: None, secret: None, closed: None };
    c.send_json(join_hello(session, grant)).await;
    c
}

async fn no_leftovers(w: &World) {
    common::eventually(Duration::from_secs(30), "no container of the test left", || w.containers(None).is_empty())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_see_the_shell_a_writer_types_revoke_and_expiry_close_them() {
    common::docker().await;
    let w = World::with_prefix("s");
    let mut p = w.policy.clone();
    sharing(&mut p);
    let server = w.serve_with(p).await;
    let mut owner = at_prompt(server.addr).await;
    let session = owner.session.clone().expect("session");

    let (grant, grant_id) = share(&mut owner, "viewer", 600).await;
    let mut a = join(server.addr, &session, &grant).await;
    let mut b = join(server.addr, &session, &grant).await;
    a.until_ready().await;
    b.until_ready().await;
    // They get the screen so far: the first prompt.
    a.until_output("$ ").await;
    b.until_output("$ ").await;

    let from = (a.output.len(), b.output.len());
    echo(&mut owner, "OWNER-", 41, T).await.expect("the owner's echo");
    a.until_output_from(from.0, "OWNER-42", T).await;
    b.until_output_from(from.1, "OWNER-42", T).await;

    // A viewer's input never reaches the shell.
    a.input("echo VIEWER-$((6*7))\r").await;
    assert_eq!(a.until_json("warning", T).await["code"], "read_only");
    echo(&mut owner, "AFTER-", 1, T).await.expect("the owner's echo");
    assert!(!String::from_utf8_lossy(&owner.output).contains("VIEWER"), "a viewer typed into the shell");

    // A writer's does.
    let (wgrant, _) = share(&mut owner, "writer", 600).await;
    let mut writer = join(server.addr, &session, &wgrant).await;
    writer.until_ready().await;
    writer.input("echo WRITER-$((6*7))\r").await;
    owner.until_output("WRITER-42").await;
    a.until_output("WRITER-42").await;
    assert_eq!((server.metrics.viewers(Role::Viewer), server.metrics.viewers(Role::Writer)), (2, 1));

    // Revoking closes both viewers with 4014; the writer stays.
    owner.send_json(json!({"type": "revoke", "grant_id": grant_id})).await;
    owner.until_json("revoked", T).await;
    assert_eq!(a.until_closed(T).await, (Some(4014), Some("grant_revoked".into())));
    assert_eq!(b.until_closed(T).await, (Some(4014), Some("grant_revoked".into())));
    echo(&mut writer, "STILL-", 1, T).await.expect("the writer is still joined");

    // An expired grant closes its viewer, and is refused after.
    let (short, _) = share(&mut owner, "viewer", 2).await;
    let mut c = join(server.addr, &session, &short).await;
    c.until_ready().await;
    assert_eq!(c.until_closed(T).await, (Some(4015), Some("grant_expired".into())));
    let mut late = join(server.addr, &session, &short).await;
    assert_eq!(late.until_closed(T).await, (Some(4015), Some("grant_expired".into())));

    // The session ends: the writer gets the exit.
    owner.send_json(json!({"type": "release"})).await;
    assert_eq!(writer.until_closed(T).await.0, Some(4000));
    no_leftovers(&w).await;
    common::eventually(T, "no viewer counted", || {
        server.metrics.viewers(Role::Viewer) == 0 && server.metrics.viewers(Role::Writer) == 0
    })
    .await;
    server.stop().await;
}

/// Owner echo round trips (30, after 3 to warm up).
async fn echoes(owner: &mut Client, tag: &str) -> Vec<Duration> {
    let mut samples = Vec::new();
    for n in 0..33 {
        let rtt = echo(owner, tag, n, T).await.expect("the owner's echo");
        if n >= 3 {
            samples.push(rtt);
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_does_not_slow_the_owner_and_falls_behind() {
    common::docker().await;
    let w = World::with_prefix("s");
    let mut p = w.policy.clone();
    sharing(&mut p);
    p.server.replay_bytes = 64 << 10;
    // Long enough that the viewer stays stalled (not dropped) while the owner is measured.
    p.server.stall_timeout = Duration::from_secs(60);
    let server = w.serve_with(p).await;
    let mut owner = at_prompt(server.addr).await;
    let session = owner.session.clone().expect("session");

    let alone = echoes(&mut owner, "A").await;

    let (grant, _) = share(&mut owner, "viewer", 600).await;
    let mut viewer = join_small_window(server.addr, &session, &grant).await;
    viewer.until_ready().await;
    // The viewer stops reading. 3 MB of output: the owner takes it all while the viewer's socket is full.
    let bulk = std::time::Instant::now();
    owner.input("head -c 3000000 /dev/zero | tr '\\0' x; echo BULK-$((1+1))\r").await;
    let from = owner.output.len();
    owner.until_output_from(from, "BULK-2\r\n", Duration::from_secs(40)).await;
    let bulk = bulk.elapsed();
    assert!(bulk < Duration::from_secs(40), "the owner's output was held back: {bulk:?}");

    let stalled = echoes(&mut owner, "S").await;
    let (a, s) = (median(&alone), median(&stalled));
    let ratio = s.as_secs_f64() / a.as_secs_f64().max(1e-6);
    eprintln!("owner echo p50: alone {a:?}, with a stalled viewer {s:?} (ratio {ratio:.2}); 3 MB bulk took {bulk:?}");

    // The viewer reads again: it missed what the ring no longer held, and is told (in one or more gaps), or it
    // was dropped as stalled. Either way the rest of its output arrives in order.
    let mut missed = 0;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if String::from_utf8_lossy(&viewer.output[viewer.output.len().saturating_sub(4096)..]).contains("S33\r\n") {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match viewer.next(left).await {
            Some(Event::Json(v)) if v["type"] == "gap" => missed += v["missed"].as_u64().expect("missed"),
            Some(Event::Closed(code, _)) => {
                assert_eq!(code, Some(4008), "dropped as stalled, or told of a gap");
                break;
            }
            None => panic!("the viewer did not catch up within {T:?}; messages {:?}", viewer.messages),
            _ => {}
        }
    }
    if viewer.closed.is_none() {
        // What the socket buffers took while the viewer did not read, it gets; the rest is reported missed.
        let got = viewer.output.len() as u64;
        assert!(missed > 0, "the viewer fell behind the 64 KiB ring and was told");
        assert!(got + missed >= 3_000_000, "every byte is either received or reported missed: {got} + {missed}");
        eprintln!("the stalled viewer received {got} bytes and was told of gaps of {missed} bytes in all");
    }

    owner.send_json(json!({"type": "release"})).await;
    assert_eq!(owner.until_closed(T).await.0, Some(4000));
    no_leftovers(&w).await;
    server.stop().await;
}
