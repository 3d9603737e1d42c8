//! The WebSocket layer: the HTTP upgrade checks (`upgrade.rs`: subprotocol, origin, rate, readiness), and one
//! task per connection (here) that asks the controller for a session, waits for it to run, and then moves bytes
//! between the socket and the session's terminal; failures become protocol codes in `errors.rs`. It changes
//! desired state only; it never creates or removes containers.

mod errors;
mod flow;
mod idle;
pub mod messages;
mod upgrade;

pub use upgrade::routes;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::{EndReason, Phase, Policy, SessionId};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info};
use warp::filters::ws::{Message, WebSocket};

use crate::auth;
use crate::controller::{Admission, Handle, OpenError, SessionRequest, Ticket};
use crate::limits::ConnectionLimiter;
use crate::listener::Pending;
use crate::metrics::Metrics;
use crate::terminal::{Read, Terminal, Terminals};
use errors::{auth_error, open_error, read_error};
use flow::{drain, ending, resize};
use messages::{ClientMsg, Hello, ProtoError, ServerMsg, close};

/// Messages queued for a connection's writer, beyond the two kept for the error or exit and the close frame.
const OUT_QUEUE: usize = 16;

/// How long a closing connection's queued messages get to reach the client before the socket is dropped.
const LAST_WORDS_GRACE: Duration = Duration::from_secs(5);

/// The upgrade response header naming the session this connection serves, for load balancers that stick
/// `?session=<id>` to the replica that announced it (HAProxy: `stick store-response res.hdr(berth-session)`).
pub const SESSION_HEADER: &str = "berth-session";

/// What the WebSocket layer shares across connections.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The controller.
    pub handle: Handle,
    /// The data path.
    pub terminals: Terminals,
    /// The policy in force.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Per-IP connection rate.
    pub limiter: Arc<ConnectionLimiter>,
    /// Flips to true when berth shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Why a connection ended, and how to tell the client.
#[derive(Debug)]
enum End {
    /// Send this error (if the peer is still there) and close with its code.
    Error(ProtoError),
    /// The session ended: `exit` then close 4000.
    Exited(EndReason),
    /// The client sent a close frame (with this code, if any). The WebSocket library queues the reply (the same
    /// code); the writer sends it as soon as it stops.
    PeerClosed(Option<u16>),
    /// The client vanished without a close frame (reset, broken pipe, end of stream): normal, logged at debug.
    PeerReset,
}

impl From<ProtoError> for End {
    fn from(e: ProtoError) -> Self {
        Self::Error(e)
    }
}

struct Conn {
    edge: Arc<Edge>,
    policy: Arc<Policy>,
    out: mpsc::Sender<Message>,
    incoming: futures::stream::SplitStream<WebSocket>,
    ip: IpAddr,
    connected: Instant,
    last_heard: Instant,
    first_output: bool,
    /// The resize to the hello's size, sent while output already flows.
    initial_resize: Option<tokio::task::JoinHandle<()>>,
    /// The id a new session opened on this connection gets (announced in the upgrade response).
    announced: SessionId,
    /// This connection's place among those without a hello yet.
    pending: Option<Pending>,
}

enum Incoming {
    Msg(ClientMsg),
    Input(Bytes),
    Nothing,
}

impl Conn {
    async fn run(
        edge: Arc<Edge>,
        socket: WebSocket,
        ip: IpAddr,
        connected: Instant,
        announced: SessionId,
        pending: Option<Pending>,
    ) {
        edge.metrics.ws_total.inc();
        edge.metrics.ws_open.inc();
        let (mut sink, incoming) = socket.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE + 2);
        // Room for the last two messages (the error or exit, then the close frame) is set aside now: they queue
        // behind pending output even when a client that stopped reading has filled the queue.
        let mut last_words = Vec::with_capacity(2);
        for _ in 0..2 {
            if let Ok(permit) = out.clone().reserve_owned().await {
                last_words.push(permit);
            }
        }
        let writer = tokio::spawn(
            async move {
                while let Some(msg) = out_rx.recv().await {
                    let closing = msg.is_close();
                    if sink.send(msg).await.is_err() || closing {
                        break;
                    }
                }
                let _ = sink.close().await;
            }
            .in_current_span(),
        );
        let policy = edge.policy.borrow().clone();
        let mut conn = Conn {
            edge: edge.clone(),
            policy,
            out,
            incoming,
            ip,
            connected,
            last_heard: Instant::now(),
            first_output: false,
            initial_resize: None,
            announced,
            pending,
        };
        let mut held: Option<(SessionId, u64)> = None;
        let end = conn.serve(&mut held).await;
        let mut say = |msg: Message| {
            if let Some(permit) = last_words.pop() {
                permit.send(msg);
            }
        };
        // The close code the connection ended with, as its metric label.
        let label = match &end {
            End::Error(e) => {
                debug!(code = e.code, message = %e.message, "closing");
                let code = e.close.unwrap_or(close::INTERNAL);
                say(Message::text(e.to_json()));
                say(Message::close_with(code, e.code));
                code.to_string()
            }
            End::Exited(reason) => {
                let code = match reason {
                    EndReason::Exited { code } => Some(*code),
                    _ => None,
                };
                // The engine's text stays in the log (it may name private images or hosts).
                let message = match reason {
                    EndReason::CreateFailed { .. } => "the session container could not be created".to_owned(),
                    r => r.to_string(),
                };
                let msg = ServerMsg::Exit { reason: reason.code(), code, message };
                say(Message::text(msg.to_json()));
                say(Message::close_with(close::SESSION_ENDED, "session ended"));
                close::SESSION_ENDED.to_string()
            }
            End::PeerClosed(code) => {
                debug!(code, "the client closed the connection");
                errors::peer_close_label(*code).to_owned()
            }
            End::PeerReset => {
                edge.metrics.ws_client_resets.inc();
                "1006".to_owned()
            }
        };
        drop(last_words);
        // Any way out but the end of the session leaves it detached and resumable.
        if let (Some((id, lease)), false) = (held, matches!(end, End::Exited(_))) {
            edge.handle.detach(id, lease).await;
        }
        // The client has this long to take what is still queued and to answer the close frame; then the socket is
        // closed regardless, so a peer that never reads cannot hold the connection open. Meanwhile what it still
        // sends is read and dropped: closing a socket with unread input in it makes the kernel reset the
        // connection, and a client that had not yet read its last words (the error or exit, and the close code)
        // would lose them.
        // Dropping the last sender lets the writer stop at once (flushing the reply to a client's close frame)
        // instead of waiting on its queue.
        let Conn { mut incoming, out, .. } = conn;
        drop(out);
        let mut writer = writer;
        let linger = async {
            let _ = (&mut writer).await;
            while let Some(Ok(_)) = incoming.next().await {}
        };
        if tokio::time::timeout(LAST_WORDS_GRACE, linger).await.is_err() {
            writer.abort();
        }
        drop(incoming);
        edge.metrics.ws_open.dec();
        edge.metrics.ws_closed.with_label_values(&[&label]).inc();
    }

    /// Sends, waiting at most the stall timeout for room.
    async fn send(&self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(self.policy.server.stall_timeout, self.out.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::PeerReset),
            Err(_) => Err(End::Error(ProtoError::fatal(
                "stalled",
                close::STALLED,
                format!("output not read for {:?}; the session stays resumable", self.policy.server.stall_timeout),
            ))),
        }
    }

    async fn send_json(&self, msg: &ServerMsg<'_>) -> Result<(), End> {
        self.send(Message::text(msg.to_json())).await
    }

    /// Reads one frame from the client and classifies it.
    async fn recv(&mut self) -> Result<Incoming, End> {
        let frame = match self.incoming.next().await {
            None => {
                debug!("the client's stream ended without a close frame");
                return Err(End::PeerReset);
            }
            Some(Err(e)) => return Err(read_error(&e)),
            Some(Ok(m)) => m,
        };
        self.last_heard = Instant::now();
        if frame.is_binary() {
            let data = frame.into_bytes();
            self.edge.metrics.bytes.with_label_values(&["in"]).inc_by(data.len() as u64);
            return Ok(Incoming::Input(data));
        }
        if frame.is_text() {
            let text = frame
                .to_str()
                .map_err(|()| ProtoError::fatal("not_utf8", close::BAD_MESSAGE, "text frames must be UTF-8 JSON"))?;
            return match messages::parse(text) {
                Ok(m) => Ok(Incoming::Msg(m)),
                Err(e) if e.close.is_none() => {
                    self.send(Message::text(e.to_json())).await?;
                    Ok(Incoming::Nothing)
                }
                Err(e) => Err(End::Error(e)),
            };
        }
        if frame.is_close() {
            return Err(End::PeerClosed(frame.close_frame().map(|(code, _)| code)));
        }
        Ok(Incoming::Nothing)
    }

    async fn serve(&mut self, held: &mut Option<(SessionId, u64)>) -> End {
        match self.serve_inner(held).await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn serve_inner(&mut self, held: &mut Option<(SessionId, u64)>) -> Result<End, End> {
        let hello = match tokio::time::timeout(self.policy.server.hello_timeout, self.recv()).await {
            Err(_) => {
                return Err(
                    ProtoError::fatal("hello_timeout", close::HELLO, "no hello within the hello timeout").into()
                );
            }
            Ok(r) => match r? {
                Incoming::Msg(ClientMsg::Hello(h)) => {
                    if let Some(p) = self.pending.take() {
                        p.hello();
                    }
                    h
                }
                _ => {
                    return Err(
                        ProtoError::fatal("missing_hello", close::HELLO, "the first message must be hello").into()
                    );
                }
            },
        };
        let mut ticket = self.admit(&hello).await?;
        *held = Some((ticket.id, ticket.lease));
        tracing::Span::current().record("session", tracing::field::display(ticket.id));

        // Until the shell runs: buffer input, remember resizes, report progress.
        let mut size = (hello.cols, hello.rows);
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut last_phase: Option<Phase> = None;
        loop {
            let status = ticket.status.borrow_and_update().clone();
            if let Some(reason) = ending(&status) {
                return match reason {
                    EndReason::CreateFailed { error } => Err(errors::create_failed(&error).into()),
                    r => Ok(End::Exited(r)),
                };
            }
            if status.phase == Phase::Running {
                break;
            }
            if last_phase != Some(status.phase) {
                last_phase = Some(status.phase);
                self.send_json(&ServerMsg::Status { phase: status.phase.as_str() }).await?;
            }
            tokio::select! {
                changed = ticket.status.changed() => {
                    if changed.is_err() {
                        return Ok(End::Exited(EndReason::Released));
                    }
                }
                incoming = self.recv() => match incoming? {
                    Incoming::Input(data) => {
                        if pending_bytes + data.len() <= self.policy.server.input_buffer_bytes {
                            pending_bytes += data.len();
                            pending.push(data);
                        } else {
                            self.send_json(&ServerMsg::Warning {
                                code: "input_overflow",
                                message: "input before the shell started exceeded the buffer; some was dropped".into(),
                                seconds: None,
                                names: None,
                            }).await?;
                        }
                    }
                    Incoming::Msg(ClientMsg::Resize(r)) => size = (r.cols, r.rows),
                    Incoming::Msg(ClientMsg::Release) => self.edge.handle.release(ticket.id, EndReason::Released).await,
                    Incoming::Msg(ClientMsg::Hello(_)) => {
                        return Err(ProtoError::fatal("bad_json", close::BAD_MESSAGE, "hello sent twice").into());
                    }
                    Incoming::Nothing => {}
                },
            }
        }

        let Some(term) = self.edge.terminals.get(&ticket.id) else {
            return Err(ProtoError::fatal("internal", close::INTERNAL, "session running without a terminal").into());
        };
        // Offset 0 asks for everything the ring still holds (a page reload): what it no longer holds was never
        // the client's, so nothing is reported missed. An offset past the end is answered from the end, and said.
        let from = hello.resume.as_ref().map(|r| r.offset).filter(|o| *o > 0);
        let mut reader = term.subscribe(from);
        let missed = from.map_or(0, |f| reader.offset().saturating_sub(f));
        let mut said = self.send_json(&ServerMsg::Ready { offset: reader.offset(), missed }).await;
        if let Some(asked) = from.filter(|f| *f > reader.offset())
            && said.is_ok()
        {
            let message = format!(
                "resume.offset {asked} is past the end of this session's output ({}); output continues from there",
                reader.offset()
            );
            said = self
                .send_json(&ServerMsg::Warning { code: "offset_past_end", message, seconds: None, names: None })
                .await;
        }
        if let Err(e) = said {
            term.unsubscribe(&reader);
            return Err(e);
        }
        // The first prompt is already in the ring: send it without waiting for Docker's resize call.
        let initial_resize = {
            let term = term.clone();
            let metrics = self.edge.metrics.clone();
            tokio::spawn(async move {
                let _ = resize(&metrics, &term, size).await;
            })
        };
        self.initial_resize = Some(initial_resize);
        for data in pending {
            let _ = term.write(data).await;
        }
        let result = self.pump(&term, &mut reader, &mut ticket).await;
        term.unsubscribe(&reader);
        result
    }

    async fn admit(&mut self, hello: &Hello) -> Result<Ticket, End> {
        let identity = auth::authenticate(&self.policy.auth, hello.token.as_deref(), crate::clock::unix_secs())
            .map_err(auth_error)?;
        if let Some(resume) = &hello.resume {
            let id: SessionId = resume.session.parse().map_err(|_| {
                ProtoError::fatal(
                    "bad_session_id",
                    close::BAD_MESSAGE,
                    "resume.session must be 32 lowercase hex digits",
                )
            })?;
            let ticket = self.edge.handle.resume(id, resume.secret.clone()).await.map_err(errors::resume_error)?;
            info!(session = %id, "resumed");
            self.send_json(&ServerMsg::Session { session: id.to_string(), secret: None, resumed: true }).await?;
            return Ok(ticket);
        }
        let profile_name =
            auth::choose_profile(&identity, &self.policy, hello.profile.as_deref()).map_err(auth_error)?;
        let Some(profile) = self.policy.profiles.get(&profile_name) else {
            return Err(ProtoError::fatal("unknown_profile", close::BAD_MESSAGE, "no such profile").into());
        };
        let (env, ignored) = auth::session_env(profile, &identity, &hello.env, &hello.credentials);
        let (secret, secret_hash) = auth::new_resume_secret().map_err(auth_error)?;
        let req = SessionRequest {
            profile: Some(profile_name),
            kind: identity.kind,
            env,
            resume_hash: Some(secret_hash),
            client_ip: Some(self.ip),
            id: Some(self.announced),
        };
        let mut told = None;
        let ticket = match self.edge.handle.open(req).await {
            Ok(Admission::Admitted(t)) => t,
            Ok(Admission::Queued { mut position, mut result }) => loop {
                let p = *position.borrow_and_update();
                if told != Some(p) {
                    told = Some(p);
                    self.send_json(&ServerMsg::Queued { position: p }).await?;
                }
                tokio::select! {
                    r = &mut result => break r.unwrap_or(Err(OpenError::Stopped)).map_err(open_error)?,
                    _ = position.changed() => {}
                    incoming = self.recv() => { incoming?; }
                }
            },
            Err(e) => return Err(open_error(e)),
        };
        debug!(session = %ticket.id, kind = identity.kind.as_str(), "admitted");
        self.send_json(&ServerMsg::Session {
            session: ticket.id.to_string(),
            secret: Some(messages::SecretStr(&secret)),
            resumed: false,
        })
        .await?;
        if !ignored.is_empty() {
            self.send_json(&ServerMsg::Warning {
                code: "env_ignored",
                message: "these names are not allowed by the profile and were ignored".into(),
                seconds: None,
                names: Some(ignored),
            })
            .await?;
        }
        Ok(ticket)
    }

    /// The data path: output to the client, input to the shell, until something ends it.
    async fn pump(
        &mut self,
        term: &Arc<Terminal>,
        reader: &mut crate::terminal::Reader,
        ticket: &mut Ticket,
    ) -> Result<End, End> {
        let mut ping = tokio::time::interval(self.policy.server.ping_interval);
        ping.reset();
        let idle_due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle_due);
        let mut warned_at: Option<berth_reconciler::Timestamp> = None;
        let mut shutdown = self.edge.shutdown.clone();
        let shutting_down = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(shutting_down);
        loop {
            tokio::select! {
                read = term.read(reader) => match read {
                    Read::Data { bytes, .. } => {
                        let n = bytes.len() as u64;
                        self.send(Message::binary(bytes)).await?;
                        term.ack(reader);
                        self.edge.metrics.bytes.with_label_values(&["out"]).inc_by(n);
                        if !self.first_output {
                            self.first_output = true;
                            self.edge.metrics.first_output.with_label_values::<&str>(&[]).observe(self.connected.elapsed().as_secs_f64());
                        }
                    }
                    Read::Gap { missed, .. } => self.send_json(&ServerMsg::Gap { missed }).await?,
                    Read::Superseded => {
                        return Err(ProtoError::fatal("taken_over", close::TAKEN_OVER, "another connection resumed this session").into());
                    }
                    Read::Closed => {
                        // The shell's stream ended: wait (bounded) for the controller to say why. When the engine
                        // is unreachable it cannot say, so the client is told that at once.
                        let deadline = tokio::time::sleep(Duration::from_secs(10));
                        tokio::pin!(deadline);
                        let mut readiness = self.edge.handle.readiness();
                        loop {
                            let st = ticket.status.borrow_and_update().clone();
                            if let Some(r) = ending(&st) {
                                return Ok(End::Exited(r));
                            }
                            if term.is_open() {
                                break;
                            }
                            if !readiness.borrow_and_update().docker_up {
                                return Err(ProtoError::fatal(
                                    "docker_unavailable",
                                    close::DOCKER_UNAVAILABLE,
                                    "the container engine is unreachable; the session stays resumable until it ends",
                                ).into());
                            }
                            tokio::select! {
                                c = ticket.status.changed() => if c.is_err() { return Ok(End::Exited(EndReason::Released)); },
                                Ok(()) = readiness.changed() => {}
                                () = &mut deadline => return Err(ProtoError::fatal("internal", close::INTERNAL, "terminal stream lost").into()),
                                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    }
                },
                changed = ticket.status.changed() => {
                    if changed.is_err() {
                        return Ok(End::Exited(EndReason::Released));
                    }
                    let st = ticket.status.borrow().clone();
                    if let Some(r) = ending(&st) {
                        // Let the last output through, then report.
                        drain(self, term, reader).await?;
                        return Ok(End::Exited(r));
                    }
                }
                incoming = self.recv() => match incoming? {
                    Incoming::Input(data) => {
                        if term.write(data).await.is_err() {
                            debug!("input dropped: terminal not attached");
                        }
                    }
                    Incoming::Msg(ClientMsg::Resize(r)) => {
                        // Sizes apply in the order the client sent them.
                        if let Some(first) = self.initial_resize.take() {
                            let _ = first.await;
                        }
                        if let Err(e) = resize(&self.edge.metrics, term, (r.cols, r.rows)).await {
                            debug!(error = %e, "resize failed");
                        }
                    }
                    Incoming::Msg(ClientMsg::Release) => self.edge.handle.release(ticket.id, EndReason::Released).await,
                    Incoming::Msg(ClientMsg::Hello(_)) => {
                        return Err(ProtoError::fatal("bad_json", close::BAD_MESSAGE, "hello sent twice").into());
                    }
                    Incoming::Nothing => {}
                },
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.policy.server.pong_timeout {
                        return Err(ProtoError::fatal("ping_timeout", close::PING_TIMEOUT, "nothing heard from the client").into());
                    }
                    self.send(Message::ping(Bytes::new())).await?;
                }
                () = &mut idle_due => {
                    let t = &self.policy.sessions;
                    let last = term.last_activity();
                    let now = crate::clock::now();
                    match idle::idle_check(last, now, t.idle_timeout, t.idle_warning, warned_at) {
                        idle::IdleCheck::Sleep(d) => idle_due.as_mut().reset(Instant::now() + d),
                        idle::IdleCheck::Warn(seconds) => {
                            warned_at = Some(last);
                            self.send_json(&ServerMsg::Warning {
                                code: "idle",
                                message: format!("no activity: this session ends in {seconds} s unless you type"),
                                seconds: Some(seconds),
                                names: None,
                            }).await?;
                        }
                    }
                }
                () = &mut shutting_down => {
                    return Err(ProtoError::fatal("draining", close::DRAINING, "berth is shutting down; reconnect to resume").into());
                }
            }
        }
    }
}
