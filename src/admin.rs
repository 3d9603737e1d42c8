//! The admin API: list, show ("why is my session stuck?"), end sessions, and dry-run a reconcile.
//!
//! It is never open by default: it is served on its own listener (`server.admin_listen`), or on the main one
//! only when `server.admin_token_sha256` is set, and every request must carry that bearer token when one is set.
//! It does not serve browsers: a request with an `Origin` is refused, and without a token only a loopback
//! `Host` is answered, so neither a cross-site form nor a DNS-rebound page reaches it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use berth_reconciler::{EndReason, Policy, SessionId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use warp::Filter;
use warp::http::{Method, StatusCode};
use warp::reply::Reply;

use crate::controller::Handle;
use crate::reload::ReloadStatus;

mod recordings;

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The controller.
    pub handle: Handle,
    /// The policy in force.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// The last reload's outcome.
    pub reload: watch::Receiver<ReloadStatus>,
    /// Every session's terminal: which recordings are still being written.
    pub terminals: crate::terminal::Terminals,
}

/// The listener the admin routes are served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The main listener (`server.listen`): the admin API is there only with a token.
    Main,
    /// The admin listener (`server.admin_listen`), bound at this address.
    Dedicated(SocketAddr),
}

/// What of a request decides whether the admin API answers it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: Option<&'a Method>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The host the request names (`Host` header or absolute URI), without the port.
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Content-Type` header.
    pub content_type: Option<&'a str>,
}

/// Why the admin API refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The admin API is off on this listener (404, as if it were not there).
    Off,
    /// The admin token is missing or wrong (401).
    Token,
    /// A browser sent it: an `Origin`, or a body type an HTML form can send (403).
    Browser,
    /// Without a token, only a loopback `Host` is answered (403).
    Host,
}

impl Refusal {
    fn reply(self) -> Box<dyn Reply> {
        match self {
            Self::Off => Box::new(StatusCode::NOT_FOUND),
            Self::Token => Box::new(warp::reply::with_header(
                warp::reply::with_status("berth: admin token required\n", StatusCode::UNAUTHORIZED),
                "www-authenticate",
                "Bearer",
            )),
            Self::Browser => Box::new(warp::reply::with_status(
                "berth: the admin API does not serve browsers (the request carries an Origin or a form body)\n",
                StatusCode::FORBIDDEN,
            )),
            Self::Host => Box::new(warp::reply::with_status(
                "berth: without an admin token, the admin API answers only to Host localhost or a loopback address\n",
                StatusCode::FORBIDDEN,
            )),
        }
    }
}

/// Whether a request's `Authorization` header carries the admin token. With no token configured, only a
/// dedicated loopback admin listener is open (see [`admit`]); this returns true.
pub fn authorized(policy: &Policy, header: Option<&str>) -> bool {
    let Some(want) = policy.server.admin_token_sha256 else {
        return true;
    };
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    bool::from(got.ct_eq(&want.0))
}

/// Whether `host` (without its port) names this machine: `localhost` or a loopback address.
fn loopback_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Decides whether the admin API answers a request, before anything else is read.
///
/// # Errors
/// Why it does not: off on the main listener without a token; a request from a browser (any `Origin`, or a
/// state-changing request with a body type an HTML form can send); a missing or wrong token; and, with no token
/// configured, a listener that is not on loopback or a `Host` that does not name loopback (DNS rebinding).
pub fn admit(policy: &Policy, listener: Listener, head: &RequestHead<'_>) -> Result<(), Refusal> {
    let token = policy.server.admin_token_sha256.is_some();
    if listener == Listener::Main && !token {
        return Err(Refusal::Off);
    }
    let form = |ct: &str| {
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"].contains(&essence.as_str())
    };
    let safe = head.method.is_none_or(|m| m == Method::GET || m == Method::HEAD);
    if head.origin.is_some() || (!safe && head.content_type.is_some_and(form)) {
        return Err(Refusal::Browser);
    }
    if token {
        return if authorized(policy, head.authorization) { Ok(()) } else { Err(Refusal::Token) };
    }
    match listener {
        Listener::Dedicated(bound) if bound.ip().is_loopback() => {
            if head.host.is_some_and(loopback_host) {
                Ok(())
            } else {
                Err(Refusal::Host)
            }
        }
        // Never without a token off loopback, whatever the policy says.
        _ => Err(Refusal::Token),
    }
}

fn json_reply<T: serde::Serialize>(v: &T, code: StatusCode) -> Box<dyn Reply> {
    Box::new(warp::reply::with_status(warp::reply::json(v), code))
}

fn error(code: StatusCode, message: &str) -> Box<dyn Reply> {
    json_reply(&serde_json::json!({ "error": message }), code)
}

/// The admin routes, under `/admin/`, on `listener`.
pub fn routes(
    admin: Arc<Admin>,
    listener: Listener,
) -> impl Filter<Extract = (Box<dyn Reply>,), Error = warp::Rejection> + Clone {
    warp::path("admin")
        .and(warp::method())
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::host::optional())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::any().map(move || admin.clone()))
        .and_then(
            move |method: Method,
                  tail: warp::path::Tail,
                  auth: Option<String>,
                  host: Option<warp::host::Authority>,
                  origin: Option<String>,
                  content_type: Option<String>,
                  admin: Arc<Admin>| async move {
                let policy = admin.policy.borrow().clone();
                let head = RequestHead {
                    method: Some(&method),
                    authorization: auth.as_deref(),
                    host: host.as_ref().map(warp::host::Authority::host),
                    origin: origin.as_deref(),
                    content_type: content_type.as_deref(),
                };
                match admit(&policy, listener, &head) {
                    // Never open by default on the public listener: as if there were no such path.
                    Err(Refusal::Off) => Err(warp::reject::not_found()),
                    Err(refusal) => Ok(refusal.reply()),
                    Ok(()) => Ok(handle(&admin, &method, tail.as_str()).await),
                }
            },
        )
}

async fn handle(admin: &Admin, method: &Method, path: &str) -> Box<dyn Reply> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["sessions"]) => json_reply(&admin.handle.list().await, StatusCode::OK),
        (&Method::GET, ["sessions", id]) => match id.parse::<SessionId>() {
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(id) => match admin.handle.show(id).await {
                Some(d) => json_reply(&d, StatusCode::OK),
                None => error(StatusCode::NOT_FOUND, "no such session"),
            },
        },
        (&Method::DELETE, ["sessions", id]) => match id.parse::<SessionId>() {
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            Ok(id) => {
                if admin.handle.show(id).await.is_none() {
                    return error(StatusCode::NOT_FOUND, "no such session");
                }
                admin.handle.release(id, EndReason::Released).await;
                json_reply(&serde_json::json!({ "session": id, "ending": "released" }), StatusCode::ACCEPTED)
            }
        },
        (&Method::GET, ["plan"]) => match admin.handle.dry_run().await {
            Some(plan) => json_reply(&plan, StatusCode::OK),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "controller stopped"),
        },
        (&Method::POST, ["reconcile"]) => {
            admin.handle.resync().await;
            json_reply(&serde_json::json!({ "resync": "requested" }), StatusCode::ACCEPTED)
        }
        (&Method::GET, ["policy"]) => {
            let reload = admin.reload.borrow().clone();
            json_reply(
                &serde_json::json!({ "policy": *admin.policy.borrow().clone(), "reload": reload }),
                StatusCode::OK,
            )
        }
        (&Method::GET, ["recordings"]) => recordings::list(admin).await,
        (&Method::GET, ["recordings", name]) => recordings::download(admin, name).await,
        (&Method::DELETE, ["recordings", name]) => recordings::delete(admin, name).await,
        _ => error(StatusCode::NOT_FOUND, "unknown admin endpoint; see docs/operations.md"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_reconciler::policy::Sha256Digest;

    #[test]
    fn the_admin_token_is_checked_against_its_hash() {
        let mut p = Policy::default();
        assert!(authorized(&p, None), "no token configured: the listener decides");
        p.server.admin_token_sha256 = Some(Sha256Digest::of(b"s3cret"));
        assert!(!authorized(&p, None));
        assert!(!authorized(&p, Some("Bearer wrong")));
        assert!(!authorized(&p, Some("s3cret")));
        assert!(authorized(&p, Some("Bearer s3cret")));
    }

    fn loopback() -> Listener {
        Listener::Dedicated("127.0.0.1:9090".parse().expect("addr"))
    }

    fn get(host: &str) -> RequestHead<'_> {
        RequestHead { method: Some(&Method::GET), host: Some(host), ..RequestHead::default() }
    }

    #[test]
    fn without_a_token_only_a_loopback_host_is_answered() {
        let p = Policy::default();
        for host in ["127.0.0.1", "localhost", "LOCALHOST", "[::1]", "127.0.0.2"] {
            assert_eq!(admit(&p, loopback(), &get(host)), Ok(()), "{host}");
        }
        for host in ["evil.example", "localhost.evil.example", "10.0.0.1", "[::ffff:10.0.0.1]"] {
            assert_eq!(admit(&p, loopback(), &get(host)), Err(Refusal::Host), "{host}: DNS rebinding");
        }
        let no_host = RequestHead { method: Some(&Method::GET), ..RequestHead::default() };
        assert_eq!(admit(&p, loopback(), &no_host), Err(Refusal::Host));
    }

    #[test]
    fn without_a_token_the_api_is_never_open_off_loopback_or_on_the_main_listener() {
        let p = Policy::default();
        let public = Listener::Dedicated("0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(admit(&p, public, &get("127.0.0.1")), Err(Refusal::Token));
        assert_eq!(admit(&p, Listener::Main, &get("127.0.0.1")), Err(Refusal::Off));
    }

    #[test]
    fn requests_from_browsers_are_refused_with_or_without_a_token() {
        let mut p = Policy::default();
        let origin = RequestHead { origin: Some("http://evil.example"), ..get("127.0.0.1") };
        assert_eq!(admit(&p, loopback(), &origin), Err(Refusal::Browser));
        let null = RequestHead { origin: Some("null"), ..get("127.0.0.1") };
        assert_eq!(admit(&p, loopback(), &null), Err(Refusal::Browser));
        for ct in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "Text/Plain;charset=utf-8"] {
            let form = RequestHead { method: Some(&Method::POST), content_type: Some(ct), ..get("127.0.0.1") };
            assert_eq!(admit(&p, loopback(), &form), Err(Refusal::Browser), "{ct}");
        }
        let cli = RequestHead { method: Some(&Method::POST), ..get("127.0.0.1") };
        assert_eq!(admit(&p, loopback(), &cli), Ok(()), "the CLI's POST has no body");
        p.server.admin_token_sha256 = Some(Sha256Digest::of(b"s3cret"));
        let with_token = RequestHead { authorization: Some("Bearer s3cret"), ..origin };
        assert_eq!(admit(&p, Listener::Main, &with_token), Err(Refusal::Browser));
        let any_host = RequestHead { authorization: Some("Bearer s3cret"), ..get("berth.internal.example") };
        assert_eq!(admit(&p, Listener::Main, &any_host), Ok(()), "a token is the check behind a proxy");
    }
}
