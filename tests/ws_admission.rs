//! Who gets in, end to end: client addresses behind (un)trusted proxies, per-IP connection rates and session
//! caps, the admission queue, resumes at capacity, tokens, malformed frames and origins. A real berth on
//! 127.0.0.1 and a real client (tokio-tungstenite); none of this depends on Docker, so the berth runs on the
//! in-memory engine (whose "shell" echoes its input) on a paused clock, except the resume at capacity, which
//! checks that the resumed shell is the same one and runs on real Docker.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use berth::reconciler::policy::{JwtAlgorithm, JwtPolicy, SecretString, Sha256Digest, StaticToken};
use berth::reconciler::{Policy, SessionKind};
use berth::runtime::fake::FakeRuntime;
use common::World;
use common::client::{Client, connect, connect_with, ready, ready_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::http::StatusCode;

const T: Duration = Duration::from_secs(20);

/// A berth over the in-memory engine.
async fn serve_fake(w: &World, policy: Policy) -> (berth::app::Server, FakeRuntime) {
    let fake = FakeRuntime::default();
    (w.serve_on(fake.clone(), policy).await, fake)
}

fn hello_with(extra: Value) -> Value {
    let mut h = json!({"type": "hello", "cols": 80, "rows": 24});
    if let (Some(h), Some(extra)) = (h.as_object_mut(), extra.as_object()) {
        h.extend(extra.clone());
    }
    h
}

/// Says hello and expects the connection to be refused with `code` and close `close`; returns the error object.
async fn refused(c: &mut Client, hello: Value, close: u16, code: &str) -> Value {
    c.send_json(hello).await;
    let (got, err) = c.until_closed(T).await;
    assert_eq!((got, err.as_deref()), (Some(close), Some(code)), "messages: {:?}", c.messages);
    c.messages.iter().rev().find(|m| m["type"] == "error").cloned().expect("an error message")
}

/// The HTTP response of an upgrade the server refused before switching protocols.
async fn http_refusal(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match connect_with(addr, "", headers).await {
        Err(tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, but the upgrade was accepted"),
    }
}

fn retry_after(err: &Value) -> u64 {
    err["retry_after"].as_u64().filter(|s| *s >= 1).unwrap_or_else(|| panic!("retry_after in {err}"))
}

/// Polls the controller until `f` holds for its session list, or panics after `limit`.
async fn until_sessions(
    server: &berth::app::Server,
    limit: Duration,
    what: &str,
    f: impl Fn(&[berth::controller::SessionInfo]) -> bool,
) {
    let start = Instant::now();
    loop {
        let list = server.handle.list().await;
        if f(&list) {
            return;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}; sessions: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");

    // The peer (127.0.0.1) is not a trusted proxy: the header is anyone's to write, so both connections are
    // 127.0.0.1, and the second one is over the per-IP cap of 1.
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.max_per_ip = 1;
    let (server, _fake) = serve_fake(&w, p.clone()).await;
    let _a = ready_with(server.addr, &[("x-forwarded-for", "203.0.113.1")]).await;
    let mut b = connect_with(server.addr, "", &[("x-forwarded-for", "203.0.113.2")]).await.expect("connect");
    let err = refused(&mut b, hello_with(json!({})), 4029, "per_ip").await;
    retry_after(&err);
    let list = server.handle.list().await;
    assert_eq!(list.iter().map(|s| s.client_ip).collect::<Vec<_>>(), vec![Some(loopback)], "{list:?}");
    server.stop().await;
    drop(w);

    // Behind a trusted proxy the header names the client: two clients, one session each.
    let w = World::new();
    p = w.policy.clone();
    p.limits.max_per_ip = 1;
    p.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("network")];
    let (server, _fake) = serve_fake(&w, p).await;
    let _a = ready_with(server.addr, &[("x-forwarded-for", "203.0.113.1")]).await;
    let _b = ready_with(server.addr, &[("x-forwarded-for", "203.0.113.2")]).await;
    let ips: BTreeSet<Option<IpAddr>> = server.handle.list().await.iter().map(|s| s.client_ip).collect();
    let want: BTreeSet<Option<IpAddr>> =
        ["203.0.113.1", "203.0.113.2"].iter().map(|s| Some(s.parse().expect("ip"))).collect();
    assert_eq!(ips, want);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn per_ip_connection_rate_is_limited_with_429_and_retry_after() {
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.connections_per_minute = 3;
    p.limits.connection_burst = 3;
    // The default exempts loopback (limits.rate_exempt); a public berth exempts nothing.
    p.limits.rate_exempt = vec![];
    let (server, fake) = serve_fake(&w, p).await;
    // Three upgrades use the burst (no hello needed: the limit applies before the upgrade)...
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(server.addr).await);
    }
    // ...and the fourth from the same address is refused, loopback included.
    let resp = http_refusal(server.addr, &[]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds");
    // 3 per minute: the next token arrives 20 s after the burst.
    assert!((1..=20).contains(&secs), "Retry-After: {secs}");
    assert!(fake.count(None) == 0, "a refused upgrade creates nothing");
    drop(held);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_per_ip_session_cap_holds_and_frees_on_release() {
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.max_per_ip = 2;
    let (server, _fake) = serve_fake(&w, p).await;
    let mut a = ready(server.addr).await;
    let _b = ready(server.addr).await;

    let mut c = connect(server.addr).await;
    let err = refused(&mut c, hello_with(json!({})), 4029, "per_ip").await;
    retry_after(&err);
    assert_eq!(server.handle.list().await.len(), 2);

    a.send_json(json!({"type": "release"})).await;
    let exit = a.until_json("exit", T).await;
    assert_eq!(exit["reason"], "released");
    assert_eq!(a.until_closed(T).await.0, Some(4000));

    // The released session no longer counts, even before its container is gone.
    let mut d = ready(server.addr).await;
    d.input("in-5").await;
    d.until_output("in-5").await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn at_capacity_clients_queue_with_their_position_then_get_in() {
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.max_sessions = 1;
    p.limits.queue_wait = Duration::from_secs(20);
    let (server, _fake) = serve_fake(&w, p).await;
    let mut a = ready(server.addr).await;

    let mut b = connect(server.addr).await;
    b.hello().await;
    assert_eq!(b.until_json("queued", T).await["position"], 1);
    let mut c = connect(server.addr).await;
    c.hello().await;
    assert_eq!(c.until_json("queued", T).await["position"], 2);

    a.send_json(json!({"type": "release"})).await;
    assert_eq!(a.until_json("exit", T).await["reason"], "released");
    // b is admitted, and c moves up.
    let s = b.until_json("session", T).await;
    assert_eq!(s["resumed"], false);
    b.until_ready().await;
    assert_eq!(c.until_json("queued", T).await["position"], 1);
    assert!(!c.messages.iter().any(|m| m["type"] == "session"), "c is still waiting: {:?}", c.messages);
    b.input("got-2-in").await;
    b.until_output("got-2-in").await;
    drop(c);
    server.stop().await;
    drop(w);

    // Without a queue, a client at capacity is refused at once, with a retry hint.
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.max_sessions = 1;
    p.limits.queue_wait = Duration::ZERO;
    let (server, _fake) = serve_fake(&w, p).await;
    let _a = ready(server.addr).await;
    let mut b = connect(server.addr).await;
    let started = Instant::now();
    let err = refused(&mut b, hello_with(json!({})), 4029, "full").await;
    retry_after(&err);
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, not after a wait");
    assert!(!b.messages.iter().any(|m| m["type"] == "queued"), "{:?}", b.messages);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_at_capacity_is_accepted() {
    common::docker().await;
    let w = World::new();
    let mut p = w.policy.clone();
    p.limits.max_sessions = 1;
    p.limits.queue_wait = Duration::ZERO;
    let server = w.serve_with(p).await;
    let mut a = ready(server.addr).await;
    a.input("export MARK=kept$((5*5)); echo set$((1+1))\r").await;
    a.until_output("set2").await;
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    a.drop_abruptly();
    until_sessions(&server, T, "the dropped client's session detached", |l| l.len() == 1 && !l[0].attached).await;

    // The detached session still holds the only slot.
    let mut b = connect(server.addr).await;
    refused(&mut b, hello_with(json!({})), 4029, "full").await;

    // Its owner gets it back anyway: a resume needs no new slot.
    let mut c = connect_with(server.addr, &format!("?session={session}"), &[]).await.expect("connect");
    c.send_json(hello_with(json!({"resume": {"session": session, "secret": secret}}))).await;
    assert_eq!(c.until_json("session", T).await["resumed"], true);
    c.until_ready().await;
    c.input("echo $MARK\r").await;
    c.until_output("kept25").await;
    assert_eq!(server.handle.list().await.len(), 1);
    server.stop().await;
}

const JWT_KEY: &str = "berth-test-hs256-key-of-at-least-32-bytes";

fn jwt(key: &str, exp_from_now: i64) -> String {
    let now =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs())
            .expect("time");
    let claims = json!({"sub": "alice", "exp": now + exp_from_now});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key.as_bytes()))
        .expect("encode")
}

fn token_policy(w: &World) -> Policy {
    let mut p = w.policy.clone();
    p.auth.anonymous = false;
    p.auth.jwt = Some(JwtPolicy {
        algorithm: JwtAlgorithm::Hs256,
        key: SecretString(JWT_KEY.into()),
        issuer: None,
        audience: None,
        profiles_claim: "profiles".into(),
        leeway: Duration::from_secs(30),
    });
    p.auth.static_tokens =
        vec![StaticToken { name: "ci".into(), sha256: Sha256Digest::of(b"letmein"), profiles: vec![] }];
    p
}

#[tokio::test(start_paused = true)]
async fn a_jwt_with_a_bad_signature_is_refused() {
    let w = World::new();
    let (server, _fake) = serve_fake(&w, token_policy(&w)).await;

    let refusals = [
        ("a jwt signed with another key", json!({"token": jwt("another-key-that-is-also-32-bytes-long", 600)})),
        ("an expired jwt", json!({"token": jwt(JWT_KEY, -3600)})),
        ("no token", json!({})),
        ("a wrong static token", json!({"token": "letmeout"})),
    ];
    for (what, extra) in refusals {
        let mut c = connect(server.addr).await;
        let err = refused(&mut c, hello_with(extra), 4003, "unauthorized").await;
        assert!(c.session.is_none(), "{what}: no session");
        eprintln!("{what}: {}", err["message"]);
    }
    assert!(server.handle.list().await.is_empty(), "refused clients leave no session");

    let mut good = connect(server.addr).await;
    good.send_json(hello_with(json!({"token": jwt(JWT_KEY, 600)}))).await;
    good.until_ready().await;
    let mut st = connect(server.addr).await;
    st.send_json(hello_with(json!({"token": "letmein"}))).await;
    st.until_ready().await;
    st.input("static-8").await;
    st.until_output("static-8").await;

    let list = server.handle.list().await;
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|s| s.kind == SessionKind::Authenticated), "{list:?}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_text_frame_that_is_not_utf8_is_refused_with_4005() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let not_utf8 =
        || tungstenite::Message::Frame(Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true));

    let w = World::new();
    let (server, _fake) = serve_fake(&w, w.policy.clone()).await;
    let mut good = ready(server.addr).await;

    // As the first message...
    let mut c = connect(server.addr).await;
    futures::SinkExt::send(&mut c.ws, not_utf8()).await.expect("send");
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4005), Some("not_utf8")), "{:?}", c.messages);

    // ...and on a live session, which stays resumable.
    let mut d = ready(server.addr).await;
    let (session, secret) = (d.session.clone().expect("session"), d.secret.clone().expect("secret"));
    futures::SinkExt::send(&mut d.ws, not_utf8()).await.expect("send");
    let (code, err) = d.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4005), Some("not_utf8")), "{:?}", d.messages);
    let mut e = connect(server.addr).await;
    e.send_json(hello_with(json!({"resume": {"session": session, "secret": secret}}))).await;
    e.until_ready().await;

    good.input("fine-8").await;
    good.until_output("fine-8").await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_origin_outside_the_allowlist_is_refused_with_403() {
    let w = World::new();
    assert!(w.policy.server.allowed_origins.is_empty(), "the default is same-host only");
    let (server, fake) = serve_fake(&w, w.policy.clone()).await;
    for evil in ["http://evil.example", "http://127.0.0.1:1", "null"] {
        let resp = http_refusal(server.addr, &[("origin", evil)]).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "Origin: {evil}");
    }
    // The page's own origin (the Host the client connects to) is allowed.
    let own = format!("http://127.0.0.1:{}", server.addr.port());
    let _c = ready_with(server.addr, &[("origin", &own)]).await;
    assert!(fake.count(None) == 1, "only the accepted client got a container");
    server.stop().await;
}
