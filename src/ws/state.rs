//! A connection's life as an explicit state machine. Each state owns the data it needs; [`Conn::serve`] is the
//! one place where one state becomes the next:
//!
//! ```text
//! awaiting hello ──> queued ──> starting ──> attached ──> detaching
//!        └───────────────────────^  (admitted at once, or resumed)
//! ```
//!
//! Every state may also go straight to detaching (an error, the session's end, the client leaving), which ends
//! the connection as `conn.rs` says.

use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::deadline::{Timed, deadline};
use berth_reconciler::{EndReason, Phase, Status, Timestamp};
use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};
use warp::filters::ws::Message;

use super::End;
use super::conn::{Conn, Incoming};
use super::errors::{self, auth_error, open_error};
use super::flow::{drain, ending, resize};
use super::idle;
use super::messages::{self, ClientMsg, Hello, ProtoError, ServerMsg, close};
use crate::auth;
use crate::controller::{Admission, OpenError, SessionRequest, Ticket};
use crate::metrics::Direction;
use crate::terminal::{Read, Reader, Terminal};

/// Where a connection is in its life.
pub(super) enum State {
    /// Connected: the first message must be a hello, within the hello timeout.
    AwaitingHello,
    /// A new session waits in the admission queue for capacity.
    Queued(Queued),
    /// The session is admitted (or resumed) and its shell does not run yet: input is buffered, the last size kept.
    Starting(Starting),
    /// The shell runs: output to the client, input to the shell.
    Attached(Attached),
    /// Joined through a share grant: output to the client; input only for a writer.
    Watching(Box<super::viewer::Watching>),
    /// The connection ends this way.
    Detaching(End),
}

impl From<End> for State {
    fn from(end: End) -> Self {
        Self::Detaching(end)
    }
}

impl From<ProtoError> for State {
    fn from(e: ProtoError) -> Self {
        Self::Detaching(End::Error(e))
    }
}

/// What the hello asked for that later states still need.
pub(super) struct Asked {
    /// The terminal size (the hello's, then the last resize before the shell runs).
    pub(super) size: (u32, u32),
    /// The output offset a resume asked to continue from (none: a new session, or everything the ring holds).
    from: Option<u64>,
}

/// A new session waiting for capacity.
pub(super) struct Queued {
    position: watch::Receiver<usize>,
    result: oneshot::Receiver<Result<Ticket, OpenError>>,
    /// The position last told to the client.
    told: Option<usize>,
    opened: Opened,
}

/// What the client is told once its new session is admitted.
pub(super) struct Opened {
    asked: Asked,
    secret: String,
    /// Environment names the profile does not allow.
    ignored: Vec<String>,
}

/// An admitted session whose shell does not run yet.
pub(super) struct Starting {
    ticket: Ticket,
    asked: Asked,
    /// Input sent before the shell runs, and its size in bytes.
    input: Vec<Bytes>,
    input_bytes: usize,
    /// The phase last reported.
    told: Option<Phase>,
}

/// A session whose shell runs.
pub(super) struct Attached {
    ticket: Ticket,
    term: Arc<Terminal>,
    reader: Reader,
    /// The resize to the hello's size, sent while output already flows.
    initial_resize: Option<JoinHandle<()>>,
    first_output: bool,
    /// Who is connected through grants, told to the client when it changes.
    presence: Option<watch::Receiver<crate::controller::Presence>>,
}

impl Conn {
    /// Runs the state machine until the connection ends, and says how.
    pub(super) async fn serve(&mut self) -> End {
        let mut state = State::AwaitingHello;
        loop {
            state = match state {
                State::AwaitingHello => self.awaiting_hello().await,
                State::Queued(q) => self.queued(q).await,
                State::Starting(s) => self.starting(s).await,
                State::Attached(a) => self.attached(a).await,
                State::Watching(w) => self.watching(*w).await,
                State::Detaching(end) => return end,
            };
        }
    }

    /// Awaiting hello → queued, starting or detaching.
    async fn awaiting_hello(&mut self) -> State {
        let now = crate::clock::now();
        let accepted = Timed::Connection { accepted: self.accepted };
        let wait = deadline(&accepted, &self.policy, now).wake(now).since(now);
        let hello = match tokio::time::timeout(wait, self.recv()).await {
            Err(_) => {
                return ProtoError::fatal("hello_timeout", close::HELLO, "no hello within the hello timeout").into();
            }
            Ok(Err(end)) => return end.into(),
            Ok(Ok(Incoming::Msg(ClientMsg::Hello(h)))) => {
                if let Some(p) = self.pending.take() {
                    p.hello();
                }
                h
            }
            Ok(Ok(_)) => {
                return ProtoError::fatal("missing_hello", close::HELLO, "the first message must be hello").into();
            }
        };
        let asked =
            Asked { size: (hello.cols, hello.rows), from: hello.resume.as_ref().map(|r| r.offset).filter(|o| *o > 0) };
        match self.admit(&hello, asked).await {
            Ok(state) | Err(state) => state,
        }
    }

    /// Authenticates the hello, then resumes its session or opens a new one.
    async fn admit(&mut self, hello: &Hello, asked: Asked) -> Result<State, State> {
        if let Some(join) = &hello.join {
            return self.join(hello, join, asked).await;
        }
        let identity = auth::authenticate(&self.policy.auth, hello.token.as_deref(), crate::clock::unix_secs())
            .map_err(auth_error)?;
        if let Some(resume) = &hello.resume {
            let id: berth_reconciler::SessionId = resume.session.parse().map_err(|_| {
                End::from(ProtoError::fatal(
                    "bad_session_id",
                    close::BAD_MESSAGE,
                    "resume.session must be 32 lowercase hex digits",
                ))
            })?;
            let ticket = self
                .edge
                .handle
                .resume(id, resume.secret.clone())
                .await
                .map_err(|e| End::from(errors::resume_error(e)))?;
            info!(session = %id, "resumed");
            self.send_json(&ServerMsg::Session { session: id.to_string(), secret: None, resumed: true }).await?;
            return Ok(self.holding(ticket, asked));
        }
        let profile_name =
            auth::choose_profile(&identity, &self.policy, hello.profile.as_deref()).map_err(auth_error)?;
        let Some(profile) = self.policy.profiles.get(&profile_name) else {
            return Err(End::from(ProtoError::fatal("unknown_profile", close::BAD_MESSAGE, "no such profile")).into());
        };
        let (env, ignored) = auth::session_env(profile, &identity, &hello.env, &hello.credentials);
        let (secret, secret_hash) = auth::new_resume_secret().map_err(auth_error)?;
        let size = u16::try_from(asked.size.0).ok().zip(u16::try_from(asked.size.1).ok());
        let req = SessionRequest {
            profile: Some(profile_name),
            kind: identity.kind,
            env,
            resume_hash: Some(secret_hash),
            client_ip: Some(self.ip),
            id: Some(self.announced),
            identity: identity.name.clone(),
            size,
        };
        let opened = Opened { asked, secret, ignored };
        match self.edge.handle.open(req).await.map_err(open_error)? {
            Admission::Admitted(ticket) => {
                debug!(session = %ticket.id, kind = identity.kind.as_str(), "admitted");
                self.opened(ticket, opened).await
            }
            Admission::Queued { position, result } => {
                Ok(State::Queued(Queued { position, result, told: None, opened }))
            }
        }
    }

    /// Queued → starting or detaching. Input and messages while waiting are read (so a close is seen) and
    /// dropped; the size stays the hello's.
    async fn queued(&mut self, mut q: Queued) -> State {
        let outcome = loop {
            let p = *q.position.borrow_and_update();
            if q.told != Some(p) {
                q.told = Some(p);
                if let Err(end) = self.send_json(&ServerMsg::Queued { position: p }).await {
                    return end.into();
                }
            }
            tokio::select! {
                r = &mut q.result => break r.unwrap_or(Err(OpenError::Stopped)),
                _ = q.position.changed() => {}
                incoming = self.recv() => if let Err(end) = incoming { return end.into(); },
            }
        };
        match outcome {
            Ok(ticket) => {
                debug!(session = %ticket.id, "admitted from the queue");
                match self.opened(ticket, q.opened).await {
                    Ok(state) | Err(state) => state,
                }
            }
            Err(e) => open_error(e).into(),
        }
    }

    /// Tells the client about its new session (then which environment names were ignored).
    async fn opened(&mut self, ticket: Ticket, opened: Opened) -> Result<State, State> {
        let Opened { asked, secret, ignored } = opened;
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
        Ok(self.holding(ticket, asked))
    }

    /// The connection holds the session once the client knows it: from here on, leaving detaches it.
    fn holding(&mut self, ticket: Ticket, asked: Asked) -> State {
        self.held = Some((ticket.id, ticket.lease));
        tracing::Span::current().record("session", tracing::field::display(ticket.id));
        State::Starting(Starting { ticket, asked, input: Vec::new(), input_bytes: 0, told: None })
    }

    /// Starting → attached or detaching: reports progress, buffers input and keeps the last size until the
    /// shell runs.
    async fn starting(&mut self, mut s: Starting) -> State {
        loop {
            let status = s.ticket.status.borrow_and_update().clone();
            if let Some(reason) = ending(&status) {
                return match reason {
                    EndReason::CreateFailed { error } => End::from(errors::create_failed(&error)).into(),
                    r => End::Exited(r).into(),
                };
            }
            if status.phase == Phase::Running {
                return self.attach(s).await;
            }
            if s.told != Some(status.phase) {
                s.told = Some(status.phase);
                if let Err(end) = self.send_json(&ServerMsg::Status { phase: status.phase.as_str() }).await {
                    return end.into();
                }
            }
            let step = tokio::select! {
                changed = s.ticket.status.changed() => {
                    if changed.is_err() {
                        return End::Exited(EndReason::Released).into();
                    }
                    Ok(())
                }
                incoming = self.recv() => self.while_starting(&mut s, incoming).await,
            };
            if let Err(end) = step {
                return end.into();
            }
        }
    }

    async fn while_starting(&mut self, s: &mut Starting, incoming: Result<Incoming, End>) -> Result<(), End> {
        match incoming? {
            Incoming::Input(data) => {
                if s.input_bytes + data.len() <= self.policy.server.input_buffer_bytes {
                    s.input_bytes += data.len();
                    s.input.push(data);
                } else {
                    self.send_json(&ServerMsg::Warning {
                        code: "input_overflow",
                        message: "input before the shell started exceeded the buffer; some was dropped".into(),
                        seconds: None,
                        names: None,
                    })
                    .await?;
                }
            }
            Incoming::Msg(ClientMsg::Resize(r)) => s.asked.size = (r.cols, r.rows),
            Incoming::Msg(m) => self.common_msg(&s.ticket, m).await?,
            Incoming::Nothing => {}
        }
        Ok(())
    }

    /// What a known message other than a resize means once the connection holds a session.
    async fn common_msg(&self, ticket: &Ticket, msg: ClientMsg) -> Result<(), End> {
        match msg {
            ClientMsg::Release => {
                self.edge.handle.release(ticket.id, EndReason::Released).await;
                Ok(())
            }
            ClientMsg::Hello(_) => Err(ProtoError::fatal("bad_json", close::BAD_MESSAGE, "hello sent twice").into()),
            ClientMsg::Unknown(ty) => Err(ClientMsg::unknown_type(&ty).into()),
            ClientMsg::Resize(_) => Ok(()),
            ClientMsg::Share(share) => self.share(ticket, share).await,
            ClientMsg::Revoke(grant_id) => self.revoke(ticket, grant_id).await,
        }
    }

    /// Starting → attached: `ready` (and what a resume missed), the buffered input, and the size.
    async fn attach(&mut self, s: Starting) -> State {
        let Starting { ticket, asked, input, .. } = s;
        let Some(term) = self.edge.terminals.get(&ticket.id) else {
            return End::from(ProtoError::fatal("internal", close::INTERNAL, "session running without a terminal"))
                .into();
        };
        // Offset 0 asks for everything the ring still holds (a page reload): what it no longer holds was never
        // the client's, so nothing is reported missed. An offset past the end is answered from the end, and said.
        let from = asked.from;
        let reader = term.subscribe(from);
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
            return e.into();
        }
        // The first prompt is already in the ring: send it without waiting for Docker's resize call.
        let initial_resize = {
            let term = term.clone();
            let metrics = self.edge.metrics.clone();
            let size = asked.size;
            tokio::spawn(async move {
                let _ = resize(&metrics, &term, size).await;
            })
        };
        for data in input {
            let _ = term.write(data).await;
        }
        let presence = self.edge.handle.presence(ticket.id, ticket.lease).await;
        if let Some(p) = &presence
            && !p.borrow().is_empty()
        {
            let list = p.borrow().clone();
            if let Err(e) = self.send_json(&ServerMsg::Presence { count: list.len(), viewers: list }).await {
                term.unsubscribe(&reader);
                return e.into();
            }
        }
        State::Attached(Attached {
            ticket,
            term,
            reader,
            initial_resize: Some(initial_resize),
            first_output: false,
            presence,
        })
    }

    /// Attached → detaching: the data path, until something ends it.
    async fn attached(&mut self, mut a: Attached) -> State {
        let end = match self.pump(&mut a).await {
            Ok(end) | Err(end) => end,
        };
        a.term.unsubscribe(&a.reader);
        end.into()
    }

    async fn pump(&mut self, a: &mut Attached) -> Result<End, End> {
        let term = a.term.clone();
        let mut ping = tokio::time::interval(self.policy.server.ping_interval);
        ping.reset();
        let idle_due = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle_due);
        let mut warned_at: Option<Timestamp> = None;
        let mut shutdown = self.edge.shutdown.clone();
        let shutting_down = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        tokio::pin!(shutting_down);
        loop {
            tokio::select! {
                read = term.read(&mut a.reader) => {
                    if let Some(end) = self.output(a, read).await? {
                        return Ok(end);
                    }
                }
                changed = a.ticket.status.changed() => {
                    if changed.is_err() {
                        return Ok(End::Exited(EndReason::Released));
                    }
                    let st = a.ticket.status.borrow().clone();
                    if let Some(r) = ending(&st) {
                        // Let the last output through, then report.
                        drain(self, &term, &mut a.reader).await?;
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
                        if let Some(first) = a.initial_resize.take() {
                            let _ = first.await;
                        }
                        if let Err(e) = resize(&self.edge.metrics, &term, (r.cols, r.rows)).await {
                            debug!(error = %e, "resize failed");
                        }
                    }
                    Incoming::Msg(m) => self.common_msg(&a.ticket, m).await?,
                    Incoming::Nothing => {}
                },
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.policy.server.pong_timeout {
                        return Err(ProtoError::fatal("ping_timeout", close::PING_TIMEOUT, "nothing heard from the client").into());
                    }
                    self.send(Message::ping(Bytes::new())).await?;
                }
                Some(list) = super::viewer::presence_changed(&mut a.presence) => {
                    self.send_json(&ServerMsg::Presence { count: list.len(), viewers: list }).await?;
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

    /// One read from the terminal while attached: output goes to the client; `Some` when it ends the connection.
    async fn output(&mut self, a: &mut Attached, read: Read) -> Result<Option<End>, End> {
        match read {
            Read::Data { bytes, .. } => {
                let n = bytes.len() as u64;
                self.send(Message::binary(bytes)).await?;
                a.term.ack(&a.reader);
                self.edge.metrics.bytes(Direction::Out, n);
                if !a.first_output {
                    a.first_output = true;
                    self.edge.metrics.first_output(a.ticket.start, self.connected.elapsed());
                }
                Ok(None)
            }
            Read::Gap { missed, .. } => self.send_json(&ServerMsg::Gap { missed }).await.map(|()| None),
            Read::Superseded => {
                Err(ProtoError::fatal("taken_over", close::TAKEN_OVER, "another connection resumed this session")
                    .into())
            }
            Read::Closed => self.stream_closed(&a.term, &mut a.ticket.status).await,
        }
    }

    /// The shell's stream ended: wait (bounded) for the controller to say why. When the engine is unreachable it
    /// cannot say, so the client is told that at once. `None`: the terminal is open again.
    pub(super) async fn stream_closed(
        &self,
        term: &Terminal,
        status: &mut watch::Receiver<Status>,
    ) -> Result<Option<End>, End> {
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        let mut readiness = self.edge.handle.readiness();
        loop {
            let st = status.borrow_and_update().clone();
            if let Some(r) = ending(&st) {
                return Ok(Some(End::Exited(r)));
            }
            if term.is_open() {
                return Ok(None);
            }
            if !readiness.borrow_and_update().docker_up {
                return Err(ProtoError::fatal(
                    "docker_unavailable",
                    close::DOCKER_UNAVAILABLE,
                    "the container engine is unreachable; the session stays resumable until it ends",
                )
                .into());
            }
            tokio::select! {
                c = status.changed() => if c.is_err() { return Ok(Some(End::Exited(EndReason::Released))); },
                Ok(()) = readiness.changed() => {}
                () = &mut deadline => return Err(ProtoError::fatal("internal", close::INTERNAL, "terminal stream lost").into()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}
