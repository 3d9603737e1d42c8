//! The HTTP upgrade of `GET /ws`: the checks a connection passes before it becomes a WebSocket (subprotocol,
//! session id in the query, client address through trusted proxies, origin, per-IP rate, readiness), and the
//! `berth-session` header that tells the load balancer which session the connection serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::SessionId;
use tokio::time::Instant;
use tracing::{Instrument, info_span};
use warp::Filter;
use warp::filters::ws::Ws;
use warp::http::StatusCode;
use warp::reply::Reply;

use super::messages::SUBPROTOCOL;
use super::{Conn, Edge, SESSION_HEADER, ending};
use crate::limits::{client_ip_from_lines, origin_allowed};
use crate::listener::Pending;
use crate::metrics::Rejection;

/// `GET /ws`.
pub fn routes(edge: Arc<Edge>) -> impl Filter<Extract = (Box<dyn Reply>,), Error = warp::Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(warp::ws())
        .and(crate::listener::remote())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and(warp::header::headers_cloned())
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(crate::listener::pending())
        .and(warp::any().map(move || edge.clone()))
        .then(upgrade)
}

fn refuse(code: StatusCode, msg: &str) -> Box<dyn Reply> {
    Box::new(warp::reply::with_status(format!("{msg}\n"), code))
}

#[allow(clippy::too_many_arguments)]
async fn upgrade(
    ws: Ws,
    peer: Option<SocketAddr>,
    origin: Option<String>,
    host: Option<String>,
    headers: warp::http::HeaderMap,
    protocols: Option<String>,
    query: String,
    pending: Option<Pending>,
    edge: Arc<Edge>,
) -> Box<dyn Reply> {
    let connected = Instant::now();
    let policy = edge.policy.borrow().clone();
    let offered = protocols.as_deref().unwrap_or("").split(',').any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        edge.metrics.rejected(Rejection::BadRequest);
        return refuse(StatusCode::BAD_REQUEST, "berth: offer the WebSocket subprotocol berth.v1");
    }
    let asked = match query.split('&').find_map(|kv| kv.strip_prefix("session=")) {
        None => None,
        Some(s) => match s.parse::<SessionId>() {
            Ok(id) => Some(id),
            Err(_) => {
                edge.metrics.rejected(Rejection::BadRequest);
                return refuse(StatusCode::BAD_REQUEST, "berth: malformed session id in the query");
            }
        },
    };
    let Some(peer) = peer else {
        return refuse(StatusCode::BAD_REQUEST, "berth: no peer address");
    };
    // Repeated X-Forwarded-For lines combine in order (RFC 9110 §5.3); a line that is not text counts as empty.
    let xff: Vec<&str> = headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().unwrap_or("")).collect();
    let ip = client_ip_from_lines(peer, &xff, &policy.server.trusted_proxies);
    if !origin_allowed(origin.as_deref(), host.as_deref(), &policy.server.allowed_origins) {
        edge.metrics.rejected(Rejection::Unauthorized);
        return refuse(StatusCode::FORBIDDEN, "berth: origin not allowed");
    }
    if let Err(retry) = edge.limiter.check(ip) {
        edge.metrics.rejected(Rejection::RateLimited);
        let secs = retry.as_secs().max(1).to_string();
        return Box::new(warp::reply::with_header(
            warp::reply::with_status("berth: too many connections from this address\n", StatusCode::TOO_MANY_REQUESTS),
            "retry-after",
            secs,
        ));
    }
    let ready = edge.handle.readiness().borrow().clone();
    if let Some(why) = ready.why_not() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("berth: {why}"));
    }
    // The session this connection will serve, announced for the load balancer's stickiness: a new session's id
    // is drawn now, before the hello, so that the proxy can learn it from this response. A reconnect announces
    // its id only when this replica holds the session (after a takeover, that moves the stickiness here).
    let Ok(fresh) = SessionId::generate() else {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "berth: no randomness");
    };
    let announce = match asked {
        None => Some(fresh),
        Some(id) => holds_live(&edge, id).await.then_some(id),
    };
    let limit = policy.server.max_message_bytes;
    let reply = ws.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        let span = info_span!("ws", client = %ip, session = tracing::field::Empty);
        Conn::run(edge, socket, ip, connected, fresh, pending).instrument(span).await;
    });
    let reply = warp::reply::with_header(reply, "sec-websocket-protocol", SUBPROTOCOL);
    match announce {
        Some(id) => Box::new(warp::reply::with_header(reply, SESSION_HEADER, id.to_string())),
        None => Box::new(reply),
    }
}

/// Whether this replica holds `id` as a live session (not ended, not being removed): only then does the upgrade
/// announce it to the load balancer. A controller too busy to answer within a second gets no announcement (the
/// load balancer keeps the stickiness it has).
async fn holds_live(edge: &Edge, id: SessionId) -> bool {
    if edge.terminals.get(&id).is_none() {
        return false;
    }
    let detail = tokio::time::timeout(Duration::from_secs(1), edge.handle.show(id)).await.ok().flatten();
    detail.is_some_and(|d| ending(&d.session.status).is_none())
}
