//! Output flow control, end to end: a client that stops reading pauses its shell instead of growing memory, is
//! disconnected as stalled and can resume; a detached session keeps only its newest output. A real berth on
//! 127.0.0.1, real Docker, a real client (tokio-tungstenite).

mod common;

use std::time::{Duration, Instant};

use berth::reconciler::SessionId;
use common::World;
use common::client::{Client, Event, at_prompt, connect_with};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
const REPLAY: usize = 64 << 10;

/// Resident memory of this process (server and client both live here), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn resume(session: &str, secret: &str, offset: usize) -> Value {
    json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret, "offset": offset}})
}

/// Connects with a small TCP receive buffer (which also turns off the kernel's receive buffer autotuning), so
/// that a client that stops reading stops taking data after kilobytes rather than tens of megabytes.
async fn connect_small_window(addr: std::net::SocketAddr) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    let tcp = sock.connect(addr).await.expect("tcp connect");
    let mut req = format!("ws://{addr}/ws").into_client_request().expect("request");
    req.headers_mut().insert("sec-websocket-protocol", "berth.v1".parse().expect("header"));
    let (ws, _) = tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .expect("websocket connect");
    Client { ws, output: Vec::new(), messages: Vec::new(), session: None, secret: None, closed: None }
}

/// Reads until the output received after byte `from` contains `needle`, scanning each byte a bounded number of
/// times (the output may be megabytes).
async fn read_until(c: &mut Client, from: usize, needle: &str, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut scanned = from;
    loop {
        let start = scanned.saturating_sub(needle.len()).max(from);
        if let Some(at) = c.output[start..].windows(needle.len()).position(|w| w == needle.as_bytes()) {
            return start + at;
        }
        scanned = c.output.len();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next(left).await {
            Some(Event::Closed(code, r)) => panic!("closed ({code:?} {r}) while waiting for {needle:?}"),
            None => {
                let tail = &c.output[c.output.len().saturating_sub(300)..];
                panic!("no {needle:?} within {limit:?}; output ends with {:?}", String::from_utf8_lossy(tail))
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_pauses_the_shell_and_memory_stays_bounded() {
    common::docker().await;
    let w = World::new();
    let mut p = w.policy.clone();
    p.server.replay_bytes = REPLAY;
    p.server.stall_timeout = Duration::from_secs(3);
    let server = w.serve_with(p).await;
    let mut c = connect_small_window(server.addr).await;
    c.hello().await;
    c.until_ready().await;
    c.until_output("$ ").await;
    let id: SessionId = c.session.as_deref().expect("session").parse().expect("session id");
    let term = server.terminals.get(&id).expect("the session's terminal");
    let rss_before = rss();

    // From here the client does not poll its socket: its TCP receive buffer fills, then the server's send
    // buffer and the connection's queue, then the terminal stops taking the container's output, and `yes`
    // blocks on its TTY.
    c.input("yes\r").await;
    let sent = Instant::now();
    // Still for this long means paused. Shorter than the stall timeout (3 s), which detaches the session; long
    // enough that a loaded machine's scheduling hiccup (700 ms was seen, with the flow going on after it) is not
    // taken for one.
    const QUIET: Duration = Duration::from_millis(1500);
    let mut last = (term.bytes_out(), Instant::now());
    let paused_after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = term.bytes_out();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= QUIET {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(30), "the shell's output never paused: {now} bytes read");
    };
    let paused_at = term.bytes_out();
    let rss_paused = rss();
    eprintln!(
        "paused after {paused_after:?}: {paused_at} bytes read from the shell, {} buffered; RSS {} -> {} MiB",
        term.buffered(),
        rss_before >> 20,
        rss_paused >> 20
    );
    assert!(term.buffered() <= REPLAY, "the ring holds at most replay_bytes: {}", term.buffered());
    assert!(
        rss_paused.saturating_sub(rss_before) < 32 << 20,
        "memory grew by {} MiB while the client did not read",
        (rss_paused - rss_before) >> 20
    );
    assert!(term.is_open(), "the shell is paused, not gone");

    // The server gives up on the client after the stall timeout and detaches the session.
    let paused = Instant::now();
    loop {
        let list = server.handle.list().await;
        if list.iter().any(|s| s.id == id && !s.attached) {
            break;
        }
        assert!(paused.elapsed() < Duration::from_secs(3 + 3), "not detached as stalled: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("detached {:?} after the output paused", paused.elapsed());
    assert!(sent.elapsed() >= Duration::from_secs(3), "not before the stall timeout: {:?}", sent.elapsed());

    // Reading again, the client gets what was in flight, then the reason and close 4008.
    let (code, err) = c.until_closed(T).await;
    assert_eq!((code, err.as_deref()), (Some(4008), Some("stalled")), "messages: {:?}", c.messages);
    let have = c.output.len();
    eprintln!("the stalled client read {have} bytes in all");
    assert!(have as u64 <= paused_at, "nothing the shell did not write");
    // Flow control lost nothing while the client was attached: no gap, and the bytes are yes's, in order.
    assert!(!c.messages.iter().any(|m| m["type"] == "gap"), "{:?}", c.messages);
    // yes's output starts at its first two lines. Before it stands the command's echo, which may be redrawn
    // with escape sequences in between ("yes\x1b[J\r\n"): the initial resize runs beside the first output, and a
    // SIGWINCH that lands while the line editor holds "yes" makes it redraw the line.
    let head = |n: usize| String::from_utf8_lossy(&c.output[..c.output.len().min(n)]).into_owned();
    let echo = c
        .output
        .windows(6)
        .position(|w| w == b"y\r\ny\r\n")
        .unwrap_or_else(|| panic!("no output of yes in the {have} bytes read; they begin {:?}", head(300)));
    assert!(c.output[..echo].windows(3).any(|w| w == b"yes"), "no echo of the command before it: {:?}", head(echo));
    let body = &c.output[echo..];
    let body = &body[..body.len() - body.len() % 3];
    let bad = body.chunks(3).position(|l| l != b"y\r\n");
    assert!(bad.is_none(), "yes's output is intact, but not at byte {:?}", bad.map(|i| echo + 3 * i));

    // The session stays resumable, and Ctrl-C stops `yes`.
    let mut b = connect_with(server.addr, &format!("?session={id}"), &[]).await.expect("connect");
    b.send_json(resume(c.session.as_deref().expect("session"), c.secret.as_deref().expect("secret"), have)).await;
    assert_eq!(b.until_json("session", T).await["resumed"], true);
    let ready = b.until_ready().await;
    assert!(ready["offset"].as_u64().expect("offset") >= have as u64, "{ready}");
    b.input("\x03").await;
    b.input("echo stopped$((6*7))\r").await;
    read_until(&mut b, 0, "stopped42", T).await;
    // Once stopped, nothing more arrives beyond the prompt.
    let quiet_from = term.bytes_out();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(term.bytes_out() - quiet_from < 100, "yes is still running");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_of_a_detached_session_keeps_only_the_newest_bytes() {
    common::docker().await;
    let w = World::new();
    let mut p = w.policy.clone();
    p.server.replay_bytes = REPLAY;
    let server = w.serve_with(p).await;
    let mut a = at_prompt(server.addr).await;
    let id: SessionId = a.session.as_deref().expect("session").parse().expect("session id");
    let term = server.terminals.get(&id).expect("the session's terminal");

    a.input("i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done; echo loop$((0+1))done\r").await;
    read_until(&mut a, 0, "line10\r\n", T).await;
    let have = a.output.len();
    let (session, secret) = (a.session.clone().expect("session"), a.secret.clone().expect("secret"));
    a.drop_abruptly();

    // The loop finishes while nobody is attached: its output (about 200 KB) goes into the 64 KiB ring.
    let start = Instant::now();
    let mut last = (term.end(), Instant::now());
    while term.end() < 200_000 || last.1.elapsed() < Duration::from_millis(500) {
        assert!(start.elapsed() < Duration::from_secs(60), "the loop did not finish: {} bytes", term.end());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if term.end() != last.0 {
            last = (term.end(), Instant::now());
        }
    }
    let end = term.end();
    eprintln!("the loop wrote up to offset {end} in {:?}; the ring holds {} bytes", start.elapsed(), term.buffered());
    assert!(term.buffered() <= REPLAY);

    let mut b = connect_with(server.addr, &format!("?session={id}"), &[]).await.expect("connect");
    b.send_json(resume(&session, &secret, have)).await;
    assert_eq!(b.until_json("session", T).await["resumed"], true);
    let ready = b.until_ready().await;
    let (offset, missed) = (ready["offset"].as_u64().expect("offset"), ready["missed"].as_u64().expect("missed"));
    // The client asked for everything after `have`; the ring only holds the newest 64 KiB, so output starts
    // further on, and ready says how much was lost.
    assert!(missed > 0, "{ready}");
    assert_eq!(offset, have as u64 + missed, "{ready}");
    assert_eq!(offset, end - term.buffered() as u64, "replay starts at the oldest byte held");
    let done = read_until(&mut b, 0, "loop1done", T).await;
    read_until(&mut b, done, "$ ", T).await;
    // Everything held, nothing more: the replay is exactly the ring.
    while let Some(ev) = b.next(Duration::from_millis(300)).await {
        assert!(!matches!(ev, Event::Closed(..)), "closed: {ev:?}");
    }
    let replay = String::from_utf8_lossy(&b.output).into_owned();
    assert_eq!(b.output.len() as u64, end - offset, "the replay is the ring's content");
    assert!(b.output.len() <= REPLAY, "replayed {} bytes", b.output.len());
    assert!(!b.messages.iter().any(|m| m["type"] == "gap"), "the loss is reported once, in ready: {:?}", b.messages);
    assert!(replay.contains("\r\nline19999\r\n"), "the newest lines are kept");
    assert!(!replay.contains("\r\nline13000\r\n"), "older lines are dropped");
    let first_full = replay.split("\r\n").nth(1).expect("a full line");
    let n: u32 = first_full.strip_prefix("line").and_then(|n| n.parse().ok()).expect("a line of the loop");
    let rest: Vec<String> = (n..20000).map(|i| format!("line{i}")).collect();
    assert!(replay.contains(&rest.join("\r\n")), "every line from line{n} on arrives, in order");
    server.stop().await;
}
