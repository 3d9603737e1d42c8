//! One connection's task: the writer with room kept for the last words, the reading of frames (each classified
//! once, in `messages::Frame`), and the end: what the client is told, the detach, and the bounded linger. What
//! happens in between is the state machine in `state.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use berth_reconciler::{EndReason, Policy, SessionId, Timestamp};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug};
use warp::filters::ws::{Message, WebSocket};

use super::errors::{self, read_error};
use super::messages::{ClientMsg, Frame, ProtoError, ServerMsg, close};
use super::{Edge, End, LAST_WORDS_GRACE, OUT_QUEUE};
use crate::listener::Pending;
use crate::metrics::Direction;

/// What one connection holds whatever its state.
pub(super) struct Conn {
    pub(super) edge: Arc<Edge>,
    pub(super) policy: Arc<Policy>,
    out: mpsc::Sender<Message>,
    incoming: futures::stream::SplitStream<WebSocket>,
    pub(super) ip: IpAddr,
    pub(super) connected: Instant,
    /// When the connection's task started (the hello timeout runs from here).
    pub(super) accepted: Timestamp,
    pub(super) last_heard: Instant,
    /// The id a new session opened on this connection gets (announced in the upgrade response).
    pub(super) announced: SessionId,
    /// This connection's place among those without a hello yet.
    pub(super) pending: Option<Pending>,
    /// The session this connection holds, with its lease, once it has one: detached when the connection ends
    /// any way but the session's end.
    pub(super) held: Option<(SessionId, u64)>,
    /// The session this connection joined through a grant, with its joiner number: the controller is told when
    /// it leaves.
    pub(super) joined: Option<(SessionId, u64)>,
}

/// A frame as the states see it: unknown and invalid messages have been answered already.
pub(super) enum Incoming {
    /// A known control message.
    Msg(ClientMsg),
    /// Terminal input.
    Input(Bytes),
    /// Nothing for the state to do (a control frame, or a bad message answered with a non-fatal error).
    Nothing,
}

impl Conn {
    pub(super) async fn run(
        edge: Arc<Edge>,
        socket: WebSocket,
        ip: IpAddr,
        connected: Instant,
        announced: SessionId,
        pending: Option<Pending>,
    ) {
        edge.metrics.ws_opened();
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
            accepted: crate::clock::now(),
            last_heard: Instant::now(),
            announced,
            pending,
            held: None,
            joined: None,
        };
        let end = conn.serve().await;
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
                edge.metrics.ws_client_reset();
                "1006".to_owned()
            }
        };
        drop(last_words);
        if let Some((id, n)) = conn.joined {
            edge.handle.leave(id, n).await;
        }
        // Any way out but the end of the session leaves it detached and resumable.
        if let (Some((id, lease)), false) = (conn.held, matches!(end, End::Exited(_))) {
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
        edge.metrics.ws_closed(&label);
    }

    /// Sends, waiting at most the stall timeout for room.
    pub(super) async fn send(&self, msg: Message) -> Result<(), End> {
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

    pub(super) async fn send_json(&self, msg: &ServerMsg<'_>) -> Result<(), End> {
        self.send(Message::text(msg.to_json())).await
    }

    /// Reads one frame from the client and answers what is not for the state to handle: a close frame or a
    /// fatal error ends the connection, a non-fatal error is answered and the connection goes on, an unknown
    /// message type gets its one answer in every state.
    pub(super) async fn recv(&mut self) -> Result<Incoming, End> {
        let frame = match self.incoming.next().await {
            None => {
                debug!("the client's stream ended without a close frame");
                return Err(End::PeerReset);
            }
            Some(Err(e)) => return Err(read_error(&e)),
            Some(Ok(m)) => m,
        };
        self.last_heard = Instant::now();
        match Frame::classify(frame) {
            Frame::Input(data) => {
                self.edge.metrics.bytes(Direction::In, data.len() as u64);
                Ok(Incoming::Input(data))
            }
            Frame::Msg(ClientMsg::Unknown(ty)) => Err(End::Error(ClientMsg::unknown_type(&ty))),
            Frame::Msg(m) => Ok(Incoming::Msg(m)),
            Frame::Invalid(e) if e.close.is_none() => {
                self.send(Message::text(e.to_json())).await?;
                Ok(Incoming::Nothing)
            }
            Frame::Invalid(e) => Err(End::Error(e)),
            Frame::Close(code) => Err(End::PeerClosed(code)),
            Frame::Control => Ok(Incoming::Nothing),
        }
    }
}
