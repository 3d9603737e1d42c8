//! Hardening seen from outside, against a real Docker engine:
//! - a credential never reaches berth's log, even with `BERTH_LOG` asking for bollard's and tungstenite's debug
//!   and trace output (which logs create bodies and WebSocket messages);
//! - a session container has per-process limits and a private cgroup namespace, and its shell sees the limits;
//! - a claim container forged with `docker create` against a running berth is refused: the sessions stay, and
//!   `shutdown: remove` leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use berth::reconciler::{PeerLabels, PeerRole};
use common::World;
use common::client::{connect, open_marked, ready};
use common::process::{Berth, TempDir, sample, write_policy};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// A distinctive credential value, searched for in the log.
const SECRET: &str = "hunter2-0f3a9c1e-credential";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_absent_from_the_log_even_with_debug_and_trace_for_bollard_and_tungstenite() {
    common::docker().await;
    let w = World::with_prefix("l");
    let dir = TempDir::new("log-secrets");
    let path = write_policy(dir.path(), &w, &[]);
    // The default profile maps the hello's `api_key` credential into API_KEY.
    let yaml = std::fs::read_to_string(&path).expect("policy");
    assert_eq!(yaml.matches("    credentials: []\n").count(), 1, "the default policy's credentials line");
    let yaml = yaml.replace("    credentials: []\n", "    credentials: [{hello: api_key, env: API_KEY}]\n");
    std::fs::write(&path, yaml).expect("write policy");
    berth::app::load_policy(&path).expect("the edited policy is valid");

    let filter = "debug,bollard=trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,hyper_util=trace";
    let mut berth =
        Berth::spawn_env(&path, w.instance.as_str(), dir.path(), "127.0.0.1:0", None, &[("BERTH_LOG", filter)]);
    berth.wait_ready(T).await;
    let mut c = connect(berth.addr).await;
    c.send_json(json!({"type": "hello", "cols": 80, "rows": 24, "credentials": {"api_key": SECRET}})).await;
    c.until_ready().await;
    // The credential reached the container (so it was in the create body and in the hello berth read)...
    c.input("echo \"len:${#API_KEY}\"\r").await;
    c.until_output_from(0, &format!("len:{}", SECRET.len()), T).await;
    let env = w.cli(&["inspect", "-f", "{{json .Config.Env}}", &w.containers(None)[0]]);
    assert!(env.contains(SECRET), "the container's environment has the credential");
    // ...and berth logged at debug level all along, but not the credential.
    let log = berth.log();
    assert!(log.contains("DEBUG"), "BERTH_LOG=debug took effect; the log:\n{log}");
    assert!(!log.contains(SECRET), "the credential is in berth's log:\n{log}");
    assert!(!log.contains(&SECRET.bytes().map(|b| format!("{b:02x}")).collect::<String>()), "nor in hex");
    berth.terminate(T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_container_has_ulimits_and_a_private_cgroup_namespace_and_its_shell_sees_the_limits() {
    common::docker().await;
    let w = World::with_prefix("u");
    let server = w.serve().await;
    let mut c = ready(server.addr).await;
    let ids = w.containers(Some("running"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let host = w.cli(&["inspect", "-f", "{{json .HostConfig.Ulimits}} {{.HostConfig.CgroupnsMode}}", &ids[0]]);
    let (ulimits, cgroupns) = host.rsplit_once(' ').expect("two fields");
    assert_eq!(cgroupns, "private", "{host}");
    let ulimits: serde_json::Value = serde_json::from_str(ulimits).expect("json");
    let get = |name: &str| {
        let u = ulimits.as_array().and_then(|a| a.iter().find(|u| u["Name"] == name)).cloned();
        u.map(|u| (u["Soft"].as_i64().unwrap_or(-1), u["Hard"].as_i64().unwrap_or(-1)))
    };
    assert_eq!(get("nofile"), Some((1024, 4096)), "{ulimits}");
    assert_eq!(get("nproc"), Some((8192, 8192)), "{ulimits}");
    assert_eq!(get("core"), Some((0, 0)), "{ulimits}");
    // The shell runs under them.
    c.input("echo \"L=$(ulimit -n):$(ulimit -Hn):$(ulimit -c):$(ulimit -u)\"\r").await;
    c.until_output_from(0, "L=1024:4096:0:8192", T).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_claim_on_a_running_berth_is_refused_its_sessions_stay_and_shutdown_remove_leaves_nothing() {
    common::docker().await;
    let w = World::with_prefix("f");
    let dir = TempDir::new("forged-claim");
    let path = write_policy(
        dir.path(),
        &w,
        &[("reconcile.shutdown", "remove"), ("reconcile.resync_interval", "1s"), ("peers.lease_timeout", "3s")],
    );
    let mut berth = Berth::spawn(&path, w.instance.as_str(), dir.path());
    berth.wait_ready(T).await;
    let mut clients = vec![open_marked(berth.addr, T).await, open_marked(berth.addr, T).await];
    let epoch = sample(&berth.metrics().await, "berth_epoch").expect("berth_epoch") as u64;

    // Anyone who reaches the Docker API: a claim naming this berth at its running epoch.
    let labels = PeerLabels {
        role: PeerRole::Claim,
        owner: "forger".parse().expect("instance"),
        epoch: 1,
        claimed: Some((w.instance.clone(), epoch)),
    };
    let mut args = vec![
        "create".to_owned(),
        "--name".to_owned(),
        format!("{}-claim-{}-{epoch}", w.policy.docker.name_prefix, w.instance),
    ];
    for (k, v) in labels.to_labels(&w.ns) {
        args.extend(["--label".to_owned(), format!("{k}={v}")]);
    }
    args.extend(["berth-session:latest".to_owned(), "true".to_owned()]);
    let forged = w.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());

    berth.wait_metric("berth_peer_claims_refused_total", 1.0, Instant::now() + T, "the claim is refused").await;
    let peer_filter = format!("label={}", w.ns.peer_key());
    common::eventually(T, "the forged claim is removed", || {
        !w.cli(&["ps", "-aq", "--no-trunc", "--filter", &peer_filter]).contains(&forged)
    })
    .await;
    // Longer than the lease, and several resyncs: the sessions are still this berth's, and their shells answer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = berth.metrics().await;
    assert_eq!(sample(&text, r#"berth_sessions{phase="running"}"#), Some(2.0), "sessions kept");
    assert_eq!(sample(&text, "berth_epoch"), Some(epoch as f64), "no fencing");
    for c in &mut clients {
        let from = c.output.len();
        c.input("echo \"still:$MARK\"\r").await;
        c.until_output_from(from, "still:42", T).await;
    }
    assert_eq!(w.containers(Some("running")).len(), 2);

    // shutdown: remove leaves nothing in the namespace: no session container, no sentinel, no claim.
    let status = berth.terminate(T);
    assert!(status.success(), "{status:?}");
    assert_eq!(w.containers(None), Vec::<String>::new(), "session containers left");
    assert_eq!(w.cli(&["ps", "-aq", "--filter", &peer_filter]), "", "sentinels or claims left");
}
