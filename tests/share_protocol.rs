//! Shared sessions as docs/protocol.md ("Shared sessions") states them, where it does not depend on Docker: a
//! real berth on 127.0.0.1 over the in-memory engine (whose "shell" echoes its input), an owner and joined
//! clients (tokio-tungstenite), on tokio's paused clock.

mod common;

use std::time::Duration;

use berth::app::Server;
use berth::controller::Role;
use berth::reconciler::Policy;
use berth::runtime::fake::FakeRuntime;
use common::World;
use common::client::{Client, connect, connect_with, ready};
use serde_json::{Value, json};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(10);

async fn serve(w: &World, fake: &FakeRuntime, tune: impl FnOnce(&mut Policy)) -> Server {
    let mut policy = w.policy.clone();
    policy.limits.connections_per_minute = 10_000;
    policy.limits.connection_burst = 10_000;
    tune(&mut policy);
    w.serve_on(fake.clone(), policy).await
}

/// Sharing on for the default profile, anonymous owners included.
fn sharing(p: &mut Policy) {
    let name = p.default_profile.clone();
    let profile = p.profiles.get_mut(&name).expect("default profile");
    profile.sharing.enabled = true;
    profile.sharing.anonymous = true;
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The owner asks for a grant; returns the `shared` message.
async fn share(owner: &mut Client, role: &str, extra: Value) -> Value {
    let mut msg = json!({"type": "share", "role": role});
    if let (Some(m), Some(e)) = (msg.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    owner.send_json(msg).await;
    owner.until_json("shared", T).await
}

/// Connects as the page does with a share link, and sends a join hello.
async fn join(server: &Server, session: &str, grant: &str) -> Client {
    let mut c = connect_with(server.addr, &format!("?session={session}"), &[]).await.expect("connect");
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "join": {"session": session, "grant": grant}})).await;
    c
}

/// Reads until the socket closes; returns the close code and the last error code.
async fn closed(c: &mut Client) -> (Option<u16>, Option<String>) {
    c.until_closed(T).await
}

#[tokio::test(start_paused = true)]
async fn viewers_see_the_output_and_their_input_does_nothing_while_a_writer_types() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, sharing).await;
    let mut owner = ready(server.addr).await;
    let session = owner.session.clone().expect("session");
    let secret = owner.secret.clone().expect("secret");

    let v = share(&mut owner, "viewer", json!({"ttl_s": 600, "label": "alice"})).await;
    let grant = v["grant"].as_str().expect("grant").to_owned();
    assert_ne!(grant, secret, "a grant is not the resume secret");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["url"], format!("/?session={session}#grant={grant}"));
    let grant_id = v["grant_id"].as_str().expect("grant_id").to_owned();

    let mut a = join(&server, &session, &grant).await;
    let joined = a.until_json("joined", T).await;
    assert_eq!((joined["role"].as_str(), joined["grant_id"].as_str()), (Some("viewer"), Some(grant_id.as_str())));
    a.until_ready().await;
    let mut b = join(&server, &session, &grant).await;
    b.until_ready().await;
    let p = loop {
        let p = owner.until_json("presence", T).await;
        if p["count"] == 2 {
            break p;
        }
    };
    assert_eq!(p["viewers"][0]["identity"], "alice", "the grant's label: {p}");
    assert_eq!(p["viewers"][0]["role"], "viewer");
    assert_eq!(server.metrics.viewers(Role::Viewer), 2);

    // The owner types: everyone sees it; the owner is not taken over.
    owner.input("echo owner-typed\r").await;
    owner.until_output("owner-typed").await;
    a.until_output("owner-typed").await;
    b.until_output("owner-typed").await;

    // A viewer types: nothing reaches the shell, and it is told once.
    a.input("viewer-typed\r").await;
    let warn = a.until_json("warning", T).await;
    assert_eq!(warn["code"], "read_only");
    a.send_json(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    owner.input("echo marker\r").await;
    a.until_output("marker").await;
    assert!(!String::from_utf8_lossy(&owner.output).contains("viewer-typed"), "a viewer's input never arrives");
    assert_eq!(a.messages.iter().filter(|m| m["code"] == "read_only").count(), 1, "told once");
    // Only the owner shares or releases.
    a.send_json(json!({"type": "release"})).await;
    assert_eq!(a.until_json("error", T).await["code"], "share_refused");

    // A writer's input arrives.
    let wr = share(&mut owner, "writer", json!({})).await;
    let mut writer = join(&server, &session, wr["grant"].as_str().expect("grant")).await;
    writer.until_ready().await;
    writer.input("echo writer-typed\r").await;
    owner.until_output("writer-typed").await;
    b.until_output("writer-typed").await;
    assert_eq!(server.metrics.viewers(Role::Writer), 1);

    // Revoking closes the grant's connections with 4014; the writer stays.
    owner.send_json(json!({"type": "revoke", "grant_id": grant_id})).await;
    assert_eq!(owner.until_json("revoked", T).await["grant_id"], grant_id.as_str());
    assert_eq!(closed(&mut a).await, (Some(4014), Some("grant_revoked".into())));
    assert_eq!(closed(&mut b).await, (Some(4014), Some("grant_revoked".into())));
    eventually("viewers gone from the metric", || server.metrics.viewers(Role::Viewer) == 0).await;
    let mut again = join(&server, &session, &grant).await;
    assert_eq!(closed(&mut again).await, (Some(4016), Some("grant_refused".into())), "a revoked grant");
    owner.send_json(json!({"type": "revoke", "grant_id": grant_id})).await;
    assert_eq!(owner.until_json("error", T).await["code"], "unknown_grant");

    // The owner ends the session: the writer gets the exit too.
    owner.send_json(json!({"type": "release"})).await;
    let (code, _) = closed(&mut writer).await;
    assert_eq!(code, Some(4000));
    assert!(writer.messages.iter().any(|m| m["type"] == "exit"), "{:?}", writer.messages);
    eventually("writers gone from the metric", || server.metrics.viewers(Role::Writer) == 0).await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_grant_closes_its_viewer_and_is_refused_after() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, sharing).await;
    let mut owner = ready(server.addr).await;
    let session = owner.session.clone().expect("session");
    let v = share(&mut owner, "viewer", json!({"ttl_s": 5})).await;
    let grant = v["grant"].as_str().expect("grant").to_owned();
    let mut a = join(&server, &session, &grant).await;
    a.until_ready().await;
    let started = Instant::now();
    assert_eq!(closed(&mut a).await, (Some(4015), Some("grant_expired".into())));
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(6), "closed at expiry: {took:?}");
    let mut late = join(&server, &session, &grant).await;
    assert_eq!(closed(&mut late).await, (Some(4015), Some("grant_expired".into())));
    // A wrong grant, and an unknown session, get one answer.
    let mut wrong = join(&server, &session, "0000").await;
    assert_eq!(closed(&mut wrong).await, (Some(4016), Some("grant_refused".into())));
    let mut other = join(&server, "0123456789abcdef0123456789abcdef", &grant).await;
    assert_eq!(closed(&mut other).await, (Some(4016), Some("grant_refused".into())));
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_policy_decides_who_shares_for_how_long_and_how_many_join() {
    let w = World::new();
    let fake = FakeRuntime::default();
    // Off by default.
    let server = serve(&w, &fake, |_| {}).await;
    let mut owner = ready(server.addr).await;
    owner.send_json(json!({"type": "share", "role": "viewer"})).await;
    let e = owner.until_json("error", T).await;
    assert_eq!(e["code"], "share_refused", "{e}");
    owner.send_json(json!({"type": "share", "role": "owner"})).await;
    assert_eq!(owner.until_json("error", T).await["code"], "bad_share");
    server.stop().await;

    // On, but not for anonymous owners.
    let server = serve(&w, &fake, |p| {
        sharing(p);
        let name = p.default_profile.clone();
        p.profiles.get_mut(&name).expect("profile").sharing.anonymous = false;
    })
    .await;
    let mut owner = ready(server.addr).await;
    owner.send_json(json!({"type": "share", "role": "viewer"})).await;
    let e = owner.until_json("error", T).await;
    assert_eq!(e["code"], "share_refused");
    assert!(e["message"].as_str().unwrap_or_default().contains("anonymous"), "{e}");
    server.stop().await;

    // On, one viewer at most, grants of at most 2 minutes.
    let server = serve(&w, &fake, |p| {
        sharing(p);
        let name = p.default_profile.clone();
        let s = &mut p.profiles.get_mut(&name).expect("profile").sharing;
        s.max_viewers = 1;
        s.max_grant_ttl = Duration::from_secs(120);
    })
    .await;
    let mut owner = ready(server.addr).await;
    let session = owner.session.clone().expect("session");
    let now_s = berth::clock::unix_secs();
    let v = share(&mut owner, "viewer", json!({"ttl_s": 86_400})).await;
    let expires = v["expires_at"].as_u64().expect("expires_at");
    assert!(expires <= now_s + 121 && expires >= now_s + 119, "cut to the maximum: {expires} vs {now_s}");
    let grant = v["grant"].as_str().expect("grant").to_owned();
    let mut a = join(&server, &session, &grant).await;
    a.until_ready().await;
    let mut b = join(&server, &session, &grant).await;
    assert_eq!(closed(&mut b).await, (Some(4029), Some("viewers_full".into())));
    // A viewer that leaves makes room.
    drop(a);
    eventually("the viewer left", || server.metrics.viewers(Role::Viewer) == 0).await;
    let mut c = join(&server, &session, &grant).await;
    c.until_ready().await;
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_join_hello_is_checked_like_any_hello() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, sharing).await;
    let mut c = connect(server.addr).await;
    c.send_json(json!({"type": "hello", "join": {"session": "nope", "grant": "x"}})).await;
    assert_eq!(closed(&mut c).await, (Some(4005), Some("bad_session_id".into())));
    let mut c = connect(server.addr).await;
    c.send_json(json!({"type": "hello", "join": {"session": "0123456789abcdef0123456789abcdef", "grant": "x"},
        "resume": {"session": "0123456789abcdef0123456789abcdef", "secret": "y"}}))
        .await;
    assert_eq!(closed(&mut c).await, (Some(4005), Some("bad_json".into())));
    server.stop().await;
}

/// Joined before the shell runs: a writer's input is kept and reaches the shell after `ready`, as the owner's
/// does; a viewer that types is told `read_only` after its `ready`, where the protocol puts warnings.
#[tokio::test(start_paused = true)]
async fn a_writer_typing_before_the_shell_runs_is_heard_and_a_viewer_is_told_after_ready() {
    let w = World::new();
    let fake = FakeRuntime::default();
    let server = serve(&w, &fake, sharing).await;
    // The first create fails (retried after the backoff): the session stays unstarted while the others join.
    fake.fail_next("create", berth::runtime::RuntimeError::Unreachable("held for the test".into()));
    let mut owner = connect(server.addr).await;
    owner.send_json(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    owner.until_json("session", T).await;
    let session = owner.session.clone().expect("session");
    let wr = share(&mut owner, "writer", json!({})).await;
    let vw = share(&mut owner, "viewer", json!({})).await;
    assert!(owner.messages.iter().all(|m| m["type"] != "ready"), "shared before the shell runs");

    let mut writer = join(&server, &session, wr["grant"].as_str().expect("grant")).await;
    writer.until_json("joined", T).await;
    writer.input("echo early-writer\r").await;
    let mut viewer = join(&server, &session, vw["grant"].as_str().expect("grant")).await;
    viewer.until_json("joined", T).await;
    viewer.input("early-viewer\r").await;

    writer.until_ready().await;
    owner.until_ready().await;
    owner.until_output("early-writer").await;
    viewer.until_ready().await;
    let warn = viewer.until_json("warning", T).await;
    assert_eq!(warn["code"], "read_only");
    let at = |c: &Client, what: &str| c.messages.iter().position(|m| m["type"] == what || m["code"] == what);
    assert!(at(&viewer, "ready") < at(&viewer, "read_only"), "the warning comes after ready: {:?}", viewer.messages);
    owner.input("echo marker\r").await;
    owner.until_output("marker").await;
    assert!(!String::from_utf8_lossy(&owner.output).contains("early-viewer"), "a viewer's input never arrives");
    assert_eq!(fake.calls("create"), 2, "the first create failed and was retried");
    owner.send_json(json!({"type": "release"})).await;
    assert_eq!(closed(&mut writer).await.0, Some(4000));
    server.stop().await;
}
