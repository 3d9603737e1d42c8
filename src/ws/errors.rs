//! From what went wrong to what the client is told: each failure maps to a stable protocol error code and close
//! code (docs/protocol.md). Text from the container engine never reaches the client: it is logged with an id
//! that the client gets too.

use tracing::{debug, warn};

use super::End;
use super::messages::{ProtoError, close};
use crate::auth::AuthError;
use crate::controller::{JoinError, OpenError, ResumeError, ShareError};

/// How long a client is told to wait before resuming a session another replica holds.
const ELSEWHERE_RETRY_SECS: u64 = 2;

/// The error a client gets when its session's container could not be created or started. The engine's text
/// (which may name private registries, images or hosts) goes to the log at warn, under an id the client also gets.
pub(super) fn create_failed(detail: &str) -> ProtoError {
    let id = error_id();
    warn!(error_id = %id, error = %detail, "the session container could not be created");
    ProtoError {
        error_id: Some(id),
        ..ProtoError::fatal(
            "create_failed",
            close::CREATE_FAILED,
            "the session container could not be created; the operator can look this error id up in berth's log",
        )
    }
}

/// A short random id that ties what a client was told to the log line with the detail.
fn error_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // The id only correlates a log line; the time is unique enough when the random source fails.
        let now = crate::clock::now().as_millis();
        b = now.to_be_bytes();
    }
    hex::encode(b)
}

pub(super) fn auth_error(e: AuthError) -> End {
    let code = match e {
        AuthError::ForbiddenProfile(_) => "forbidden_profile",
        AuthError::UnknownProfile(_) => "unknown_profile",
        _ => "unauthorized",
    };
    let close = if code == "unknown_profile" { close::BAD_MESSAGE } else { close::UNAUTHORIZED };
    End::Error(ProtoError::fatal(code, close, e.to_string()))
}

pub(super) fn open_error(e: OpenError) -> End {
    let mut err = match &e {
        OpenError::Draining => ProtoError::fatal("draining", close::DRAINING, e.to_string()),
        OpenError::Full { reason, retry_after } => {
            let code = if *reason == "per_ip" { "per_ip" } else { "full" };
            let mut p = ProtoError::fatal(code, close::FULL, e.to_string());
            p.retry_after = Some(retry_after.as_secs().max(1));
            p
        }
        OpenError::QueueTimeout(_) => ProtoError::fatal("queue_timeout", close::FULL, e.to_string()),
        OpenError::UnknownProfile(_) => ProtoError::fatal("unknown_profile", close::BAD_MESSAGE, e.to_string()),
        OpenError::Stopped => ProtoError::fatal("draining", close::DRAINING, e.to_string()),
    };
    if err.code == "queue_timeout" {
        err.retry_after = Some(5);
    }
    End::Error(err)
}

pub(super) fn resume_error(e: ResumeError) -> ProtoError {
    match e {
        ResumeError::Elsewhere => ProtoError {
            retry_after: Some(ELSEWHERE_RETRY_SECS),
            ..ProtoError::fatal("session_elsewhere", close::SESSION_ELSEWHERE, e.to_string())
        },
        _ => ProtoError::fatal("unknown_session", close::UNKNOWN_SESSION, e.to_string()),
    }
}

/// A refused `share` or `revoke`: not fatal, the owner's connection goes on.
pub(super) fn share_error(e: &ShareError) -> ProtoError {
    match e {
        ShareError::UnknownGrant => ProtoError::soft("unknown_grant", e.to_string()),
        _ => ProtoError::soft("share_refused", e.to_string()),
    }
}

/// A refused join.
pub(super) fn join_error(e: &JoinError) -> ProtoError {
    match e {
        JoinError::Refused => ProtoError::fatal("grant_refused", close::GRANT_REFUSED, e.to_string()),
        JoinError::Expired => ProtoError::fatal("grant_expired", close::GRANT_EXPIRED, e.to_string()),
        JoinError::Full(_) => ProtoError::fatal("viewers_full", close::FULL, e.to_string()),
        JoinError::Stopped => ProtoError::fatal("draining", close::DRAINING, e.to_string()),
    }
}

/// The `code` label under which a close the client started is counted: its code when it is 1000 (normal) or
/// 1001 (going away), 1005 when it gave none, and `other` for any other value (one series, not one per value a
/// client may choose).
pub(super) fn peer_close_label(code: Option<u16>) -> &'static str {
    match code {
        None => "1005",
        Some(1000) => "1000",
        Some(1001) => "1001",
        Some(_) => "other",
    }
}

/// A read that failed. A client that vanished without a close frame (connection reset, broken pipe, end of
/// stream) is normal on the internet: it ends the connection quietly ([`End::PeerReset`]). Anything else is
/// the client's protocol error.
pub(super) fn read_error(e: &warp::Error) -> End {
    if is_reset(e) {
        debug!(error = %e, "client reset the connection");
        return End::PeerReset;
    }
    let text = e.to_string();
    let err = if text.contains("too long")
        || text.contains("too big")
        || text.contains("Space limit")
        || text.contains("size")
    {
        ProtoError::fatal("message_too_big", close::TOO_BIG, "message over the size limit")
    } else if text.contains("UTF-8") || text.contains("utf-8") || text.contains("Utf8") {
        ProtoError::fatal("not_utf8", close::BAD_MESSAGE, "text frames must be UTF-8 JSON")
    } else {
        debug!(error = %text, "malformed websocket frame");
        ProtoError::fatal("bad_frame", close::BAD_MESSAGE, "malformed WebSocket frame")
    };
    End::Error(err)
}

/// Whether `e` (or one of its causes) is the connection going away rather than something the client sent.
pub(super) fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof | K::NotConnected
            );
        }
        // tungstenite's wording for a stream that ended without a close frame, and for one already closed.
        let text = c.to_string();
        if text.contains("without closing handshake") || text.contains("Connection closed normally") {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_and_broken_pipes_are_resets_and_protocol_errors_are_not() {
        for kind in [std::io::ErrorKind::ConnectionReset, std::io::ErrorKind::BrokenPipe] {
            assert!(is_reset(&std::io::Error::from(kind)), "{kind:?}");
        }
        #[derive(Debug, thiserror::Error)]
        #[error("IO error: {0}")]
        struct Wrapped(#[source] std::io::Error);
        assert!(is_reset(&Wrapped(std::io::ErrorKind::ConnectionReset.into())));
        #[derive(Debug, thiserror::Error)]
        #[error("WebSocket protocol error: Connection reset without closing handshake")]
        struct NoClose;
        assert!(is_reset(&NoClose));
        #[derive(Debug, thiserror::Error)]
        #[error("WebSocket protocol error: Reserved bits are non-zero")]
        struct Malformed;
        assert!(!is_reset(&Malformed));
    }

    #[test]
    fn a_close_the_client_starts_is_counted_under_a_bounded_set_of_labels() {
        let labels: Vec<&str> = [None, Some(1000), Some(1001), Some(4321), Some(3000)].map(peer_close_label).to_vec();
        assert_eq!(labels, ["1005", "1000", "1001", "other", "other"]);
    }

    #[test]
    fn create_failed_tells_the_client_an_id_and_not_the_engine_text() {
        let e = create_failed("No such image: registry.internal.example:5000/team/secret-image:latest");
        let json = e.to_json();
        assert!(!json.contains("secret-image") && !json.contains("registry.internal"), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v["code"], "create_failed");
        assert_eq!(v["error_id"].as_str().map(str::len), Some(16), "{json}");
    }
}
