//! The listeners' accept loop: caps on open and pending connections, taken before a byte is read, and hyper's
//! HTTP/1 with a header-read timeout serving the warp routes. A connection is *pending* from accept until it
//! sends a WebSocket hello (the WebSocket layer reports that through [`Pending::hello`]); plain HTTP connections
//! stay pending for their whole life, which the header-read timeout bounds when they idle.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_reconciler::Policy;
use berth_reconciler::admission::ip_key;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};
use warp::Filter;

use crate::metrics::Metrics;

/// Why a connection was closed before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// `server.max_connections` connections were open.
    MaxConnections,
    /// `server.max_pending` connections had not yet sent a hello.
    MaxPending,
    /// `server.max_pending_per_ip` connections from this peer had not yet sent a hello.
    MaxPendingPerIp,
    /// The request head did not arrive within `server.header_read_timeout`.
    HeaderTimeout,
}

impl Dropped {
    /// Every reason, for pre-creating metric series.
    pub const ALL: [Self; 4] = [Self::MaxConnections, Self::MaxPending, Self::MaxPendingPerIp, Self::HeaderTimeout];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxPending => "max_pending",
            Self::MaxPendingPerIp => "max_pending_per_ip",
            Self::HeaderTimeout => "header_timeout",
        }
    }
}

/// The answer a connection over a cap gets, if the socket takes it at once; then it is closed.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 5\r\ncontent-length: 0\r\n\r\n";

/// Counts of one listener's connections: open, and pending in all and per peer key. Only peers with pending
/// connections have an entry, so the map never holds more than `server.max_pending` keys.
#[derive(Debug, Default)]
struct Counts {
    open: usize,
    pending: usize,
    per_key: HashMap<IpAddr, usize>,
}

/// One listener's connection counts, shared by its accept loop and its connections.
#[derive(Debug)]
pub struct Gate {
    counts: Mutex<Counts>,
    /// The number of open connections, for waiting until all have closed.
    open: watch::Sender<usize>,
    metrics: Arc<Metrics>,
}

impl Gate {
    fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { counts: Mutex::new(Counts::default()), open: watch::Sender::new(0), metrics })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Every update is a single statement group that leaves the counts consistent.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an open slot and a pending slot for a connection from `peer`, or says which cap is reached.
    fn admit(self: &Arc<Self>, peer: IpAddr, policy: &Policy) -> Result<Slot, Dropped> {
        let server = &policy.server;
        let exempt = server.trusted_proxies.iter().any(|n| n.contains(&peer));
        let key = (!exempt).then(|| ip_key(peer, &policy.limits));
        let mut c = self.counts();
        if c.open >= server.max_connections {
            return Err(Dropped::MaxConnections);
        }
        if c.pending >= server.max_pending {
            return Err(Dropped::MaxPending);
        }
        if let Some(k) = key
            && c.per_key.get(&k).copied().unwrap_or(0) >= server.max_pending_per_ip
        {
            return Err(Dropped::MaxPendingPerIp);
        }
        c.open += 1;
        c.pending += 1;
        if let Some(k) = key {
            *c.per_key.entry(k).or_insert(0) += 1;
        }
        self.publish(&c);
        let pending = Pending(Arc::new(PendingInner { gate: self.clone(), key, done: AtomicBool::new(false) }));
        Ok(Slot { gate: self.clone(), pending })
    }

    fn publish(&self, c: &Counts) {
        self.open.send_replace(c.open);
        self.metrics.set_connections(c.open, c.pending);
    }

    fn release_pending(&self, key: Option<IpAddr>) {
        let mut c = self.counts();
        c.pending = c.pending.saturating_sub(1);
        if let Some(k) = key
            && let Some(n) = c.per_key.get_mut(&k)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&k);
            }
        }
        self.publish(&c);
    }

    fn release_open(&self) {
        let mut c = self.counts();
        c.open = c.open.saturating_sub(1);
        self.publish(&c);
    }

    fn refuse(&self, why: Dropped) {
        self.metrics.connection_dropped(why);
    }
}

/// A connection's place among the pending ones, released once: when the WebSocket hello arrives, or when the
/// connection closes. Cheap to clone; every clone releases the same place.
#[derive(Debug, Clone)]
pub struct Pending(Arc<PendingInner>);

#[derive(Debug)]
struct PendingInner {
    gate: Arc<Gate>,
    key: Option<IpAddr>,
    done: AtomicBool,
}

impl Pending {
    /// The connection sent its hello: it no longer counts as pending.
    pub fn hello(&self) {
        if !self.0.done.swap(true, Ordering::AcqRel) {
            self.0.gate.release_pending(self.0.key);
        }
    }
}

impl Drop for PendingInner {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.gate.release_pending(self.key);
        }
    }
}

/// The warp filter that hands the WebSocket layer its connection's [`Pending`] (none outside this server, as in
/// `warp::test`).
pub fn pending() -> impl Filter<Extract = (Option<Pending>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<Pending>()
}

/// The TCP peer's address, for routes served by [`serve`] (warp's own `addr::remote` only knows its server).
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<Peer>().map(|p: Option<Peer>| p.map(|Peer(a)| a))
}

#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// What a connection holds while it is open: its open slot and its pending place. It travels with the socket
/// (an upgraded WebSocket keeps it), so the counts follow the socket's life.
#[derive(Debug)]
struct Slot {
    gate: Arc<Gate>,
    pending: Pending,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release_open();
    }
}

/// A TCP stream that carries its [`Slot`].
#[derive(Debug)]
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `filter` on `listener` until `shutdown` turns true, under the caps of the policy in force (read at
/// every accept, so a reload applies to the next connection). Then stops accepting, asks each connection to
/// finish its request and close, and returns once every connection of this listener, upgraded WebSockets
/// included, has closed.
pub async fn serve<F, R>(
    listener: TcpListener,
    filter: F,
    policy: watch::Receiver<Arc<Policy>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Filter<Extract = (R,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    R: warp::Reply,
{
    let gate = Gate::new(metrics);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopping(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a moment rather
                // than spin.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let policy = policy.borrow().clone();
        let slot = match gate.admit(peer.ip().to_canonical(), &policy) {
            Ok(slot) => slot,
            Err(why) => {
                gate.refuse(why);
                debug!(peer = %peer, reason = why.as_str(), "connection refused");
                let _ = stream.try_write(REFUSAL);
                continue;
            }
        };
        let svc = warp::service(filter.clone());
        let pending = slot.pending.clone();
        let io = TokioIo::new(Counted { stream, _slot: slot });
        let timeout = policy.server.header_read_timeout;
        let gate = gate.clone();
        let mut stop = shutdown.clone();
        let span = info_span!("http", peer = %peer);
        tokio::spawn(
            async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    req.extensions_mut().insert(pending.clone());
                    let mut svc = svc.clone();
                    tower_service::Service::call(&mut svc, req)
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(timeout);
                let conn = http.serve_connection(io, svc).with_upgrades();
                tokio::pin!(conn);
                let done = tokio::select! {
                    r = &mut conn => Some(r),
                    () = stopping(&mut stop) => None,
                };
                let result = match done {
                    Some(r) => r,
                    None => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                match result {
                    Ok(()) => {}
                    Err(e) if e.is_timeout() => gate.refuse(Dropped::HeaderTimeout),
                    Err(e) if e.is_incomplete_message() || e.is_canceled() => debug!(error = %e, "connection ended"),
                    Err(e) => debug!(error = %e, "connection error"),
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    let mut open = gate.open.subscribe();
    if open.wait_for(|n| *n == 0).await.is_err() {
        warn!("connection counter gone before the connections closed");
    }
}

/// Resolves once berth is shutting down (or its shutdown sender is gone).
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
