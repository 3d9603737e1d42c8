//! A protocol client for tests, over tokio-tungstenite, speaking docs/protocol.md.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Json(Value),
    Output(Vec<u8>),
    Closed(Option<u16>, String),
}

pub struct Client {
    pub ws: Ws,
    /// Every output byte received, in order.
    pub output: Vec<u8>,
    /// Control messages received, in order.
    pub messages: Vec<Value>,
    pub session: Option<String>,
    pub secret: Option<String>,
    pub closed: Option<(Option<u16>, String)>,
}

/// Connects to `/ws` with the berth.v1 subprotocol and optional extra headers.
pub async fn connect_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let mut req = format!("ws://{addr}/ws{query}").into_client_request()?;
    req.headers_mut().insert("sec-websocket-protocol", "berth.v1".parse().expect("header"));
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    // No Nagle delay, as berth's own sockets: a small write never waits for the peer's delayed ACK, which also
    // keeps paused-clock tests from jumping ahead while bytes sit in the kernel.
    let (ws, resp) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
        Some("berth.v1"),
        "the server answers with the subprotocol"
    );
    Ok(Client { ws, output: Vec::new(), messages: Vec::new(), session: None, secret: None, closed: None })
}

pub async fn connect(addr: SocketAddr) -> Client {
    connect_with(addr, "", &[]).await.expect("websocket connect")
}

/// The preamble of most tests: connects to `/ws`, says hello (80x24) and waits for `ready`.
pub async fn ready(addr: SocketAddr) -> Client {
    ready_with(addr, &[]).await
}

/// [`ready`], with extra request headers (`X-Forwarded-For`, `Origin`, ...).
pub async fn ready_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Client {
    let mut c = connect_with(addr, "", headers).await.expect("websocket connect");
    c.hello().await;
    c.until_ready().await;
    c
}

/// [`ready`], then waits for the shell's first prompt (`$ `), which arrives without a key press.
pub async fn at_prompt(addr: SocketAddr) -> Client {
    let mut c = ready(addr).await;
    c.until_output("$ ").await;
    c
}

impl Client {
    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn hello(&mut self) {
        self.send_json(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    }

    pub async fn input(&mut self, s: &str) {
        self.ws.send(Message::binary(s.as_bytes().to_vec())).await.expect("send input");
    }

    /// The next event, or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Event> {
        if let Some((c, r)) = &self.closed {
            return Some(Event::Closed(*c, r.clone()));
        }
        loop {
            let msg = match tokio::time::timeout(limit, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.closed = Some((None, String::new()));
                    return Some(Event::Closed(None, String::new()));
                }
                Ok(Some(Err(e))) => {
                    self.closed = Some((None, e.to_string()));
                    return Some(Event::Closed(None, e.to_string()));
                }
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                    if v["type"] == "session" {
                        self.session = v["session"].as_str().map(str::to_owned);
                        if let Some(s) = v["secret"].as_str() {
                            self.secret = Some(s.to_owned());
                        }
                    }
                    self.messages.push(v.clone());
                    return Some(Event::Json(v));
                }
                Message::Binary(b) => {
                    self.output.extend_from_slice(&b);
                    return Some(Event::Output(b.to_vec()));
                }
                Message::Close(f) => {
                    let (code, reason) = f
                        .map(|f: CloseFrame| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    self.closed = Some((code, reason.clone()));
                    return Some(Event::Closed(code, reason));
                }
                _ => {}
            }
        }
    }

    /// Reads until a JSON message of `ty` arrives; panics on close or timeout.
    pub async fn until_json(&mut self, ty: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Json(v)) if v["type"] == ty => return v,
                Some(Event::Closed(c, r)) => {
                    panic!("closed ({c:?} {r}) while waiting for {ty}; messages: {:?}", self.messages)
                }
                None => panic!("no {ty} within {limit:?}; messages: {:?}", self.messages),
                _ => {}
            }
        }
    }

    pub async fn until_ready(&mut self) -> Value {
        self.until_json("ready", Duration::from_secs(60)).await
    }

    /// Reads until the output (since byte `from`) contains `needle`.
    pub async fn until_output_from(&mut self, from: usize, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !String::from_utf8_lossy(&self.output[from.min(self.output.len())..]).contains(needle) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Closed(c, r)) => panic!(
                    "closed ({c:?} {r}) while waiting for {needle:?}; output: {:?}",
                    String::from_utf8_lossy(&self.output)
                ),
                None => panic!("no {needle:?} within {limit:?}; output: {:?}", String::from_utf8_lossy(&self.output)),
                _ => {}
            }
        }
    }

    pub async fn until_output(&mut self, needle: &str) {
        self.until_output_from(0, needle, Duration::from_secs(20)).await;
    }

    /// Reads until the socket closes; returns the close code and the last error code received.
    pub async fn until_closed(&mut self, limit: Duration) -> (Option<u16>, Option<String>) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Event::Closed(c, _)) => {
                    let err = self
                        .messages
                        .iter()
                        .rev()
                        .find(|m| m["type"] == "error")
                        .and_then(|m| m["code"].as_str())
                        .map(str::to_owned);
                    return (c, err);
                }
                None => panic!("not closed within {limit:?}; messages: {:?}", self.messages),
                _ => {}
            }
        }
    }

    /// Sends input; false when the connection is gone.
    pub async fn try_input(&mut self, s: &str) -> bool {
        self.closed.is_none() && self.ws.send(Message::binary(s.as_bytes().to_vec())).await.is_ok()
    }

    /// Resets the TCP connection (RST, no close frame), as a crashed client or a dead network does.
    pub fn drop_abruptly(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            let _ = socket_linger_zero(tcp);
        }
        drop(self.ws);
    }
}

#[allow(deprecated)]
fn socket_linger_zero(tcp: &TcpStream) -> std::io::Result<()> {
    tcp.set_linger(Some(Duration::ZERO))
}

/// Resumes `(session, secret)` through `addr` (a load balancer) as the page does: `GET /ws?session=<id>` and a
/// resume hello, again and again while the answer says to come back (a refused or reset connection, 503, close
/// 4011 draining, 4012, or 4013 session held by a replica that is restarting), until `ready`. Returns the ready
/// client and how many attempts it took; panics on any other refusal, or after `limit`.
pub async fn resume_until_ready(addr: SocketAddr, session: &str, secret: &str, limit: Duration) -> (Client, u32) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut attempts = 0;
    let mut last = String::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {session} not resumed within {limit:?} ({attempts} attempts; last: {last})"
        );
        attempts += 1;
        let mut c = match connect_with(addr, &format!("?session={session}"), &[]).await {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let hello = json!({"type": "hello", "cols": 80, "rows": 24, "resume": {"session": session, "secret": secret}});
        if c.ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match c.next(left).await {
                Some(Event::Json(v)) if v["type"] == "ready" => return (c, attempts),
                Some(Event::Closed(code, reason)) => {
                    assert!(
                        matches!(code, None | Some(1006 | 4011 | 4012 | 4013)),
                        "resuming {session}: refused with {code:?} {reason}; messages: {:?}",
                        c.messages
                    );
                    last = format!("closed {code:?} {reason}");
                    let wait = c.messages.iter().rev().find_map(|m| m["retry_after"].as_u64()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(250).max(Duration::from_secs(wait))).await;
                    break;
                }
                None => panic!("session {session}: no answer within {limit:?}; messages: {:?}", c.messages),
                _ => {}
            }
        }
    }
}

/// Opens a session, waits for its shell, and sets `MARK=42` in it (seen through the shell's own answer, so the
/// input surely reached the shell before anything is killed or restarted).
pub async fn open_marked(addr: SocketAddr, limit: Duration) -> Client {
    let mut c = ready(addr).await;
    c.input("export MARK=$((40+2))\r").await;
    c.input("echo \"set:$MARK\"\r").await;
    c.until_output_from(0, "set:42", limit).await;
    c
}
