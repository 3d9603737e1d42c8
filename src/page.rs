//! The terminal web page and its assets, embedded in the binary (built from `web/` by scripts/build-web.sh;
//! the vendored xterm.js files are committed, so building berth never needs npm).

use warp::Filter;
use warp::http::Response;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { path: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../web/app.js") },
    Asset { path: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../web/style.css") },
    Asset {
        path: "xterm.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/vendor/xterm.js"),
    },
    Asset {
        path: "xterm.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/vendor/xterm.css"),
    },
    Asset {
        path: "addon-fit.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/vendor/addon-fit.js"),
    },
];

const INDEX: &[u8] = include_bytes!("../web/index.html");

/// Content-Security-Policy of the page: only its own scripts, and WebSocket connections to itself.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

fn respond(content_type: &'static str, body: &'static [u8]) -> Response<&'static [u8]> {
    Response::builder()
        .header("content-type", content_type)
        .header("content-security-policy", CSP)
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap_or_else(|_| Response::new(body))
}

/// `GET /` and `GET /assets/<name>`.
pub fn routes() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let index = warp::path::end().and(warp::get()).map(|| respond("text/html; charset=utf-8", INDEX));
    let assets = warp::path!("assets" / String).and(warp::get()).and_then(|name: String| async move {
        ASSETS
            .iter()
            .find(|a| a.path == name)
            .map(|a| respond(a.content_type, a.body))
            .ok_or_else(warp::reject::not_found)
    });
    index.or(assets)
}
