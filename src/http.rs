//! HTTP endpoints on the main listener: health, readiness and metrics. Thin: every answer comes from the
//! controller's readiness watch or the metrics registry.

use std::sync::Arc;

use warp::Filter;
use warp::http::StatusCode;

use crate::controller::Handle;
use crate::metrics::Metrics;
use crate::ws::Edge;

/// Every route of the main listener: the page, the WebSocket endpoint, health and metrics.
pub fn routes(edge: Arc<Edge>) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    crate::page::routes()
        .or(crate::ws::routes(edge.clone()))
        .or(health_routes(edge.handle.clone(), edge.metrics.clone()))
        .with(warp::reply::with::header("x-content-type-options", "nosniff"))
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn health_routes(
    handle: Handle,
    metrics: Arc<Metrics>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok\n");
    let readyz = warp::path!("readyz").and(warp::get()).map(move || {
        let r = handle.readiness().borrow().clone();
        let body = serde_json::json!({
            "ready": r.is_ready(),
            "docker_up": r.docker_up,
            "listed": r.listed,
            "sentinel": r.sentinel,
            "draining": r.draining,
            "policy_hash": r.policy_hash,
        });
        let code = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        warp::reply::with_status(warp::reply::json(&body), code)
    });
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(metrics.render(), "content-type", "text/plain; version=0.0.4; charset=utf-8")
    });
    healthz.or(readyz).or(metrics)
}
