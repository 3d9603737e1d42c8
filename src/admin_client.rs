//! The CLI side of the admin API: a minimal HTTP/1.1 client (one request per connection) and the table
//! renderers for `berth sessions` and `berth gc`.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let hostport = base
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or(r))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ClientError::Url(base.to_owned()))?;
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| ClientError::Token { path: p.display().to_string(), source })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let io = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| ClientError::Connect(hostport.to_owned(), "timed out".into()))?
        .map_err(|e| ClientError::Connect(hostport.to_owned(), e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ClientError::Status { status, body: body.trim().to_owned() })
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }

    #[test]
    fn the_session_table_shows_drift() {
        let json = r#"[{"id":"ab","status":{"phase":"running"},"profile":"default","age_seconds":5,"idle_seconds":1,
            "client_ip":"127.0.0.1","owner":"i","policy_hash":"aa","current_policy_hash":"bb"}]"#;
        let t = sessions_table(json);
        assert!(t.contains("running") && t.contains("drifted"), "{t}");
    }
}
