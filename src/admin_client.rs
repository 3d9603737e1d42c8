//! The CLI side of the admin API: requests through hyper's client, and the table renderers for `berth sessions`
//! and `berth gc`.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long one admin call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A CLI call to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port[/...]`.
    #[error("admin URL must look like http://host:port, got {0:?}")]
    Url(String),
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed or timed out.
    #[error("cannot reach the admin API at {0}: {1}")]
    Connect(String, String),
    /// The server answered with an error status.
    #[error("admin API answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// Sends `method path` to the admin API and returns the body of a 2xx answer.
///
/// # Errors
/// On a malformed URL, an unreadable token file, a connection failure, or a non-2xx status.
pub async fn request(base: &str, token_file: Option<&Path>, method: &str, path: &str) -> Result<String, ClientError> {
    let bad_url = || ClientError::Url(base.to_owned());
    let authority = base
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or(r))
        .filter(|h| !h.is_empty())
        .ok_or_else(bad_url)?;
    let uri: hyper::Uri = format!("http://{authority}{path}").parse().map_err(|_| bad_url())?;
    let method: hyper::Method = method.parse().map_err(|_| bad_url())?;
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| ClientError::Token { path: p.display().to_string(), source })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let mut req = hyper::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        // The token never reaches an error message: a header value that does not parse is reported without it.
        let value = hyper::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| ClientError::Connect(authority.to_owned(), "the token file holds a malformed token".into()))?;
        req = req.header(hyper::header::AUTHORIZATION, value);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|_| bad_url())?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let connect_error = |e: String| ClientError::Connect(authority.to_owned(), e);
    let call = async {
        let resp = client.request(req).await.map_err(|e| connect_error(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| connect_error(e.to_string()))?.to_bytes();
        Ok::<_, ClientError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    let (status, body) =
        tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| connect_error("timed out".into()))??;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ClientError::Status { status, body: body.trim().to_owned() })
    }
}

/// hyper's client error says "client error (Connect)"; the cause (connection refused, ...) is in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Renders the session list as a table.
pub fn sessions_table(json: &str) -> String {
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    let mut out = format!(
        "{:<32}  {:<11}  {:<10}  {:>7}  {:>7}  {:<15}  {:<14}  {}\n",
        "SESSION", "PHASE", "PROFILE", "AGE", "IDLE", "CLIENT", "OWNER", "DRIFT"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let drift = match (r["policy_hash"].as_str(), r["current_policy_hash"].as_str()) {
            (Some(a), Some(b)) if a != b => "drifted",
            (Some(_), Some(_)) => "current",
            _ => "-",
        };
        out.push_str(&format!(
            "{:<32}  {:<11}  {:<10}  {:>6}s  {:>6}s  {:<15}  {:<14}  {}\n",
            s("id"),
            r["status"]["phase"].as_str().unwrap_or("-"),
            s("profile"),
            r["age_seconds"].as_u64().unwrap_or(0),
            r["idle_seconds"].as_u64().unwrap_or(0),
            s("client_ip"),
            s("owner"),
            drift
        ));
    }
    out
}

/// Renders the recording list as a table.
pub fn recordings_table(json: &str) -> String {
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    let mut out = format!("{:<56}  {:<32}  {:<16}  {:>10}  {}\n", "NAME", "SESSION", "STARTED", "SIZE", "ACTIVE");
    for r in rows {
        let started = r["started"].as_u64().map_or_else(|| "-".to_owned(), crate::recording::utc_compact);
        out.push_str(&format!(
            "{:<56}  {:<32}  {:<16}  {:>10}  {}\n",
            r["name"].as_str().unwrap_or("-"),
            r["session"].as_str().unwrap_or("-"),
            started,
            r["size"].as_u64().unwrap_or(0),
            if r["active"].as_bool().unwrap_or(false) { "yes" } else { "no" },
        ));
    }
    out
}

/// When each output event of a recording is printed, from the start, at `speed` (`None`: all at once).
pub fn schedule(events: &[crate::recording::asciicast::Event], speed: Option<f64>) -> Vec<(Duration, &str)> {
    use crate::recording::asciicast::Code;
    events
        .iter()
        .filter(|e| e.code == Code::Output)
        .map(|e| (speed.map_or(Duration::ZERO, |s| e.at.div_f64(s)), e.data.as_str()))
        .collect()
}

/// Prints a recording's output to stdout as [`schedule`] says.
pub async fn play(events: &[crate::recording::asciicast::Event], speed: Option<f64>) {
    use std::io::Write;
    let start = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    for (at, data) in schedule(events, speed) {
        tokio::time::sleep_until(start + at).await;
        let _ = out.write_all(data.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A local server on 127.0.0.1:0 that answers `GET /ok` with a chunked body echoing the Authorization
    /// header, and anything else with 403.
    async fn server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
                    .unwrap_or("")
                    .to_owned();
                let answer = if head.starts_with("GET /ok ") {
                    let (a, b) = ("auth=".to_owned() + &auth, ";done");
                    format!(
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                        a.len(),
                        b.len()
                    )
                } else {
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: 3\r\n\r\nno\n".to_owned()
                };
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole_and_the_token_is_sent_as_a_bearer() {
        let addr = server().await;
        let dir = std::env::temp_dir().join(format!("berth-admin-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").expect("token");
        let body = request(&format!("http://{addr}"), Some(&token), "GET", "/ok").await.expect("answer");
        assert_eq!(body, "auth=Bearer s3cret;done");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_error_status_and_an_unreachable_server_are_reported() {
        let addr = server().await;
        let err = request(&format!("http://{addr}"), None, "POST", "/other").await.expect_err("403");
        assert!(matches!(err, ClientError::Status { status: 403, ref body } if body == "no"), "{err:?}");
        // A port nothing listens on: bind one, then close it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let err = request(&format!("http://{closed}"), None, "GET", "/ok").await.expect_err("refused");
        assert!(matches!(err, ClientError::Connect(..)) && err.to_string().contains("refused"), "{err}");
        let err = request("ftp://x", None, "GET", "/").await.expect_err("bad url");
        assert!(matches!(err, ClientError::Url(_)), "{err:?}");
    }

    #[test]
    fn play_prints_output_events_only_at_their_time_divided_by_the_speed() {
        use crate::recording::asciicast::{Code, Event};
        let events = [
            Event { at: Duration::from_millis(0), code: Code::Output, data: "$ ".into() },
            Event { at: Duration::from_millis(500), code: Code::Input, data: "l".into() },
            Event::resize(Duration::from_millis(700), 100, 30),
            Event { at: Duration::from_secs(2), code: Code::Output, data: "ls\r\n".into() },
        ];
        let real = schedule(&events, Some(1.0));
        assert_eq!(real, [(Duration::ZERO, "$ "), (Duration::from_secs(2), "ls\r\n")]);
        assert_eq!(schedule(&events, Some(4.0))[1].0, Duration::from_millis(500));
        assert!(schedule(&events, None).iter().all(|(at, _)| at.is_zero()));
    }

    #[test]
    fn the_recording_table_shows_start_size_and_activity() {
        let json = r#"[{"name":"a-20240101T000000Z.cast","session":"a","started":1700000000,"size":12,"active":true}]"#;
        let t = recordings_table(json);
        assert!(t.contains("20231114T221320Z") && t.contains("yes") && t.contains(" 12 "), "{t}");
    }

    #[test]
    fn the_session_table_shows_drift() {
        let json = r#"[{"id":"ab","status":{"phase":"running"},"profile":"default","age_seconds":5,"idle_seconds":1,
            "client_ip":"127.0.0.1","owner":"i","policy_hash":"aa","current_policy_hash":"bb"}]"#;
        let t = sessions_table(json);
        assert!(t.contains("running") && t.contains("drifted"), "{t}");
    }
}
