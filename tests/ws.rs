//! The WebSocket layer end to end: a real berth on 127.0.0.1, real Docker, a real client (tokio-tungstenite).

mod common;

use std::time::Duration;

use common::World;
use common::client::{Event, connect, connect_with, ready};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_prompt_arrives_without_a_key_press_and_echo_works() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let mut c = connect(server.addr).await;
    c.hello().await;
    let session = c.until_json("session", T).await;
    assert_eq!(session["resumed"], false);
    assert_eq!(session["secret"].as_str().map(str::len), Some(64));
    let ready = c.until_ready().await;
    assert_eq!(ready["offset"], 0);
    c.until_output("$ ").await;
    c.input("echo $((6*7))\r").await;
    c.until_output("42").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_sent_after_hello_but_before_ready_is_delivered() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let mut c = connect(server.addr).await;
    c.hello().await;
    c.input("echo early$((1+1))\r").await;
    c.until_ready().await;
    c.until_output("early2").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_replays_only_what_the_client_missed() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let mut a = ready(server.addr).await;
    a.input("echo first$((0+1))\r").await;
    a.until_output("first1").await;
    // Ask for output that arrives after the drop, then drop without a close frame.
    a.input("sleep 1; echo second$((1+1))\r").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Some(Event::Output(_)) = a.next(Duration::from_millis(200)).await {}
    let have = a.output.len() as u64;
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    a.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut b = connect_with(server.addr, &format!("?session={session}"), &[]).await.expect("connect");
    b.send_json(json!({"type": "hello", "cols": 80, "rows": 24,
        "resume": {"session": session, "secret": secret, "offset": have}}))
        .await;
    let s = b.until_json("session", T).await;
    assert_eq!(s["resumed"], true);
    assert!(s.get("secret").is_none(), "the secret is not sent again");
    let ready = b.until_ready().await;
    assert_eq!(ready["offset"], have, "output resumes exactly where the client stopped");
    assert_eq!(ready["missed"], 0);
    b.until_output("second2").await;
    let replay = String::from_utf8_lossy(&b.output).to_string();
    assert!(!replay.contains("first1"), "nothing the client already had is sent again: {replay:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_var_outside_the_allowlist_never_reaches_the_container() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let mut c = connect(server.addr).await;
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24,
        "env": {"LD_PRELOAD": "/tmp/evil.so", "PATH": "/tmp", "BERTH_SECRET_MODE": "off", "LANG": "C.UTF-8"}}))
        .await;
    let warn = c.until_json("warning", T).await;
    assert_eq!(warn["code"], "env_ignored");
    let names: Vec<&str> = warn["names"].as_array().expect("names").iter().filter_map(|v| v.as_str()).collect();
    assert!(
        names.contains(&"LD_PRELOAD") && names.contains(&"PATH") && names.contains(&"BERTH_SECRET_MODE"),
        "{names:?}"
    );
    c.until_ready().await;
    c.input("echo \"[${LD_PRELOAD}][${BERTH_SECRET_MODE}][${LANG}][${PATH}]\"\r").await;
    c.until_output("[][][C.UTF-8][/bin]").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_exit_reports_the_exit_code_and_closes_with_4000() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let mut c = ready(server.addr).await;
    c.input("exit 3\r").await;
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "exited");
    assert_eq!(exit["code"], 3);
    let (code, _) = c.until_closed(T).await;
    assert_eq!(code, Some(4000));
    common::eventually(Duration::from_secs(5), "container removed", || w.containers(None).is_empty()).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizes_are_counted_as_docker_calls() {
    common::docker().await;
    let w = World::new();
    let server = w.serve().await;
    let resizes = || server.metrics.docker_calls(berth::runtime::DockerOp::Resize, true);
    assert_eq!(resizes(), 0);
    let mut c = ready(server.addr).await;
    c.send_json(json!({"type": "resize", "cols": 100, "rows": 30})).await;
    // Docker applies a resize before its call returns; Podman hands it to conmon, which applies it a moment
    // later. So the shell waits for the size itself (bounded by `until_output`'s deadline) before it says so.
    c.input("while [ \"$(stty size)\" != \"30 100\" ]; do sleep 0.1; done; echo sized-$(stty size | tr ' ' x)\r").await;
    c.until_output("sized-30x100").await;
    // The hello's size and the resize: both reached the engine, and both are counted.
    assert_eq!(resizes(), 2, "{}", server.metrics.render());
    server.stop().await;
}
