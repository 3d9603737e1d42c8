//! berth's load generator: speaks docs/protocol.md through tokio-tungstenite against a berth on this machine,
//! bounded in count and in time, and prints exactly one JSON line per run on stdout.
//!
//! ```sh
//! cargo run --release --example loadgen -- --url ws://127.0.0.1:PORT/ws --mode latency --sessions 20 --concurrency 10
//! ```
//!
//! Modes:
//! - `latency`: `--sessions` sessions, `--concurrency` at a time. Each one measures the time from TCP connect to
//!   the first prompt (`$ `), then the round trip of an `echo` through the shell, then releases the session.
//! - `churn`: `--concurrency` workers open, echo, release and wait for `exit`, over and over, for `--duration`
//!   (at most `--sessions` sessions in all); reports sessions completed per second.
//! - `leak`: opens `--sessions` sessions, then closes them in a mix (a third `release` then close, a third TCP
//!   reset, a third typed `exit`), and polls berth's session count and the containers carrying the run's labels
//!   until both are zero or `--timeout` runs out. Reset sessions end after berth's resume grace.
//! - `memory`: opens `--sessions` sessions, fills each one's replay ring (`--fill-bytes` of output), detaches them
//!   all (close frame), and reads berth's resident memory from `/metrics`; the sessions then end after the
//!   resume grace.
//! - `viewers`: one owner opens a session and shares a viewer grant; `--sessions` viewers join through it,
//!   `--concurrency` at a time (time to `ready`, and to the screen so far); then the owner echoes 10 times and
//!   each echo's arrival at every viewer is timed (`viewers.fanout_ms`, from the owner's keystroke), beside the
//!   owner's own round trip; then the owner releases and every viewer must get the `exit`. berth's default
//!   profile needs `sharing: {enabled: true, anonymous: true, max_viewers: >= --sessions}`.
//!
//! Every mode ends by polling for leftovers (berth sessions and `<namespace>.managed=true` containers); the exit
//! status is 1 when any remain or any session failed. Only loopback URLs are accepted.

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth::reconciler::LabelNamespace;
use clap::{Parser, ValueEnum};
use futures::future::join_all;
use futures::{SinkExt, StreamExt};
use report::{Errors, LoopbackUrl, Tail};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Latency,
    Churn,
    Leak,
    Memory,
    Viewers,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Churn => "churn",
            Self::Leak => "leak",
            Self::Memory => "memory",
            Self::Viewers => "viewers",
        }
    }
}

/// berth's load generator (loopback only). Prints one JSON line.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// berth's WebSocket endpoint, e.g. ws://127.0.0.1:8080/ws. Only loopback hosts are accepted.
    #[arg(long)]
    url: String,
    /// What to measure.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Sessions to open (latency, leak, memory), or the most to open (churn).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(report::MAX_SESSIONS)))]
    sessions: u32,
    /// Sessions in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(report::MAX_CONCURRENCY)))]
    concurrency: u32,
    /// How long churn keeps starting sessions.
    #[arg(long, default_value = "30s", value_parser = report::parse_duration)]
    duration: Duration,
    /// Deadline for the whole run, leftover polling included.
    #[arg(long, default_value = "120s", value_parser = report::parse_duration)]
    timeout: Duration,
    /// berth's label namespace (`docker.namespace`), to count the containers a run leaves.
    #[arg(long, default_value = "io.berth")]
    namespace: LabelNamespace,
    /// Count sessions through the admin API (GET /admin/sessions) instead of `/metrics`.
    #[arg(long)]
    admin_url: Option<String>,
    /// The admin bearer token, for --admin-url.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Output per session in memory mode (more than berth's `server.replay_bytes` fills the ring).
    #[arg(long, default_value = "320KiB", value_parser = report::parse_bytes)]
    fill_bytes: usize,
    /// berth's `server.replay_bytes`, for the memory bound (sessions × ring + 64 MiB).
    #[arg(long, default_value = "256KiB", value_parser = report::parse_bytes)]
    ring_bytes: usize,
    /// Also print every time-to-prompt sample (`time_to_prompt_samples_ms`, sorted), for plotting.
    #[arg(long)]
    samples: bool,
}

/// Longest wait for any one session step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

type Ws = WebSocketStream<TcpStream>;

/// One protocol connection.
struct Conn {
    ws: Ws,
    tail: Tail,
    /// When `ready` arrived.
    ready_at: Option<Instant>,
    /// The session id, from `session` or `joined`.
    session: Option<String>,
}

/// What arrived.
enum Ev {
    Json(Value),
    Output,
    Closed(String),
}

impl Conn {
    /// TCP connect, the WebSocket upgrade with the `berth.v1` subprotocol, and `hello`.
    async fn open(target: &LoopbackUrl) -> Result<Self, String> {
        Self::open_with(target, "", json!({"type": "hello", "cols": 80, "rows": 24})).await
    }

    /// [`Conn::open`] with a query string on the path (`?session=<id>`) and a hello of the caller's.
    async fn open_with(target: &LoopbackUrl, query: &str, hello: Value) -> Result<Self, String> {
        let tcp = TcpStream::connect(target.addr).await.map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let mut req = format!("ws://{}{}{query}", target.authority, target.path)
            .into_client_request()
            .map_err(|e| format!("request: {e}"))?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("berth.v1"),
        );
        let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.map_err(|e| format!("upgrade: {e}"))?;
        if resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()) != Some("berth.v1") {
            return Err("upgrade: the server did not answer with berth.v1".into());
        }
        let mut c = Self { ws, tail: Tail::default(), ready_at: None, session: None };
        c.send_json(hello).await?;
        Ok(c)
    }

    async fn send_json(&mut self, v: Value) -> Result<(), String> {
        self.ws.send(Message::text(v.to_string())).await.map_err(|e| format!("send: {e}"))
    }

    async fn send_input(&mut self, data: &[u8]) -> Result<(), String> {
        self.ws.send(Message::binary(data.to_vec())).await.map_err(|e| format!("send input: {e}"))
    }

    async fn next(&mut self, deadline: Instant) -> Result<Ev, String> {
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err("timed out".into()),
                Ok(None) => return Ok(Ev::Closed("stream ended".into())),
                Ok(Some(Err(e))) => return Ok(Ev::Closed(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).map_err(|e| format!("server sent bad JSON: {e}"))?;
                    if v["type"] == "ready" {
                        self.ready_at = Some(Instant::now());
                    }
                    if v["type"] == "session" || v["type"] == "joined" {
                        self.session = v["session"].as_str().map(str::to_owned);
                    }
                    return Ok(Ev::Json(v));
                }
                Message::Binary(b) => {
                    self.tail.push(&b);
                    return Ok(Ev::Output);
                }
                Message::Close(f) => {
                    return Ok(Ev::Closed(
                        f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Reads until the output since the last mark contains `needle`. Errors, exits and closes end it.
    async fn until_output(&mut self, needle: &[u8], deadline: Instant) -> Result<(), String> {
        while !self.tail.has(needle) {
            match self.next(deadline).await? {
                Ev::Json(v) if v["type"] == "error" || v["type"] == "exit" => {
                    return Err(format!("{} {}", v["type"].as_str().unwrap_or(""), v["code"].as_str().unwrap_or("")));
                }
                Ev::Closed(why) => return Err(format!("closed: {why}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads until a control message of type `ty`.
    async fn until_json(&mut self, ty: &str, deadline: Instant) -> Result<Value, String> {
        loop {
            match self.next(deadline).await? {
                Ev::Json(v) if v["type"] == ty => return Ok(v),
                Ev::Json(v) if v["type"] == "error" => {
                    return Err(format!("error {}", v["code"].as_str().unwrap_or("")));
                }
                Ev::Closed(why) => return Err(format!("closed before {ty}: {why}")),
                _ => {}
            }
        }
    }

    /// Sends a close frame and reads until the server's close (bounded).
    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// `release`, then the `exit` message, then a close frame.
    async fn release(mut self, deadline: Instant) -> Result<(), String> {
        self.send_json(json!({"type": "release"})).await?;
        let v = self.until_json("exit", deadline).await?;
        self.close().await;
        match v["reason"].as_str() {
            Some("released") => Ok(()),
            other => Err(format!("exit reason {other:?} after release")),
        }
    }

    /// Types `exit`: the shell ends by itself.
    async fn type_exit(mut self, deadline: Instant) -> Result<(), String> {
        self.send_input(b"exit\r").await?;
        let v = self.until_json("exit", deadline).await?;
        self.close().await;
        match v["reason"].as_str() {
            Some("exited") => Ok(()),
            other => Err(format!("exit reason {other:?} after typing exit")),
        }
    }

    /// Resets the TCP connection (RST, no close frame), as a crashed client does. The session detaches.
    fn reset(self) -> Result<(), String> {
        self.ws.get_ref().set_zero_linger().map_err(|e| format!("SO_LINGER: {e}"))?;
        drop(self.ws);
        Ok(())
    }
}

/// One session's timings up to the echo.
struct Opened {
    conn: Conn,
    time_to_ready: Duration,
    time_to_prompt: Duration,
    echo_rtt: Duration,
}

/// Connect → hello → first prompt, then one echo round trip.
async fn open_session(target: &LoopbackUrl, deadline: Instant) -> Result<Opened, String> {
    let started = Instant::now();
    let deadline = deadline.min(started + STEP_TIMEOUT);
    let mut conn = Conn::open(target).await?;
    conn.until_output(report::PROMPT, deadline).await.map_err(|e| format!("waiting for the prompt: {e}"))?;
    let time_to_prompt = started.elapsed();
    let time_to_ready = conn.ready_at.map_or(time_to_prompt, |r| r - started);
    conn.tail.mark();
    let sent = Instant::now();
    conn.send_input(report::ECHO_COMMAND).await?;
    conn.until_output(report::ECHO_ANSWER, deadline).await.map_err(|e| format!("waiting for the echo: {e}"))?;
    let echo_rtt = sent.elapsed();
    Ok(Opened { conn, time_to_ready, time_to_prompt, echo_rtt })
}

/// What a run collected.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: Errors,
    failures: u64,
    ttr: Vec<Duration>,
    ttp: Vec<Duration>,
    echo: Vec<Duration>,
    cycle: Vec<Duration>,
}

impl Tally {
    fn fail(&mut self, e: &str) {
        self.failures += 1;
        self.errors.add(e);
    }

    fn merge(&mut self, o: Self) {
        self.ok += o.ok;
        self.failures += o.failures;
        self.errors.merge(o.errors);
        self.ttr.extend(o.ttr);
        self.ttp.extend(o.ttp);
        self.echo.extend(o.echo);
        self.cycle.extend(o.cycle);
    }
}

/// Opens, echoes and releases sessions with `concurrency` workers until `count` have started or `stop_at` passes.
async fn cycles(target: &LoopbackUrl, count: u32, concurrency: u32, stop_at: Instant, deadline: Instant) -> Tally {
    let started = Arc::new(AtomicU32::new(0));
    let workers = (0..concurrency).map(|_| {
        let started = started.clone();
        async move {
            let mut t = Tally::default();
            while Instant::now() < stop_at && started.fetch_add(1, Ordering::Relaxed) < count {
                let begun = Instant::now();
                match open_session(target, deadline).await {
                    Ok(o) => {
                        let step = deadline.min(Instant::now() + STEP_TIMEOUT);
                        match o.conn.release(step).await {
                            Ok(()) => {
                                t.ok += 1;
                                t.ttr.push(o.time_to_ready);
                                t.ttp.push(o.time_to_prompt);
                                t.echo.push(o.echo_rtt);
                                t.cycle.push(begun.elapsed());
                            }
                            Err(e) => t.fail(&format!("release: {e}")),
                        }
                    }
                    Err(e) => t.fail(&e),
                }
            }
            t
        }
    });
    let mut all = Tally::default();
    for t in join_all(workers).await {
        all.merge(t);
    }
    all
}

/// Keeps a connection alive while the run does something else: reads it (which also answers berth's pings, so
/// the connection is not closed for `ping_timeout`) until `stop` flips, then hands it back.
fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<Result<Conn, String>> {
    tokio::spawn(async move {
        let far = Instant::now() + report::MAX_TIMEOUT;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(conn),
                ev = conn.next(far) => match ev? {
                    Ev::Closed(why) => return Err(format!("closed while held: {why}")),
                    Ev::Json(v) if v["type"] == "error" || v["type"] == "exit" => {
                        return Err(format!("{} {} while held", v["type"], v["code"]));
                    }
                    _ => {}
                },
            }
        }
    })
}

/// Fills the session's replay ring: at least `bytes` of output, then a marker.
async fn fill(mut c: Conn, bytes: usize, deadline: Instant) -> Result<Conn, String> {
    // `yes` prints 64-byte lines (65 with the TTY's CR): enough lines to pass `bytes`.
    let command = format!("yes {} | head -n {}; echo lg-$((40+2))\r", "x".repeat(63), bytes.div_ceil(65));
    c.tail.mark();
    let before = c.tail.total;
    c.send_input(command.as_bytes()).await?;
    c.until_output(report::ECHO_ANSWER, deadline.min(Instant::now() + STEP_TIMEOUT)).await?;
    let got = c.tail.total - before;
    if got < bytes as u64 {
        return Err(format!("only {got} bytes of output"));
    }
    Ok(c)
}

/// Opens `count` sessions, `concurrency` at a time (filling each ring with `fill_bytes` of output when given),
/// and keeps them all open until the last one is.
async fn open_many(
    target: &LoopbackUrl,
    count: u32,
    concurrency: u32,
    deadline: Instant,
    fill_bytes: Option<usize>,
) -> (Vec<Conn>, Tally) {
    let next = Arc::new(AtomicU32::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = (0..concurrency.min(count)).map(|_| {
        let next = next.clone();
        let stop_rx = stop_rx.clone();
        async move {
            let mut held = Vec::new();
            let mut t = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let o = match open_session(target, deadline).await {
                    Ok(o) => o,
                    Err(e) => {
                        t.fail(&e);
                        continue;
                    }
                };
                t.ttr.push(o.time_to_ready);
                t.ttp.push(o.time_to_prompt);
                t.echo.push(o.echo_rtt);
                let conn = match fill_bytes {
                    Some(bytes) => match fill(o.conn, bytes, deadline).await {
                        Ok(c) => c,
                        Err(e) => {
                            t.fail(&format!("fill: {e}"));
                            continue;
                        }
                    },
                    None => o.conn,
                };
                held.push(hold(conn, stop_rx.clone()));
            }
            (held, t)
        }
    });
    let mut all = Tally::default();
    let mut held = Vec::new();
    for (h, t) in join_all(workers).await {
        held.extend(h);
        all.merge(t);
    }
    let _ = stop_tx.send(true);
    let mut kept = Vec::new();
    for h in held {
        match h.await {
            Ok(Ok(c)) => kept.push(c),
            Ok(Err(e)) => all.fail(&e),
            Err(e) => all.fail(&format!("reader task: {e}")),
        }
    }
    (kept, all)
}

/// Where berth's own counts come from.
struct Berth {
    base: String,
    admin: Option<(String, Option<PathBuf>)>,
    ns: LabelNamespace,
}

impl Berth {
    async fn get(&self, path: &str) -> Result<String, String> {
        berth::admin_client::request(&self.base, None, "GET", path).await.map_err(|e| e.to_string())
    }

    /// Waits for `/readyz` to answer 200.
    async fn wait_ready(&self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.get("/readyz").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(format!("berth not ready: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn metrics(&self) -> Result<String, String> {
        self.get("/metrics").await
    }

    /// Sessions berth holds: the admin list, or the sum of `berth_sessions` over the phases before `gone`.
    async fn sessions(&self) -> Result<u64, String> {
        if let Some((url, token)) = &self.admin {
            let body = berth::admin_client::request(url, token.as_deref(), "GET", "/admin/sessions")
                .await
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&body).map_err(|e| format!("admin list: {e}"))?;
            return Ok(v.as_array().map_or(0, Vec::len) as u64);
        }
        let text = self.metrics().await?;
        Ok(metric_lines(&text, "berth_sessions")
            .filter(|(labels, _)| !labels.contains("phase=\"gone\""))
            .map(|(_, v)| v as u64)
            .sum())
    }

    async fn containers(&self) -> Result<u64, String> {
        Ok(report::marked_containers(&self.ns).await?.len() as u64)
    }

    /// Polls until berth holds no session and Docker no container of the namespace, or `deadline`.
    /// Returns both counts and how long it took.
    async fn until_empty(&self, deadline: Instant) -> (Option<u64>, Option<u64>, Duration) {
        let started = Instant::now();
        loop {
            let s = self.sessions().await;
            let c = self.containers().await;
            if let (Ok(0), Ok(0)) = (&s, &c) {
                return (Some(0), Some(0), started.elapsed());
            }
            if Instant::now() >= deadline {
                if let Err(e) = &s {
                    eprintln!("loadgen: cannot read berth's sessions: {e}");
                }
                if let Err(e) = &c {
                    eprintln!("loadgen: cannot list containers: {e}");
                }
                return (s.ok(), c.ok(), started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `(labels, value)` of every sample of `name` in a Prometheus text exposition.
fn metric_lines<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (labels, v) = r.split_once('}')?;
            (labels, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            return None;
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

/// The process's resident memory, from a `/metrics` text.
fn rss_bytes(text: &str) -> Option<f64> {
    metric_lines(text, "process_resident_memory_bytes").map(|(_, v)| v).next()
}

/// Bytes to MiB, one decimal.
fn mib(bytes: f64) -> f64 {
    report::round1(bytes / f64::from(1u32 << 20))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.duration > report::MAX_DURATION {
        eprintln!("loadgen: --duration is at most {}s", report::MAX_DURATION.as_secs());
        return std::process::ExitCode::from(64);
    }
    let target = match report::loopback_url(&args.url, &["ws"]) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let admin = match &args.admin_url {
        Some(u) => match report::loopback_url(u, &["http"]) {
            Ok(_) => Some((u.clone(), args.token_file.clone())),
            Err(e) => {
                eprintln!("loadgen: --admin-url: {e}");
                return std::process::ExitCode::from(64);
            }
        },
        None => None,
    };
    let berth = Berth { base: format!("http://{}", target.authority), admin, ns: args.namespace.clone() };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (report, clean) = rt.block_on(run(&args, &target, &berth));
    println!("{report}");
    if clean { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

async fn run(args: &Args, target: &LoopbackUrl, berth: &Berth) -> (Value, bool) {
    let started = Instant::now();
    let deadline = started + args.timeout;
    let mut extra = serde_json::Map::new();
    if let Err(e) = berth.wait_ready(deadline.min(started + Duration::from_secs(30))).await {
        eprintln!("loadgen: {e}");
        let mut t = Tally::default();
        t.fail(&e);
        return (summary(args, &t, None, (None, None, Duration::ZERO), extra), false);
    }
    let mut rate = None;
    let begun = Instant::now();
    let tally = match args.mode {
        Mode::Latency => cycles(target, args.sessions, args.concurrency, deadline, deadline).await,
        Mode::Churn => {
            let t = cycles(target, args.sessions, args.concurrency, begun + args.duration, deadline).await;
            let secs = begun.elapsed().as_secs_f64();
            extra.insert("churn_s".into(), json!(report::round3(secs)));
            rate = Some(t.ok as f64 / secs);
            t
        }
        Mode::Leak => leak(args, target, deadline, &mut extra).await,
        Mode::Memory => memory(args, target, berth, deadline, &mut extra).await,
        Mode::Viewers => viewers(args, target, deadline, &mut extra).await,
    };
    let left = berth.until_empty(deadline).await;
    if let Some(Value::Object(m)) = extra.get_mut("memory") {
        // Once every session has ended: what the process keeps (allocator caches) versus what sessions held.
        let rss = berth.metrics().await.ok().and_then(|t| rss_bytes(&t));
        m.insert("rss_after_end_mib".into(), json!(rss.map(mib)));
    }
    if rate.is_some() {
        // Sessions per second counted until berth had also removed every container: a backlog of removals
        // left behind by the clients does not count as throughput.
        let drained = begun.elapsed().as_secs_f64();
        extra.insert("rate_drained_per_s".into(), json!(report::round3(tally.ok as f64 / drained)));
    }
    extra.insert("elapsed_s".into(), json!(report::round3(begun.elapsed().as_secs_f64())));
    let clean = tally.failures == 0 && left.0 == Some(0) && left.1 == Some(0);
    (summary(args, &tally, rate, left, extra), clean)
}

fn summary(
    args: &Args,
    t: &Tally,
    rate: Option<f64>,
    (sessions, containers, drain): (Option<u64>, Option<u64>, Duration),
    extra: serde_json::Map<String, Value>,
) -> Value {
    let mut v = json!({
        "target": "berth",
        "mode": args.mode.as_str(),
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "ok": t.ok,
        "failures": t.failures,
        "time_to_prompt_ms": report::percentiles(&t.ttp),
        "time_to_ready_ms": report::percentiles(&t.ttr),
        "echo_rtt_ms": report::percentiles(&t.echo),
        "cycle_ms": report::percentiles(&t.cycle),
        "rate_per_s": rate.map(report::round3),
        "leftover_sessions": sessions,
        "leftover_containers": containers,
        "drain_s": report::round3(drain.as_secs_f64()),
        "errors": t.errors.to_json(),
    });
    if let Value::Object(m) = &mut v {
        m.extend(extra);
        if args.samples {
            m.insert("time_to_prompt_samples_ms".into(), report::samples_ms(&t.ttp));
        }
    }
    v
}

/// Opens N sessions, then ends a third by `release`, resets a third and types `exit` in a third.
async fn leak(
    args: &Args,
    target: &LoopbackUrl,
    deadline: Instant,
    extra: &mut serde_json::Map<String, Value>,
) -> Tally {
    let (opened, mut t) = open_many(target, args.sessions, args.concurrency, deadline, None).await;
    eprintln!("loadgen: leak: {} sessions open; closing them in a mix", opened.len());
    let step = deadline.min(Instant::now() + STEP_TIMEOUT);
    let closes = opened.into_iter().enumerate().map(|(i, c)| async move {
        match i % 3 {
            0 => ("release", c.release(step).await),
            1 => ("reset", c.reset()),
            _ => ("exit", c.type_exit(step).await),
        }
    });
    let mut kinds = serde_json::Map::new();
    for (kind, r) in join_all(closes).await {
        match r {
            Ok(()) => {
                t.ok += 1;
                let n = kinds.get(kind).and_then(Value::as_u64).unwrap_or(0);
                kinds.insert(kind.into(), json!(n + 1));
            }
            Err(e) => t.fail(&format!("{kind}: {e}")),
        }
    }
    extra.insert("closed".into(), Value::Object(kinds));
    t
}

/// Opens N sessions, fills each ring, detaches them all and reads berth's resident memory.
async fn memory(
    args: &Args,
    target: &LoopbackUrl,
    berth: &Berth,
    deadline: Instant,
    extra: &mut serde_json::Map<String, Value>,
) -> Tally {
    let before = berth.metrics().await.ok().and_then(|m| rss_bytes(&m));
    let (conns, mut t) = open_many(target, args.sessions, args.concurrency, deadline, Some(args.fill_bytes)).await;
    let full = conns.len();
    eprintln!("loadgen: memory: {full} sessions with full rings; detaching them all");
    join_all(conns.into_iter().map(Conn::close)).await;
    // Wait for berth to see every connection gone, then read its memory while the sessions are detached.
    let settle = deadline.min(Instant::now() + Duration::from_secs(10));
    loop {
        let open = berth
            .metrics()
            .await
            .ok()
            .and_then(|m| metric_lines(&m, "berth_websocket_connections").next().map(|l| l.1));
        if open == Some(0.0) || Instant::now() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = berth.sessions().await.ok();
    let after = berth.metrics().await.ok().and_then(|m| rss_bytes(&m));
    t.ok = full as u64;
    let ring_sum = (full * args.ring_bytes) as f64;
    let bound = ring_sum + (64u64 << 20) as f64;
    extra.insert(
        "memory".into(),
        json!({
            "detached_sessions": held,
            "rss_before_mib": before.map(mib),
            "rss_detached_mib": after.map(mib),
            "ring_bytes": args.ring_bytes,
            "ring_sum_mib": mib(ring_sum),
            "bound_mib": mib(bound),
            "within_bound": after.map(|r| r < bound),
        }),
    );
    t
}

/// Echo rounds the owner types while its viewers watch.
const FANOUT_ROUNDS: u64 = 10;

/// One owner, `--sessions` viewers joined through one grant: join timings, then the fan-out of the owner's echoes.
async fn viewers(
    args: &Args,
    target: &LoopbackUrl,
    deadline: Instant,
    extra: &mut serde_json::Map<String, Value>,
) -> Tally {
    let mut t = Tally::default();
    let mut owner = match open_session(target, deadline).await {
        Ok(o) => o.conn,
        Err(e) => {
            t.fail(&format!("owner: {e}"));
            return t;
        }
    };
    let step = deadline.min(Instant::now() + STEP_TIMEOUT);
    let shared = async {
        owner.send_json(json!({"type": "share", "role": "viewer", "label": "loadgen"})).await?;
        owner.until_json("shared", step).await
    }
    .await;
    let (grant, session) = match (shared, owner.session.clone()) {
        (Ok(v), Some(s)) => (v["grant"].as_str().unwrap_or_default().to_owned(), s),
        (Err(e), _) => {
            t.fail(&format!("share: {e}"));
            let _ = owner.release(step).await;
            return t;
        }
        (Ok(_), None) => {
            t.fail("share: no session id");
            let _ = owner.release(step).await;
            return t;
        }
    };
    // Join in waves of --concurrency; the owner is read meanwhile so that it answers pings.
    let mut joined = Vec::new();
    let ids: Vec<u32> = (0..args.sessions).collect();
    for wave in ids.chunks(args.concurrency as usize) {
        let joins = wave.iter().map(|_| {
            let (session, grant) = (session.clone(), grant.clone());
            async move {
                let started = Instant::now();
                let hello = json!({"type": "hello", "cols": 80, "rows": 24,
                    "join": {"session": session, "grant": grant}});
                let mut c = Conn::open_with(target, &format!("?session={session}"), hello).await?;
                let step = deadline.min(started + STEP_TIMEOUT);
                // The screen so far (the ring from its oldest byte) holds the owner's first echo.
                c.until_output(report::ECHO_ANSWER, step).await.map_err(|e| format!("viewer screen: {e}"))?;
                let ttr = c.ready_at.map_or(started.elapsed(), |r| r - started);
                Ok::<_, String>((c, ttr, started.elapsed()))
            }
        });
        for r in join_all(joins).await {
            match r {
                Ok((c, ttr, ttp)) => {
                    t.ttr.push(ttr);
                    t.ttp.push(ttp);
                    joined.push(c);
                }
                Err(e) => t.fail(&format!("join: {e}")),
            }
        }
    }
    let mut fanout = Vec::new();
    for n in 0..FANOUT_ROUNDS {
        let answer = format!("fan-{}", n + 43);
        let step = deadline.min(Instant::now() + STEP_TIMEOUT);
        owner.tail.mark();
        for v in &mut joined {
            v.tail.mark();
        }
        let sent = Instant::now();
        if let Err(e) = owner.send_input(format!("echo fan-$(({n}+43))\r").as_bytes()).await {
            t.fail(&format!("owner input: {e}"));
            break;
        }
        let own = async { owner.until_output(answer.as_bytes(), step).await.map(|()| sent.elapsed()) };
        let seen = join_all(joined.iter_mut().map(|v| {
            let answer = answer.clone();
            async move { v.until_output(answer.as_bytes(), step).await.map(|()| sent.elapsed()) }
        }));
        let (own, seen) = futures::join!(own, seen);
        match own {
            Ok(d) => t.echo.push(d),
            Err(e) => t.fail(&format!("owner echo: {e}")),
        }
        for r in seen {
            match r {
                Ok(d) => fanout.push(d),
                Err(e) => t.fail(&format!("fan-out: {e}")),
            }
        }
    }
    // The owner ends the session: every viewer gets the exit.
    let step = deadline.min(Instant::now() + STEP_TIMEOUT);
    let released = owner.release(step).await;
    if let Err(e) = &released {
        t.fail(&format!("owner release: {e}"));
    }
    let viewers_n = joined.len();
    let ends = join_all(joined.into_iter().map(|mut v| async move {
        let r = v.until_json("exit", step).await;
        v.close().await;
        r
    }))
    .await;
    for r in ends {
        match r {
            Ok(_) => t.ok += 1,
            Err(e) => t.fail(&format!("viewer exit: {e}")),
        }
    }
    extra.insert(
        "viewers".into(),
        json!({"joined": viewers_n, "rounds": FANOUT_ROUNDS, "fanout_ms": report::percentiles(&fanout)}),
    );
    t
}
