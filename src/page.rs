//! The terminal web page and its assets, embedded in the binary (built from `web/` by scripts/build-web.sh;
//! the vendored xterm.js files are committed, so building berth never needs npm), and the replay page
//! (`GET /replay`), which plays a session recording from the admin API into the same xterm.js.

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
        path: "replay.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/replay.js"),
    },
    Asset { path: "replay.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../web/replay.css") },
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

const REPLAY: &[u8] = include_bytes!("../web/replay.html");

/// Content-Security-Policy of both pages: only their own scripts, and connections (WebSocket, and the replay
/// page's `fetch` of the admin API) to themselves.
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

/// `GET /assets/<name>`.
fn assets() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path!("assets" / String).and(warp::get()).and_then(|name: String| async move {
        ASSETS
            .iter()
            .find(|a| a.path == name)
            .map(|a| respond(a.content_type, a.body))
            .ok_or_else(warp::reject::not_found)
    })
}

/// `GET /replay`: a static page; what it plays comes from the admin API, behind the admin token.
fn replay() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    warp::path!("replay").and(warp::get()).map(|| respond("text/html; charset=utf-8", REPLAY))
}

/// `GET /`, `GET /replay` and `GET /assets/<name>`: the main listener's pages.
pub fn routes() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let index = warp::path::end().and(warp::get()).map(|| respond("text/html; charset=utf-8", INDEX));
    index.or(replay()).or(assets())
}

/// `GET /replay` and `GET /assets/<name>`: the replay page on the dedicated admin listener, so that its
/// requests to the admin API stay on its own origin.
pub fn replay_routes() -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    replay().or(assets())
}
