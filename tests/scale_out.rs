//! Scale-out, shared nothing: two Docker engines (the machine's and a private one from
//! `scripts/private-dockerd.sh`), one berth binary on each, behind a real HAProxy on loopback with the
//! stickiness of `manifests/lb/haproxy.cfg`. Every reconnect, from a client without cookies, reaches the host
//! that holds its session; a session id a host does not know gets `unknown_session` (4004).

mod common;

use std::time::Duration;

use common::World;
use common::client::{connect, connect_with, ready, resume_until_ready};
use common::engine::PrivateEngine;
use common::lb::{Haproxy, free_port};
use common::process::{Berth, TempDir, write_policy};
use serde_json::json;

const N: usize = 12;
const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_behind_haproxy_route_every_reconnect_to_the_host_holding_the_session() {
    common::docker().await;
    let engine = PrivateEngine::start_new();
    let one = World::with_prefix("h");
    let mut two = World::with_prefix("h");
    two.host = Some(engine.host());
    common::docker_at(two.host.as_deref()).await;
    let edits = [
        ("limits.max_per_ip", "200"),
        ("limits.connections_per_minute", "10000"),
        ("limits.connection_burst", "1000"),
        ("server.trusted_proxies", "[127.0.0.1]"),
    ];
    let (d1, d2) = (TempDir::new("host-one"), TempDir::new("host-two"));
    let (p1, p2) = (write_policy(d1.path(), &one, &edits), write_policy(d2.path(), &two, &edits));
    let (l1, l2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut b1 = Berth::spawn_with(&p1, one.instance.as_str(), d1.path(), &l1, None);
    let mut b2 = Berth::spawn_with(&p2, two.instance.as_str(), d2.path(), &l2, two.host.as_deref());
    b1.wait_ready(T).await;
    b2.wait_ready(T).await;
    let lb_dir = TempDir::new("haproxy");
    let lb = Haproxy::start(lb_dir.path(), &[("one", b1.addr), ("two", b2.addr)]).await;

    // New sessions through the balancer, each marking its shell.
    let mut ids = Vec::new();
    for i in 0..N {
        let mut c = ready(lb.addr).await;
        c.input(&format!("export MARK=m{i}\r")).await;
        c.input("echo \"set:$MARK\"\r").await;
        c.until_output_from(0, &format!("set:m{i}"), T).await;
        ids.push((c.session.clone().expect("id"), c.secret.clone().expect("secret")));
        c.drop_abruptly();
    }
    let (on_one, on_two) = (one.containers(Some("running")).len(), two.containers(Some("running")).len());
    eprintln!("{on_one} sessions on engine one, {on_two} on engine two");
    assert_eq!(on_one + on_two, N);
    assert!(on_one > 0 && on_two > 0, "the balancer used both hosts");

    // Every reconnect (a new client: no cookie, only the id in the URL) reaches its shell on its host.
    for (i, (session, secret)) in ids.iter().enumerate() {
        let (mut c, attempts) = resume_until_ready(lb.addr, session, secret, T).await;
        assert_eq!(attempts, 1, "the first attempt reached the right host");
        let from = c.output.len();
        c.input("echo \"mark:$MARK\"\r").await;
        c.until_output_from(from, &format!("mark:m{i}"), T).await;
        c.drop_abruptly();
    }

    // A session id no host knows: a clear refusal through the balancer.
    let unknown = "0123456789abcdef0123456789abcdef";
    let mut c = connect_with(lb.addr, &format!("?session={unknown}"), &[]).await.expect("connect");
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": unknown, "secret": "x"}})).await;
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4004), Some("unknown_session")));

    // And a real id sent straight to the other host: that host has never heard of it.
    let (session, secret) = &ids[0];
    let holder_is_one =
        one.cli(&["ps", "-q", "--filter", &format!("name={}-{session}", one.policy.docker.name_prefix)]);
    let wrong = if holder_is_one.is_empty() { b1.addr } else { b2.addr };
    let mut c = connect(wrong).await;
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}}))
        .await;
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4004), Some("unknown_session")), "the other host refuses it");

    // Every session ends when its client releases it, wherever it runs: nothing is left on either engine.
    for (session, secret) in &ids {
        let (mut c, _) = resume_until_ready(lb.addr, session, secret, T).await;
        c.send_json(json!({"type": "release"})).await;
        c.until_json("exit", T).await;
    }
    assert!(b1.terminate(T).success());
    assert!(b2.terminate(T).success());
    common::eventually(T, "no container left on either engine", || {
        one.containers(None).is_empty() && two.containers(None).is_empty()
    })
    .await;
}
