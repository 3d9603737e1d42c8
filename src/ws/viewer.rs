//! Shared sessions on the connection's side (decision 0026): the owner's `share` and `revoke`, and the life of a
//! connection that joined through a grant. A joined connection reads the ring through its own viewer cursor (the
//! owner is not superseded and never waits for it), gets `gap`s when it falls behind, and is closed when its grant
//! is revoked or expires, or when the session ends. A viewer's input and resizes are dropped (it is told once); a
//! writer's go to the shell like the owner's.

use std::time::Duration;

use berth_reconciler::{Phase, SessionId, Status};
use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info};
use warp::filters::ws::Message;

use super::End;
use super::conn::{Conn, Incoming};
use super::errors::{self, auth_error};
use super::flow::{drain, ending, resize};
use super::messages::{ClientMsg, Hello, Join, ProtoError, SecretStr, ServerMsg, Share, close};
use super::state::{Asked, State};
use crate::controller::{Joined, Presence, Role, Ticket};
use crate::terminal::{Read, Reader, Terminal};

/// A connection joined through a grant.
pub(super) struct Watching {
    id: SessionId,
    status: watch::Receiver<Status>,
    joined: Joined,
    size: (u32, u32),
    /// Whether the viewer was told its input is dropped.
    told_read_only: bool,
    /// A viewer typed before `ready`: it is told after `ready`, where the protocol puts warnings.
    read_only_due: bool,
    /// A writer's input before the shell runs, delivered after `ready` (as the owner's is), within
    /// `server.input_buffer_bytes`.
    early: Vec<Bytes>,
    early_bytes: usize,
}

/// The next presence when it changes; never resolves when there is none to watch (or its sender is gone).
pub(super) async fn presence_changed(p: &mut Option<watch::Receiver<Presence>>) -> Option<Presence> {
    if let Some(rx) = p
        && rx.changed().await.is_ok()
    {
        return Some(rx.borrow_and_update().clone());
    }
    std::future::pending().await
}

impl Conn {
    /// Hello with `join`: checks the grant and joins (no token needed: the grant is the capability; a token
    /// given is verified, and its identity shows in the owner's presence).
    pub(super) async fn join(&mut self, hello: &Hello, join: &Join, asked: Asked) -> Result<State, State> {
        if hello.resume.is_some() {
            return Err(ProtoError::fatal("bad_json", close::BAD_MESSAGE, "hello has both resume and join").into());
        }
        let identity = match hello.token.as_deref() {
            Some(t) => {
                crate::auth::authenticate(&self.policy.auth, Some(t), crate::clock::unix_secs())
                    .map_err(auth_error)?
                    .name
            }
            None => None,
        };
        let id: SessionId = join.session.parse().map_err(|_| {
            End::from(ProtoError::fatal(
                "bad_session_id",
                close::BAD_MESSAGE,
                "join.session must be 32 lowercase hex digits",
            ))
        })?;
        let (joined, status) = self
            .edge
            .handle
            .join(id, join.grant.clone(), identity)
            .await
            .map_err(|e| End::from(errors::join_error(&e)))?;
        self.joined = Some((id, joined.conn));
        tracing::Span::current().record("session", tracing::field::display(id));
        info!(session = %id, role = joined.role.as_str(), grant = %joined.grant_id, "joined through a grant");
        self.send_json(&ServerMsg::Joined {
            session: id.to_string(),
            role: joined.role.as_str(),
            grant_id: joined.grant_id.clone(),
            expires_at: joined.expires_at.as_millis() / 1000,
        })
        .await?;
        Ok(State::Watching(Box::new(Watching {
            id,
            status,
            joined,
            size: asked.size,
            told_read_only: false,
            read_only_due: false,
            early: Vec::new(),
            early_bytes: 0,
        })))
    }

    /// The owner's `share`: a grant, its secret told once.
    pub(super) async fn share(&self, ticket: &Ticket, share: Share) -> Result<(), End> {
        let Share { role, ttl, label } = share;
        match self.edge.handle.share(ticket.id, ticket.lease, role, ttl, label).await {
            Ok(g) => {
                info!(role = role.as_str(), grant = %g.grant_id, "share grant made");
                let url = format!("/?session={}#grant={}", ticket.id, g.secret);
                self.send_json(&ServerMsg::Shared {
                    grant_id: g.grant_id,
                    grant: SecretStr(&g.secret),
                    role: g.role.as_str(),
                    expires_at: g.expires_at.as_millis() / 1000,
                    url,
                })
                .await
            }
            Err(e) => self.send(Message::text(errors::share_error(&e).to_json())).await,
        }
    }

    /// The owner's `revoke`: the grant stops working, and its connections are closed.
    pub(super) async fn revoke(&self, ticket: &Ticket, grant_id: String) -> Result<(), End> {
        match self.edge.handle.revoke(ticket.id, ticket.lease, grant_id.clone()).await {
            Ok(()) => self.send_json(&ServerMsg::Revoked { grant_id }).await,
            Err(e) => self.send(Message::text(errors::share_error(&e).to_json())).await,
        }
    }

    /// Watching → detaching: waits for the shell, then pumps its output until something ends the connection.
    pub(super) async fn watching(&mut self, mut w: Watching) -> State {
        let expires = w.joined.expires_at.since(crate::clock::now());
        let expiry = tokio::time::sleep(expires);
        tokio::pin!(expiry);
        let mut revoked = w.joined.revoked.clone();
        let res = async {
            let term = self.until_running(&mut w, &mut revoked, expiry.as_mut()).await?;
            let mut reader = term.watch();
            self.send_json(&ServerMsg::Ready { offset: reader.offset(), missed: 0 }).await?;
            if w.joined.role == Role::Writer {
                let _ = resize(&self.edge.metrics, &term, w.size).await;
                for data in std::mem::take(&mut w.early) {
                    let _ = term.write(data).await;
                }
            }
            if w.read_only_due && !w.told_read_only {
                self.tell_read_only(&mut w).await?;
            }
            self.watch_pump(&mut w, &term, &mut reader, &mut revoked, expiry.as_mut()).await
        }
        .await;
        match res {
            Ok(end) | Err(end) => end.into(),
        }
    }

    /// Waits for the session's shell to run (dropping input meanwhile), and returns its terminal.
    async fn until_running(
        &mut self,
        w: &mut Watching,
        revoked: &mut watch::Receiver<bool>,
        mut expiry: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<std::sync::Arc<Terminal>, End> {
        let mut told = None;
        loop {
            let st = w.status.borrow_and_update().clone();
            if let Some(r) = ending(&st) {
                return Err(End::Exited(r));
            }
            if st.phase == Phase::Running
                && let Some(term) = self.edge.terminals.get(&w.id)
            {
                return Ok(term);
            }
            if told != Some(st.phase) && st.phase != Phase::Running {
                told = Some(st.phase);
                self.send_json(&ServerMsg::Status { phase: st.phase.as_str() }).await?;
            }
            tokio::select! {
                c = w.status.changed() => if c.is_err() { return Err(End::Exited(berth_reconciler::EndReason::Released)); },
                incoming = self.recv() => self.joined_msg(w, None, incoming?).await?,
                by_owner = async { revoked.wait_for(|r| *r).await.is_ok() } => return Err(revoked_end(by_owner)),
                () = &mut expiry => return Err(expired()),
                // The terminal may appear just after the phase: look again shortly.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    async fn watch_pump(
        &mut self,
        w: &mut Watching,
        term: &std::sync::Arc<Terminal>,
        reader: &mut Reader,
        revoked: &mut watch::Receiver<bool>,
        mut expiry: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<End, End> {
        let mut ping = tokio::time::interval(self.policy.server.ping_interval);
        ping.reset();
        let mut shutdown = self.edge.shutdown.clone();
        loop {
            tokio::select! {
                read = term.read(reader) => match read {
                    Read::Data { bytes, .. } => self.send(Message::binary(bytes)).await?,
                    Read::Gap { missed, .. } => self.send_json(&ServerMsg::Gap { missed }).await?,
                    Read::Closed => {
                        if let Some(end) = self.stream_closed(term, &mut w.status).await? {
                            return Ok(end);
                        }
                    }
                    Read::Superseded => {
                        return Err(ProtoError::fatal("internal", close::INTERNAL, "viewer superseded").into());
                    }
                },
                changed = w.status.changed() => {
                    if changed.is_err() {
                        return Ok(End::Exited(berth_reconciler::EndReason::Released));
                    }
                    let st = w.status.borrow().clone();
                    if let Some(r) = ending(&st) {
                        drain(self, term, reader).await?;
                        return Ok(End::Exited(r));
                    }
                }
                incoming = self.recv() => self.joined_msg(w, Some(term), incoming?).await?,
                by_owner = async { revoked.wait_for(|r| *r).await.is_ok() } => return Err(revoked_end(by_owner)),
                () = &mut expiry => return Err(expired()),
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.policy.server.pong_timeout {
                        return Err(ProtoError::fatal("ping_timeout", close::PING_TIMEOUT, "nothing heard from the client").into());
                    }
                    self.send(Message::ping(Bytes::new())).await?;
                }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    return Err(ProtoError::fatal("draining", close::DRAINING, "berth is shutting down; join again").into());
                }
            }
        }
    }

    /// What a joined connection sends: a writer's input and resizes reach the shell (once it runs); a viewer's
    /// are dropped, and it is told once. Only the owner shares, revokes or releases.
    async fn joined_msg(
        &mut self,
        w: &mut Watching,
        term: Option<&std::sync::Arc<Terminal>>,
        incoming: Incoming,
    ) -> Result<(), End> {
        let writer = w.joined.role == Role::Writer;
        match incoming {
            Incoming::Input(data) if writer => match term {
                Some(t) => {
                    if t.write(data).await.is_err() {
                        debug!("input dropped: terminal not attached");
                    }
                }
                None if w.early_bytes + data.len() <= self.policy.server.input_buffer_bytes => {
                    w.early_bytes += data.len();
                    w.early.push(data);
                }
                None => {
                    self.send_json(&ServerMsg::Warning {
                        code: "input_overflow",
                        message: "input before the shell started exceeded the buffer; some was dropped".into(),
                        seconds: None,
                        names: None,
                    })
                    .await?;
                }
            },
            Incoming::Msg(ClientMsg::Resize(r)) if writer => {
                w.size = (r.cols, r.rows);
                if let Some(t) = term
                    && let Err(e) = resize(&self.edge.metrics, t, w.size).await
                {
                    debug!(error = %e, "resize failed");
                }
            }
            Incoming::Input(_) | Incoming::Msg(ClientMsg::Resize(_)) => {
                if term.is_none() {
                    w.read_only_due = true;
                } else if !w.told_read_only {
                    self.tell_read_only(w).await?;
                }
            }
            Incoming::Msg(ClientMsg::Share(_) | ClientMsg::Revoke(_) | ClientMsg::Release) => {
                let e = ProtoError::soft("share_refused", "only the session's owner shares, revokes or releases it");
                self.send(Message::text(e.to_json())).await?;
            }
            Incoming::Msg(ClientMsg::Hello(_)) => {
                return Err(ProtoError::fatal("bad_json", close::BAD_MESSAGE, "hello sent twice").into());
            }
            Incoming::Msg(ClientMsg::Unknown(ty)) => return Err(ClientMsg::unknown_type(&ty).into()),
            Incoming::Nothing => {}
        }
        Ok(())
    }
}

impl Conn {
    /// Tells a viewer, once, that its input and resizes are dropped.
    async fn tell_read_only(&self, w: &mut Watching) -> Result<(), End> {
        w.told_read_only = true;
        self.send_json(&ServerMsg::Warning {
            code: "read_only",
            message: "this connection joined as a viewer: its input and resizes are dropped".into(),
            seconds: None,
            names: None,
        })
        .await
    }
}

fn revoked_end(by_owner: bool) -> End {
    let message = if by_owner { "the owner revoked this grant" } else { "the grant is gone" };
    ProtoError::fatal("grant_revoked", close::GRANT_REVOKED, message).into()
}

fn expired() -> End {
    ProtoError::fatal("grant_expired", close::GRANT_EXPIRED, "the grant has expired").into()
}
