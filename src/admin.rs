//! The admin API: list, show ("why is my session stuck?"), end sessions, and dry-run a reconcile.
//!
//! It is never open by default: it is served on its own listener (`server.admin_listen`), or on the main one
//! only when `server.admin_token_sha256` is set, and every request must carry that bearer token when one is set.

use std::sync::Arc;

use berth_reconciler::{EndReason, Policy, SessionId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Reply;

use crate::controller::Handle;
use crate::reload::ReloadStatus;

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The controller.
    pub handle: Handle,
    /// The policy in force.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// The last reload's outcome.
    pub reload: watch::Receiver<ReloadStatus>,
}

/// Whether a request's `Authorization` header carries the admin token. With no token configured, only a
/// dedicated admin listener is open (the caller decides that); this returns true.
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

fn json_reply<T: serde::Serialize>(v: &T, code: StatusCode) -> Box<dyn Reply> {
    Box::new(warp::reply::with_status(warp::reply::json(v), code))
}

fn error(code: StatusCode, message: &str) -> Box<dyn Reply> {
    json_reply(&serde_json::json!({ "error": message }), code)
}

/// The admin routes, under `/admin/`. `dedicated` is true on the admin listener.
pub fn routes(
    admin: Arc<Admin>,
    dedicated: bool,
) -> impl Filter<Extract = (Box<dyn Reply>,), Error = warp::Rejection> + Clone {
    warp::path("admin")
        .and(warp::method())
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::any().map(move || admin.clone()))
        .and_then(move |method: warp::http::Method, tail: warp::path::Tail, auth: Option<String>, admin: Arc<Admin>| async move {
            let policy = admin.policy.borrow().clone();
            if !dedicated && policy.server.admin_token_sha256.is_none() {
                // Never open by default on the public listener.
                return Err(warp::reject::not_found());
            }
            if !authorized(&policy, auth.as_deref()) {
                return Ok(Box::new(warp::reply::with_header(
                    warp::reply::with_status("berth: admin token required\n", StatusCode::UNAUTHORIZED),
                    "www-authenticate",
                    "Bearer",
                )) as Box<dyn Reply>);
            }
            Ok(handle(&admin, &method, tail.as_str()).await)
        })
}

async fn handle(admin: &Admin, method: &warp::http::Method, path: &str) -> Box<dyn Reply> {
    use warp::http::Method;
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
}
