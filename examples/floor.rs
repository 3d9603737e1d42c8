//! The Docker floor: what berth must do for one session, done directly with bollard and nothing else: create
//! (the container berth would create, from the same policy's default profile, hardening included), attach
//! before start, start, read until the first prompt, one `echo` round trip, force remove. No controller, no
//! WebSocket. Prints one JSON line in the same shape as `loadgen`, so berth's overhead is a ratio measured side
//! by side at the same concurrency.
//!
//! ```sh
//! cargo run --release --example floor -- --mode latency --sessions 20 --concurrency 10 [--policy FILE]
//! ```
//!
//! Modes: `latency` (`--sessions` sessions, `--concurrency` at a time) and `churn` (`--concurrency` workers for
//! `--duration`, at most `--sessions` sessions). It talks only to the local engine's socket, labels its containers
//! with a namespace of its own (`bench.floor.<random>` unless `--namespace`), removes everything it created, and
//! reports what it had to sweep up. Exit status 1 when a session failed or a container was left.

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth::reconciler::plan::ContainerSpec;
use berth::reconciler::{
    Desired, DesiredSession, InstanceId, LabelNamespace, Policy, SessionId, SessionKind, Timestamp,
};
use bollard::Docker;
use bollard::container::AttachContainerResults;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use futures::future::join_all;
use report::{Errors, Tail};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Latency,
    Churn,
}

/// The Docker floor for berth's session path (local engine only: Docker's socket, or DOCKER_HOST's `unix://`
/// socket). Prints one JSON line.
#[derive(Debug, Parser)]
#[command(name = "floor")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Sessions to run (latency), or the most to run (churn).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(report::MAX_SESSIONS)))]
    sessions: u32,
    /// Sessions in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(report::MAX_CONCURRENCY)))]
    concurrency: u32,
    /// How long churn keeps starting sessions.
    #[arg(long, default_value = "30s", value_parser = report::parse_duration)]
    duration: Duration,
    /// Deadline for the whole run, clean-up included.
    #[arg(long, default_value = "120s", value_parser = report::parse_duration)]
    timeout: Duration,
    /// The policy berth runs with: its default profile (image, user, limits, hardening) is what gets created.
    /// Without it, berth's built-in default policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Label namespace for this run's containers. Default: a fresh `bench.floor.<random>`.
    #[arg(long)]
    namespace: Option<LabelNamespace>,
    /// Also print every time-to-prompt sample (`time_to_prompt_samples_ms`, sorted), for plotting.
    #[arg(long)]
    samples: bool,
}

/// Longest wait for any one session step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What one session costs.
struct Sample {
    time_to_prompt: Duration,
    echo_rtt: Duration,
    cycle: Duration,
    /// Each Docker call on the way to the prompt, and the remove.
    calls: Calls,
}

/// How long each Docker call of one session took.
#[derive(Default)]
struct Calls {
    create: Duration,
    attach: Duration,
    start: Duration,
    remove: Duration,
}

/// The engine, and the container every session gets.
struct Floor {
    docker: Docker,
    policy: Policy,
    desired: Desired,
}

fn bollard_err(op: &str) -> impl Fn(bollard::errors::Error) -> String + '_ {
    move |e| format!("{op}: {e}")
}

impl Floor {
    /// The container spec berth's planner would produce for a new session of the default profile.
    fn spec(&self) -> Result<ContainerSpec, String> {
        let name = &self.policy.default_profile;
        let profile = self.policy.profiles.get(name).ok_or_else(|| format!("no profile {name} in the policy"))?;
        let id = SessionId::generate().map_err(|e| e.to_string())?;
        let now = Timestamp::now();
        let session = DesiredSession::new(id, name.clone(), SessionKind::Anonymous, now);
        Ok(ContainerSpec::build(&self.desired, &session, profile, &self.policy, now))
    }

    /// create → attach → start → prompt → echo → force remove.
    async fn session(&self, deadline: Instant) -> Result<Sample, String> {
        let spec = self.spec()?;
        // The very request berth's runtime sends, so the floor and berth create identical containers.
        let body = berth::runtime::docker::create_body(&spec);
        let started = Instant::now();
        let deadline = deadline.min(started + STEP_TIMEOUT);
        let opts = CreateContainerOptionsBuilder::default().name(&spec.name).build();
        let created = tokio::time::timeout_at(deadline, self.docker.create_container(Some(opts), body))
            .await
            .map_err(|_| "create: timed out".to_owned())?
            .map_err(bollard_err("create"))?;
        let mut calls = Calls { create: started.elapsed(), ..Calls::default() };
        let driven = self.drive(&created.id, started, deadline, &mut calls).await;
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        let removing = Instant::now();
        let removed = tokio::time::timeout(STEP_TIMEOUT, self.docker.remove_container(&created.id, Some(opts)))
            .await
            .map_err(|_| "remove: timed out".to_owned())
            .and_then(|r| r.map_err(bollard_err("remove")));
        calls.remove = removing.elapsed();
        let (time_to_prompt, echo_rtt) = driven?;
        removed?;
        Ok(Sample { time_to_prompt, echo_rtt, cycle: started.elapsed(), calls })
    }

    async fn drive(
        &self,
        id: &str,
        started: Instant,
        deadline: Instant,
        calls: &mut Calls,
    ) -> Result<(Duration, Duration), String> {
        let step = |what: &'static str| move |_| format!("{what}: timed out");
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attaching = Instant::now();
        let AttachContainerResults { mut output, mut input } =
            tokio::time::timeout_at(deadline, self.docker.attach_container(id, Some(opts)))
                .await
                .map_err(step("attach"))?
                .map_err(bollard_err("attach"))?;
        calls.attach = attaching.elapsed();
        let starting = Instant::now();
        tokio::time::timeout_at(deadline, self.docker.start_container(id, None))
            .await
            .map_err(step("start"))?
            .map_err(bollard_err("start"))?;
        calls.start = starting.elapsed();
        let mut tail = Tail::default();
        read_until(&mut output, &mut tail, report::PROMPT, deadline)
            .await
            .map_err(|e| format!("waiting for the prompt: {e}"))?;
        let time_to_prompt = started.elapsed();
        tail.mark();
        let sent = Instant::now();
        input.write_all(report::ECHO_COMMAND).await.map_err(|e| format!("write: {e}"))?;
        input.flush().await.map_err(|e| format!("write: {e}"))?;
        read_until(&mut output, &mut tail, report::ECHO_ANSWER, deadline)
            .await
            .map_err(|e| format!("waiting for the echo: {e}"))?;
        Ok((time_to_prompt, sent.elapsed()))
    }
}

/// Reads the attach stream until the output since the last mark contains `needle`.
async fn read_until(
    output: &mut (impl futures::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Unpin),
    tail: &mut Tail,
    needle: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    while !tail.has(needle) {
        match tokio::time::timeout_at(deadline, output.next()).await.map_err(|_| "read: timed out".to_owned())? {
            Some(Ok(chunk)) => tail.push(&chunk.into_bytes()),
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("read: the attach stream ended".into()),
        }
    }
    Ok(())
}

/// Runs sessions with `concurrency` workers until `count` have started or `stop_at` passes.
async fn cycles(
    floor: &Floor,
    count: u32,
    concurrency: u32,
    stop_at: Instant,
    deadline: Instant,
) -> (Vec<Sample>, Errors) {
    let started = Arc::new(AtomicU32::new(0));
    let workers = (0..concurrency).map(|_| {
        let started = started.clone();
        async move {
            let mut samples = Vec::new();
            let mut errors = Errors::default();
            while Instant::now() < stop_at && started.fetch_add(1, Ordering::Relaxed) < count {
                match floor.session(deadline).await {
                    Ok(s) => samples.push(s),
                    Err(e) => errors.add(&e),
                }
            }
            (samples, errors)
        }
    });
    let mut samples = Vec::new();
    let mut errors = Errors::default();
    for (s, e) in join_all(workers).await {
        samples.extend(s);
        errors.merge(e);
    }
    (samples, errors)
}

fn random_tag() -> Result<String, String> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| format!("random source: {e}"))?;
    Ok(hex::encode(b))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.duration > report::MAX_DURATION {
        eprintln!("floor: --duration is at most {}s", report::MAX_DURATION.as_secs());
        return std::process::ExitCode::from(64);
    }
    let mut policy = match &args.policy {
        Some(p) => match berth::app::load_policy(p) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("floor: invalid policy:\n{e}");
                return std::process::ExitCode::from(64);
            }
        },
        None => Policy::default(),
    };
    let tag = match random_tag() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ns = match args.namespace.clone() {
        Some(ns) => ns,
        None => match format!("bench.floor.{tag}").parse() {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("floor: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    policy.docker.namespace = ns;
    policy.docker.name_prefix = format!("floor-{tag}");
    let instance: InstanceId = match format!("floor-{tag}").parse() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (report, clean) = rt.block_on(run(&args, policy, instance));
    println!("{report}");
    if clean { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

async fn run(args: &Args, policy: Policy, instance: InstanceId) -> (Value, bool) {
    let ns = policy.docker.namespace.clone();
    // A local engine's socket only: this program never loads another machine. DOCKER_HOST is honoured when it
    // names a Unix socket (Podman's, say), so the floor is measured on the same engine as berth.
    let socket = std::env::var("DOCKER_HOST").ok().and_then(|h| h.strip_prefix("unix://").map(str::to_owned));
    let connected = match socket {
        Some(path) => Docker::connect_with_socket(&path, 120, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_socket_defaults(),
    };
    let docker = match connected {
        Ok(d) => d.negotiate_version().await,
        Err(e) => Err(e),
    };
    let docker = match docker {
        Ok(d) => d,
        Err(e) => {
            eprintln!("floor: cannot reach the local Docker engine: {e}");
            return (json!({"target": "floor", "error": e.to_string()}), false);
        }
    };
    let floor = Floor { docker, policy, desired: Desired::new(instance) };
    let begun = Instant::now();
    let deadline = begun + args.timeout;
    let (mode, stop_at) = match args.mode {
        Mode::Latency => ("latency", deadline),
        Mode::Churn => ("churn", begun + args.duration),
    };
    let (samples, errors) = cycles(&floor, args.sessions, args.concurrency, stop_at, deadline).await;
    let secs = begun.elapsed().as_secs_f64();
    let failures = errors.count();
    // Every session force-removed its container; anything still carrying the run's labels is a leftover.
    let left = report::marked_containers(&ns).await;
    let leftover = left.as_ref().map(Vec::len).ok();
    if let Ok(ids) = &left
        && !ids.is_empty()
    {
        let _ = tokio::process::Command::new("docker").arg("rm").arg("-f").args(ids).output().await;
    }
    let swept = report::marked_containers(&ns).await.map(|v| v.len()).ok();
    let pick = |f: fn(&Sample) -> Duration| samples.iter().map(f).collect::<Vec<_>>();
    let rate = (args.mode == Mode::Churn).then(|| report::round3(samples.len() as f64 / secs));
    let mut v = json!({
        "target": "floor",
        "mode": mode,
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "ok": samples.len(),
        "failures": failures,
        "time_to_prompt_ms": report::percentiles(&pick(|s| s.time_to_prompt)),
        "echo_rtt_ms": report::percentiles(&pick(|s| s.echo_rtt)),
        "cycle_ms": report::percentiles(&pick(|s| s.cycle)),
        "docker_call_ms": {
            "create": report::percentiles(&pick(|s| s.calls.create)),
            "attach": report::percentiles(&pick(|s| s.calls.attach)),
            "start": report::percentiles(&pick(|s| s.calls.start)),
            "remove": report::percentiles(&pick(|s| s.calls.remove)),
        },
        "rate_per_s": rate,
        "rate_drained_per_s": rate,
        "leftover_sessions": null,
        "leftover_containers": leftover,
        "after_sweep_containers": swept,
        "elapsed_s": report::round3(secs),
        "namespace": floor.policy.docker.namespace.as_str(),
        "errors": errors.to_json(),
    });
    if args.samples
        && let Value::Object(m) = &mut v
    {
        m.insert("time_to_prompt_samples_ms".into(), report::samples_ms(&pick(|s| s.time_to_prompt)));
    }
    let clean = failures == 0 && leftover == Some(0) && swept == Some(0);
    (v, clean)
}
