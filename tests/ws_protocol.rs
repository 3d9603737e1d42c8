//! The WebSocket protocol as docs/protocol.md states it, where it does not depend on Docker: a real berth on
//! 127.0.0.1 over the in-memory engine (whose "shell" echoes its input), and a real client (tokio-tungstenite).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::app::Server;
use berth::reconciler::Policy;
use berth::runtime::RuntimeError;
use berth::runtime::fake::FakeRuntime;
use common::World;
use common::client::{Client, Event, connect, connect_with, ready};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const T: Duration = Duration::from_secs(10);

/// A berth over the fake engine, with a policy `tune` adjusts (rate limits off).
async fn serve(w: &World, fake: &FakeRuntime, tune: impl FnOnce(&mut Policy)) -> Server {
    let mut policy = w.policy.clone();
    policy.limits.connections_per_minute = 10_000;
    policy.limits.connection_burst = 10_000;
    tune(&mut policy);
    w.serve_on(fake.clone(), policy).await
}

/// Sends a close frame with `code`; returns the code of the close frame the server answers with, and how long
/// the answer took.
async fn close_with(c: &mut Client, code: u16) -> (Option<u16>, Duration) {
    let sent = Instant::now();
    c.ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: "bye".into() })))
        .await
        .expect("send close");
    loop {
        match c.next(T).await {
            Some(Event::Closed(code, _)) => return (code, sent.elapsed()),
            None => panic!("no answer to a close frame within {T:?}"),
            _ => {}
        }
    }
}

fn closes(server: &Server, code: &str) -> u64 {
    server.metrics.ws_closes(code)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_frame_is_answered_at_once_in_every_state_and_counted_as_clean() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| p.limits.max_sessions = 1).await;

    // Before the hello.
    let mut c = connect(server.addr).await;
    let (code, took) = close_with(&mut c, 1001).await;
    assert_eq!(code, Some(1001), "the reply echoes the client's code");
    assert!(took < Duration::from_secs(2), "answered at once, not after the 5 s linger: {took:?}");

    // After ready: the session stays resumable.
    let mut a = ready(server.addr).await;
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    let (code, took) = close_with(&mut a, 1000).await;
    assert_eq!(code, Some(1000));
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Before ready (waiting in the queue behind the resumed session).
    let mut b = connect(server.addr).await;
    b.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}}))
        .await;
    b.until_ready().await;
    let mut q = connect(server.addr).await;
    q.hello().await;
    q.until_json("queued", T).await;
    let (code, took) = close_with(&mut q, 1000).await;
    assert_eq!(code, Some(1000));
    assert!(took < Duration::from_secs(2), "{took:?}");

    eventually("clean closes counted by their code", || closes(&server, "1000") == 2 && closes(&server, "1001") == 1)
        .await;
    assert_eq!(closes(&server, "1006"), 0, "a clean close is not an abnormal one");
    server.stop().await;
}

/// A capture of the WARN and ERROR events berth's WebSocket layer logs.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let m = event.metadata();
        if *m.level() <= tracing::Level::WARN && m.target().starts_with("berth::ws") {
            self.0.lock().expect("lock").push(format!("{} {:?}", m.target(), event));
        }
    }
}

// One thread, so that every task of the server logs to this test's subscriber.
#[tokio::test(start_paused = true)]
async fn a_client_reset_is_counted_and_not_logged_as_a_warning() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    for _ in 0..3 {
        let c = ready(server.addr).await;
        c.drop_abruptly();
    }
    eventually("three resets counted", || server.metrics.ws_client_resets() == 3).await;
    eventually("three abnormal closes", || closes(&server, "1006") == 3).await;
    assert!(warnings.0.lock().expect("lock").is_empty(), "{:?}", warnings.0.lock().expect("lock"));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn several_forwarded_for_lines_combine_and_the_proxy_appended_address_is_the_client() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| {
        p.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        p.limits.max_per_ip = 1;
    })
    .await;
    async fn with_lines(addr: std::net::SocketAddr, lines: &[&str]) -> Client {
        let mut req = format!("ws://{addr}/ws").into_client_request().expect("request");
        req.headers_mut().insert("sec-websocket-protocol", "berth.v1".parse().expect("header"));
        for l in lines {
            req.headers_mut().append("x-forwarded-for", l.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("connect");
        Client { ws, output: Vec::new(), messages: Vec::new(), session: None, secret: None, closed: None }
    }
    // The client wrote the first line itself; the proxy appended the second, with the address it saw.
    let mut a = with_lines(server.addr, &["203.0.113.66", "198.51.100.30"]).await;
    a.hello().await;
    a.until_ready().await;
    // So 198.51.100.30 has its one session, and 203.0.113.66 none.
    let mut b = with_lines(server.addr, &["198.51.100.30"]).await;
    b.hello().await;
    let (code, err) = b.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4029), Some("per_ip")), "{:?}", b.messages);
    let mut c = with_lines(server.addr, &["203.0.113.66"]).await;
    c.hello().await;
    c.until_ready().await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_create_failure_reaches_the_client_as_a_code_and_an_error_id_without_the_engine_text() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    fake.fail_next(
        "create",
        RuntimeError::NotFound("No such image: registry.internal.example:5000/team/secret-image:latest".into()),
    );
    let mut c = connect(server.addr).await;
    c.hello().await;
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4010), Some("create_failed")));
    let all = serde_json::to_string(&c.messages).expect("json");
    assert!(!all.contains("secret-image") && !all.contains("registry.internal"), "{all}");
    let e = c.messages.iter().find(|m| m["type"] == "error").expect("error");
    assert!(e["error_id"].as_str().is_some_and(|id| id.len() == 16), "{e}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_session_message_comes_before_the_env_warning() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    let mut c = connect(server.addr).await;
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "env": {"LD_PRELOAD": "x"}})).await;
    c.until_ready().await;
    let types: Vec<&str> = c.messages.iter().filter_map(|m| m["type"].as_str()).collect();
    let session = types.iter().position(|t| *t == "session").expect("session");
    let warning = c.messages.iter().position(|m| m["code"] == "env_ignored").expect("env_ignored");
    assert!(session < warning, "{types:?}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queued_is_sent_only_when_the_position_changes() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| p.limits.max_sessions = 1).await;
    let mut a = ready(server.addr).await;
    let mut q = connect(server.addr).await;
    q.hello().await;
    q.until_json("queued", T).await;
    // Input and a refused resize while waiting wake the connection but do not move it.
    q.input("early").await;
    q.send_json(json!({"type": "resize", "cols": 0, "rows": 24})).await;
    q.until_json("error", T).await;
    q.input("more").await;
    a.send_json(json!({"type": "release"})).await;
    q.until_ready().await;
    let queued: Vec<&Value> = q.messages.iter().filter(|m| m["type"] == "queued").collect();
    assert_eq!(queued.len(), 1, "{:?}", q.messages);
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_resume_from_zero_on_a_wrapped_ring_misses_nothing_and_an_offset_past_the_end_is_said() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| p.server.replay_bytes = 1024).await;
    let mut a = ready(server.addr).await;
    for i in 0..8 {
        a.input(&format!("{i}{}", "x".repeat(511))).await;
    }
    a.until_output_from(3500, "7xxx", T).await;
    while a.output.len() < 4096 {
        assert!(a.next(T).await.is_some(), "echo of 4096 bytes");
    }
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    close_with(&mut a, 1000).await;

    let resume = |offset: u64| json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret, "offset": offset}});
    let mut b = connect_with(server.addr, &format!("?session={session}"), &[]).await.expect("connect");
    b.send_json(resume(0)).await;
    let r = b.until_ready().await;
    assert_eq!(r["missed"], 0, "offset 0 asks for what the ring holds: {r}");
    assert_eq!(r["offset"], 4096 - 1024, "{r}");
    close_with(&mut b, 1000).await;

    let mut c = connect_with(server.addr, &format!("?session={session}"), &[]).await.expect("connect");
    c.send_json(resume(1 << 40)).await;
    let r = c.until_ready().await;
    assert_eq!((r["offset"].as_u64(), r["missed"].as_u64()), (Some(4096), Some(0)), "{r}");
    let warn = c.until_json("warning", T).await;
    assert_eq!(warn["code"], "offset_past_end", "{warn}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_idle_warning_comes_when_the_warning_time_is_left_and_says_how_much() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| {
        p.sessions.idle_timeout = Duration::from_secs(4);
        p.sessions.idle_warning = Duration::from_secs(2);
    })
    .await;
    let mut c = ready(server.addr).await;
    // Activity well away from whole seconds after the attach, where a once-a-second check would land late.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.input("poke").await;
    c.until_output("poke").await;
    let echoed = Instant::now();
    let warn = c.until_json("warning", T).await;
    let after = echoed.elapsed();
    assert_eq!((warn["code"].as_str(), warn["seconds"].as_u64()), (Some("idle"), Some(2)), "{warn}");
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_millis(2500),
        "due 2 s after the last output, came after {after:?}"
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hello_without_a_size_gets_one_and_a_malformed_resize_is_not_fatal() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    let mut c = connect(server.addr).await;
    c.send_json(json!({"type": "hello"})).await;
    c.until_ready().await;
    c.send_json(json!({"type": "resize", "cols": 100})).await;
    let e = c.until_json("error", T).await;
    assert_eq!(e["code"], "bad_resize");
    c.input("still-here").await;
    c.until_output("still-here").await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_session_header_is_not_sent_for_a_session_being_removed() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    let header = |id: &str| {
        let addr = server.addr;
        let id = id.to_owned();
        async move {
            let mut req = format!("ws://{addr}/ws?session={id}").into_client_request().expect("request");
            req.headers_mut().insert("sec-websocket-protocol", "berth.v1".parse().expect("header"));
            let (_ws, resp) = tokio_tungstenite::connect_async(req).await.expect("connect");
            resp.headers().get("berth-session").and_then(|v| v.to_str().ok()).map(str::to_owned)
        }
    };
    let mut c = ready(server.addr).await;
    let id = c.session.clone().expect("session");
    assert_eq!(header(&id).await.as_deref(), Some(id.as_str()), "a live session is announced");
    // The container resists removal for a while: the session is ending but still here.
    for _ in 0..3 {
        fake.fail_next("stop", RuntimeError::Other("slow engine".into()));
        fake.fail_next("remove", RuntimeError::Other("slow engine".into()));
    }
    c.send_json(json!({"type": "release"})).await;
    c.until_json("exit", T).await;
    assert!(server.terminals.get(&id.parse().expect("id")).is_some(), "the session is still being removed");
    assert_eq!(header(&id).await, None, "an ending session is not announced");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_second_connection_takes_the_session_over_and_the_first_gets_4001() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    let mut a = ready(server.addr).await;
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    let mut b = connect(server.addr).await;
    b.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}}))
        .await;
    b.until_ready().await;
    let (code, err) = a.until_closed(T).await;
    assert_eq!(code, Some(4001));
    assert_eq!(err.as_deref(), Some("taken_over"));
    b.input("still-4").await;
    b.until_output("still-4").await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn each_bad_input_gets_its_documented_code_and_other_sessions_keep_working() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |_| {}).await;
    let mut good = ready(server.addr).await;

    async fn expect(
        addr: std::net::SocketAddr,
        send: Vec<tokio_tungstenite::tungstenite::Message>,
        code: u16,
        err: &str,
    ) {
        let mut c = connect(addr).await;
        for m in send {
            let _ = futures::SinkExt::send(&mut c.ws, m).await;
        }
        let (got, got_err) = c.until_closed(Duration::from_secs(15)).await;
        assert_eq!((got, got_err.as_deref()), (Some(code), Some(err)), "for {err}");
    }
    use tokio_tungstenite::tungstenite::Message;
    let hello = || Message::text(json!({"type": "hello", "cols": 80, "rows": 24}).to_string());
    expect(server.addr, vec![Message::text("{not json")], 4005, "bad_json").await;
    expect(server.addr, vec![Message::text(r#"{"type":"launch"}"#)], 4005, "unknown_type").await;
    expect(server.addr, vec![Message::text(r#"{"type":"resize","cols":80,"rows":24}"#)], 4002, "missing_hello").await;
    expect(
        server.addr,
        vec![Message::text(
            json!({"type":"hello","cols":80,"rows":24,"resume":{"session":"../etc","secret":"x"}}).to_string(),
        )],
        4005,
        "bad_session_id",
    )
    .await;
    expect(
        server.addr,
        vec![Message::text(
            json!({"type":"hello","cols":80,"rows":24,"resume":{"session":"0123456789abcdef0123456789abcdef","secret":"x"}})
                .to_string(),
        )],
        4004,
        "unknown_session",
    )
    .await;
    expect(
        server.addr,
        vec![Message::text(json!({"type":"hello","cols":0,"rows":24}).to_string())],
        4005,
        "bad_resize",
    )
    .await;
    expect(server.addr, vec![hello(), Message::binary(vec![b'x'; 100 * 1024])], 1009, "message_too_big").await;

    // A resize out of range on a live session is refused without closing it.
    good.send_json(json!({"type": "resize", "cols": 5000, "rows": 24})).await;
    let e = good.until_json("error", T).await;
    assert_eq!(e["code"], "bad_resize");
    good.input("alive-9").await;
    good.until_output("alive-9").await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_hello_times_out_with_4002() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, |p| p.server.hello_timeout = Duration::from_millis(500)).await;
    let mut c = connect(server.addr).await;
    let (code, err) = c.until_closed(Duration::from_secs(5)).await;
    assert_eq!((code, err.as_deref()), (Some(4002), Some("hello_timeout")));
    server.stop().await;
}
