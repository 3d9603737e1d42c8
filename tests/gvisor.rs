//! Sessions on gVisor (`runtime: runsc`) against the real Docker engine, with the real `berth` binary: a prompt
//! and an echo, a kernel that is gVisor's, a resume on a new WebSocket, adoption after a `kill -9` of berth, and
//! nothing left behind. Also: a runtime the engine has not registered stops berth with status 64, before it
//! listens or creates anything. Needs runsc registered with the engine (`scripts/ensure-runsc.sh`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::World;
use common::client::{open_marked, resume_until_ready};
use common::process::{Berth, TempDir, write_policy};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// The default policy with `runtime` set on its profile, a fast resync and a short grace.
fn runsc_policy(dir: &TempDir, w: &World, runtime: &str) -> std::path::PathBuf {
    let path = write_policy(
        dir.path(),
        w,
        &[("sessions.resume_grace", "20s"), ("reconcile.resync_interval", "2s"), ("reconcile.startup", "adopt")],
    );
    let yaml = std::fs::read_to_string(&path).expect("policy");
    let at = "profiles:\n  default:\n    image: berth-session:latest\n";
    assert!(yaml.contains(at), "the default policy's profile is laid out as expected");
    let yaml = yaml.replace(at, &format!("{at}    runtime: {runtime}\n"));
    std::fs::write(&path, yaml).expect("policy written");
    path
}

/// Fails loudly when the engine has no runsc: these tests never skip.
fn require_runsc() {
    let out = Command::new("docker").args(["info", "--format", "{{json .Runtimes}}"]).output().expect("docker CLI");
    let runtimes = String::from_utf8_lossy(&out.stdout);
    assert!(
        runtimes.contains("\"runsc\""),
        "runsc is not registered with Docker (run scripts/ensure-runsc.sh): {runtimes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_runsc_runs_on_gvisor_resumes_and_is_adopted_after_a_kill_9() {
    common::docker().await;
    require_runsc();
    let began = Instant::now();
    let w = World::with_prefix("g");
    let dir = TempDir::new("gvisor");
    let policy = runsc_policy(&dir, &w, "runsc");
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    berth.wait_ready(T).await;

    // A prompt and an echo (open_marked waits for both: the prompt, then `set:42` echoed by the shell).
    let started = Instant::now();
    let mut c = open_marked(berth.addr, T).await;
    eprintln!("prompt and echo on runsc {:?} after the connect", started.elapsed());
    let session = c.session.clone().expect("a session id");
    let secret = c.secret.clone().expect("a resume secret");

    // The container is on runsc, without the pids limit gVisor cannot honour, and the kernel is gVisor's.
    let containers = w.containers(Some("running"));
    assert_eq!(containers.len(), 1, "one running container");
    let inspect = w.cli(&["inspect", "--format", "{{.HostConfig.Runtime}} {{.HostConfig.PidsLimit}}", &containers[0]]);
    assert!(inspect == "runsc <nil>" || inspect == "runsc 0", "runtime and pids limit as docker sees them: {inspect}");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("host kernel");
    let from = c.output.len();
    c.input("echo \"kernel:$(uname -r)\"; dmesg | head -1\r").await;
    c.until_output_from(from, "Starting gVisor", T).await;
    let out = String::from_utf8_lossy(&c.output[from..]).into_owned();
    assert!(out.contains("kernel:4.4.0"), "gVisor reports kernel 4.4.0: {out:?}");
    assert!(!out.contains(&format!("kernel:{}", host_release.trim())), "not the host's kernel: {out:?}");

    // A reload of the page: a new WebSocket with the resume secret reaches the same shell.
    c.drop_abruptly();
    let (mut c, _) = resume_until_ready(berth.addr, &session, &secret, T).await;
    let from = c.output.len();
    c.input("echo \"again:$MARK\"\r").await;
    c.until_output_from(from, "again:42", T).await;
    eprintln!("resumed on a new WebSocket after {:?}", began.elapsed());

    // berth dies of SIGKILL; the sandbox outlives it, and the restarted berth adopts it.
    let status = berth.kill9();
    assert_eq!(status.signal(), Some(9), "berth died of SIGKILL: {status}");
    drop(c);
    assert_eq!(w.containers(Some("running")).len(), 1, "the sandbox outlives berth");
    let mut berth = Berth::spawn(&policy, w.instance.as_str(), dir.path());
    let deadline = berth.listening_at + T;
    berth.wait_metric(r#"berth_sessions{phase="running"}"#, 1.0, deadline, "adoption").await;
    let (mut c, _) = resume_until_ready(berth.addr, &session, &secret, T).await;
    let from = c.output.len();
    c.input("echo \"adopted:$MARK\"\r").await;
    c.until_output_from(from, "adopted:42", T).await;
    eprintln!("adopted and resumed after the kill -9, {:?} in", began.elapsed());

    c.send_json(json!({"type": "release"})).await;
    let exit = c.until_json("exit", T).await;
    assert_eq!(exit["reason"], "released", "{exit}");
    common::eventually(T, "the container removed", || w.containers(None).is_empty()).await;
    let status = berth.terminate(T);
    assert!(status.success(), "berth exits 0 after SIGTERM, got {status}; its log:\n{}", berth.log_tail(40));
    assert!(w.containers(None).is_empty(), "no session container is left");
    let peers = || {
        let filter = format!("label={}", w.ns.peer_key());
        w.cli(&["ps", "-a", "--format", "{{.Names}} {{.Status}}", "--filter", &filter])
    };
    // A stopped sentinel of this instance may stay behind after the restarted berth's graceful stop (created or
    // exited; sentinels run on runc, so this is not gVisor's doing, and is left for its own issue): nothing else.
    let left = peers();
    let sentinel = format!("{}-sentinel-{}-", w.policy.docker.name_prefix, w.instance);
    assert!(
        left.lines().all(|l| l.starts_with(&sentinel) && !l.contains(" Up ")),
        "only a stopped sentinel of this instance may be left: {left}"
    );
    for line in left.lines() {
        let name = line.split(' ').next().unwrap_or_default();
        w.cli(&["rm", "-f", name]);
    }
    eprintln!("whole test took {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runtime_stops_berth_with_status_64_naming_the_profile_and_the_engines_runtimes() {
    common::docker().await;
    require_runsc();
    let w = World::with_prefix("g");
    let dir = TempDir::new("gvisor-unknown");
    let policy = runsc_policy(&dir, &w, "no-such-runtime");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--instance", w.instance.as_str(), "--policy"])
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("berth runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "exit status; stderr:\n{stderr}");
    assert!(!stdout.contains("listening"), "it never listened: {stdout}");
    assert!(
        stderr.contains("profiles.default.runtime: the engine has no runtime named \"no-such-runtime\""),
        "{stderr}"
    );
    assert!(stderr.contains("runc") && stderr.contains("runsc"), "the engine's runtimes are listed: {stderr}");
    let peers = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={}", w.ns.peer_key())])
        .output()
        .expect("docker CLI");
    assert!(w.containers(None).is_empty() && peers.stdout.is_empty(), "nothing was created");
}
