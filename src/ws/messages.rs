//! The protocol's JSON control messages (docs/protocol.md), and their error and close codes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The WebSocket subprotocol of this protocol version.
pub const SUBPROTOCOL: &str = "berth.v1";

/// Largest terminal dimension accepted.
pub const MAX_DIM: u32 = 1000;

/// The terminal size a hello without `cols` and `rows` gets.
pub const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// The first message. Its `Debug` prints no secret: the token, environment values and credential values show
/// only whether they are there (names only), and the resume secret not at all.
#[derive(Clone, Deserialize)]
pub struct Hello {
    /// Bearer token.
    pub token: Option<String>,
    /// Requested profile.
    pub profile: Option<String>,
    /// Columns (default 80).
    #[serde(default = "default_cols")]
    pub cols: u32,
    /// Rows (default 24).
    #[serde(default = "default_rows")]
    pub rows: u32,
    /// Environment the client asks for.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Credentials for the profile's mapping.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// Resume an existing session instead of opening one.
    pub resume: Option<Resume>,
    /// Join a shared session through a grant instead of opening one.
    pub join: Option<Join>,
}

impl Default for Hello {
    fn default() -> Self {
        Self {
            token: None,
            profile: None,
            cols: DEFAULT_SIZE.0,
            rows: DEFAULT_SIZE.1,
            env: BTreeMap::new(),
            credentials: BTreeMap::new(),
            resume: None,
            join: None,
        }
    }
}

const fn default_cols() -> u32 {
    DEFAULT_SIZE.0
}

const fn default_rows() -> u32 {
    DEFAULT_SIZE.1
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("profile", &self.profile)
            .field("cols", &self.cols)
            .field("rows", &self.rows)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("resume", &self.resume)
            .field("join", &self.join)
            .finish()
    }
}

/// Resume credentials.
#[derive(Clone, Deserialize)]
pub struct Resume {
    /// Session id (validated separately).
    pub session: String,
    /// The resume secret.
    pub secret: String,
    /// Output bytes the client already holds.
    #[serde(default)]
    pub offset: u64,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume").field("session", &self.session).field("offset", &self.offset).finish_non_exhaustive()
    }
}

/// A join through a share grant.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// Session id (validated separately).
    pub session: String,
    /// The grant's secret.
    pub grant: String,
}

impl std::fmt::Debug for Join {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Join").field("session", &self.session).finish_non_exhaustive()
    }
}

/// `share`: the owner asks for a grant.
#[derive(Debug, Clone)]
pub struct Share {
    /// The grant's role.
    pub role: crate::controller::Role,
    /// Its lifetime; `None`: the profile's maximum.
    pub ttl: Option<std::time::Duration>,
    /// Who it is for, shown in presence.
    pub label: Option<String>,
}

/// Longest `share.label`, in characters.
pub const MAX_LABEL: usize = 64;

/// `resize`.
#[derive(Debug, Clone, Copy)]
pub struct Resize {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

/// A control message from the client.
#[derive(Debug)]
pub enum ClientMsg {
    /// `hello`.
    Hello(Box<Hello>),
    /// `resize`.
    Resize(Resize),
    /// `release`.
    Release,
    /// `share`.
    Share(Share),
    /// `revoke`: the grant id.
    Revoke(String),
    /// A `type` this protocol version does not know (its first 40 characters). Its one answer is
    /// [`ClientMsg::unknown_type`]: fatal, in every state.
    Unknown(String),
}

impl ClientMsg {
    /// The answer to an unknown message type: `unknown_type`, close 4005, naming the known types.
    pub fn unknown_type(ty: &str) -> ProtoError {
        ProtoError::fatal(
            "unknown_type",
            close::BAD_MESSAGE,
            format!("unknown message type {ty:?}; known: {}", KNOWN.join(", ")),
        )
    }
}

/// One frame from the client, classified. This (with [`parse`]) is the one place where what a client sends
/// becomes a value; the connection's states only ever see these cases.
#[derive(Debug)]
pub enum Frame {
    /// A binary frame: terminal input.
    Input(bytes::Bytes),
    /// A text frame holding a control message (possibly of an unknown type).
    Msg(ClientMsg),
    /// A text frame that is not a valid message: answered with this error, which ends the connection when fatal.
    Invalid(ProtoError),
    /// A close frame, with the client's code if it gave one.
    Close(Option<u16>),
    /// A ping or pong: nothing to do (the WebSocket library answers pings) beyond knowing the client is there.
    Control,
}

impl Frame {
    /// Classifies one frame the WebSocket library delivered.
    pub fn classify(frame: warp::filters::ws::Message) -> Self {
        if frame.is_binary() {
            return Self::Input(frame.into_bytes());
        }
        if frame.is_text() {
            return match frame.to_str() {
                Err(()) => {
                    Self::Invalid(ProtoError::fatal("not_utf8", close::BAD_MESSAGE, "text frames must be UTF-8 JSON"))
                }
                Ok(text) => parse(text).map_or_else(Self::Invalid, Self::Msg),
            };
        }
        if frame.is_close() {
            return Self::Close(frame.close_frame().map(|(code, _)| code));
        }
        Self::Control
    }
}

/// A protocol error: stable code, close code (when fatal) and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// Stable error code.
    pub code: &'static str,
    /// WebSocket close code, for fatal errors.
    pub close: Option<u16>,
    /// Human-readable message.
    pub message: String,
    /// Retry hint, seconds.
    pub retry_after: Option<u64>,
    /// The id under which the server logged the detail of this error.
    pub error_id: Option<String>,
}

/// Every error code the server sends, with its close code (`None`: not fatal). The table in docs/protocol.md lists
/// exactly these (a test checks), and [`ProtoError`]'s constructors refuse others in debug builds.
pub const ERRORS: &[(&str, Option<u16>)] = &[
    ("message_too_big", Some(close::TOO_BIG)),
    ("missing_hello", Some(close::HELLO)),
    ("hello_timeout", Some(close::HELLO)),
    ("bad_json", Some(close::BAD_MESSAGE)),
    ("unknown_type", Some(close::BAD_MESSAGE)),
    ("not_utf8", Some(close::BAD_MESSAGE)),
    ("bad_frame", Some(close::BAD_MESSAGE)),
    ("bad_session_id", Some(close::BAD_MESSAGE)),
    ("bad_resize", None),
    ("bad_share", None),
    ("share_refused", None),
    ("unknown_grant", None),
    ("grant_refused", Some(close::GRANT_REFUSED)),
    ("grant_expired", Some(close::GRANT_EXPIRED)),
    ("grant_revoked", Some(close::GRANT_REVOKED)),
    ("viewers_full", Some(close::FULL)),
    ("unauthorized", Some(close::UNAUTHORIZED)),
    ("forbidden_profile", Some(close::UNAUTHORIZED)),
    ("unknown_profile", Some(close::BAD_MESSAGE)),
    ("unknown_session", Some(close::UNKNOWN_SESSION)),
    ("full", Some(close::FULL)),
    ("per_ip", Some(close::FULL)),
    ("queue_timeout", Some(close::FULL)),
    ("create_failed", Some(close::CREATE_FAILED)),
    ("taken_over", Some(close::TAKEN_OVER)),
    ("stalled", Some(close::STALLED)),
    ("draining", Some(close::DRAINING)),
    ("docker_unavailable", Some(close::DOCKER_UNAVAILABLE)),
    ("session_elsewhere", Some(close::SESSION_ELSEWHERE)),
    ("ping_timeout", Some(close::PING_TIMEOUT)),
    ("internal", Some(close::INTERNAL)),
];

impl ProtoError {
    /// A fatal error closing with `close`.
    pub fn fatal(code: &'static str, close: u16, message: impl Into<String>) -> Self {
        debug_assert!(ERRORS.contains(&(code, Some(close))), "{code} {close} is not in ERRORS (docs/protocol.md)");
        Self { code, close: Some(close), message: message.into(), retry_after: None, error_id: None }
    }

    /// A non-fatal error.
    pub fn soft(code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(ERRORS.contains(&(code, None)), "{code} is not in ERRORS (docs/protocol.md)");
        Self { code, close: None, message: message.into(), retry_after: None, error_id: None }
    }

    /// The JSON error message.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::json!({"type": "error", "code": self.code, "message": self.message});
        if let Some(r) = self.retry_after {
            v["retry_after"] = r.into();
        }
        if let Some(id) = &self.error_id {
            v["error_id"] = id.as_str().into();
        }
        v.to_string()
    }
}

/// Close codes (see docs/protocol.md).
pub mod close {
    /// The session ended: the close after `exit`.
    pub const SESSION_ENDED: u16 = 4000;
    /// Another connection took the session over.
    pub const TAKEN_OVER: u16 = 4001;
    /// No or late hello.
    pub const HELLO: u16 = 4002;
    /// Authentication or authorization failed.
    pub const UNAUTHORIZED: u16 = 4003;
    /// Resume refused.
    pub const UNKNOWN_SESSION: u16 = 4004;
    /// Malformed message.
    pub const BAD_MESSAGE: u16 = 4005;
    /// The client did not read its output.
    pub const STALLED: u16 = 4008;
    /// Nothing heard from the client.
    pub const PING_TIMEOUT: u16 = 4009;
    /// The container could not be created.
    pub const CREATE_FAILED: u16 = 4010;
    /// berth is shutting down.
    pub const DRAINING: u16 = 4011;
    /// The terminal stream was lost because the container engine is unreachable.
    pub const DOCKER_UNAVAILABLE: u16 = 4012;
    /// The session is held by another replica that cannot be reached now; resume again after `retry_after`.
    pub const SESSION_ELSEWHERE: u16 = 4013;
    /// The share grant a joined connection used was revoked by the owner.
    pub const GRANT_REVOKED: u16 = 4014;
    /// The share grant has expired (at join, or while joined).
    pub const GRANT_EXPIRED: u16 = 4015;
    /// Join refused: no such session here, ended, or the grant is wrong, revoked or no longer allowed.
    pub const GRANT_REFUSED: u16 = 4016;
    /// No capacity.
    pub const FULL: u16 = 4029;
    /// Message too big (RFC 6455).
    pub const TOO_BIG: u16 = 1009;
    /// Internal error (RFC 6455).
    pub const INTERNAL: u16 = 1011;
}

const KNOWN: [&str; 5] = ["hello", "resize", "release", "share", "revoke"];

/// Parses one text frame. An unknown `type` is not an error here: it is [`ClientMsg::Unknown`].
///
/// # Errors
/// `bad_json` for anything that is not a JSON object of a known shape, `bad_resize` for sizes out of range (fatal in hello, where missing sizes default to 80x24), and for a `resize`
/// without two integer sizes (not fatal).
pub fn parse(text: &str) -> Result<ClientMsg, ProtoError> {
    let bad = |m: String| ProtoError::fatal("bad_json", close::BAD_MESSAGE, m);
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let ty =
        v.get("type").and_then(serde_json::Value::as_str).ok_or_else(|| bad("missing string field \"type\"".into()))?;
    match ty {
        "hello" => {
            let h: Hello = serde_json::from_value(v).map_err(|e| bad(format!("malformed hello: {e}")))?;
            check_size(h.cols, h.rows).map_err(|mut e| {
                e.close = Some(close::BAD_MESSAGE);
                e
            })?;
            Ok(ClientMsg::Hello(Box::new(h)))
        }
        "resize" => {
            let dim =
                |k: &str| v.get(k).and_then(serde_json::Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            let (Some(cols), Some(rows)) = (dim("cols"), dim("rows")) else {
                return Err(ProtoError::soft(
                    "bad_resize",
                    "resize needs integer \"cols\" and \"rows\"; size unchanged",
                ));
            };
            check_size(cols, rows)?;
            Ok(ClientMsg::Resize(Resize { cols, rows }))
        }
        "release" => Ok(ClientMsg::Release),
        "share" => parse_share(&v).map(ClientMsg::Share),
        "revoke" => match v.get("grant_id").and_then(serde_json::Value::as_str) {
            Some(id) if !id.is_empty() && id.len() <= 64 => Ok(ClientMsg::Revoke(id.to_owned())),
            _ => Err(ProtoError::soft("bad_share", "revoke needs a string \"grant_id\" from a shared message")),
        },
        _ => Ok(ClientMsg::Unknown(ty.chars().take(40).collect())),
    }
}

fn parse_share(v: &serde_json::Value) -> Result<Share, ProtoError> {
    let bad = |m: &str| ProtoError::soft("bad_share", m.to_owned());
    let role = v
        .get("role")
        .and_then(serde_json::Value::as_str)
        .and_then(crate::controller::Role::parse)
        .ok_or_else(|| bad("share needs \"role\": \"viewer\" or \"writer\"; no grant made"))?;
    let ttl = match v.get("ttl_s") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => match t.as_u64() {
            Some(n) if n > 0 => Some(std::time::Duration::from_secs(n)),
            _ => return Err(bad("share.ttl_s must be a positive integer (seconds); no grant made")),
        },
    };
    let label = match v.get("label") {
        None | Some(serde_json::Value::Null) => None,
        Some(l) => match l.as_str() {
            Some(l) if l.chars().count() <= MAX_LABEL && !l.chars().any(char::is_control) => Some(l.to_owned()),
            _ => return Err(bad("share.label must be a string of at most 64 printable characters; no grant made")),
        },
    };
    Ok(Share { role, ttl, label })
}

fn check_size(cols: u32, rows: u32) -> Result<(), ProtoError> {
    if cols == 0 || rows == 0 || cols > MAX_DIM || rows > MAX_DIM {
        return Err(ProtoError::soft(
            "bad_resize",
            format!("terminal size {cols}x{rows} is out of range: columns and rows must be 1 to {MAX_DIM}"),
        ));
    }
    Ok(())
}

/// A secret the server sends its client (the resume secret): serialized as it is, never printed by `Debug`.
#[derive(Clone, Copy, Serialize)]
#[serde(transparent)]
pub struct SecretStr<'a>(pub &'a str);

impl std::fmt::Debug for SecretStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Server → client messages.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg<'a> {
    /// Waiting for capacity.
    Queued {
        /// 1 = next.
        position: usize,
    },
    /// Admitted or resumed.
    Session {
        /// Session id.
        session: String,
        /// Resume secret (new sessions only).
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<SecretStr<'a>>,
        /// Whether this resumed an existing session.
        resumed: bool,
    },
    /// Phase before ready.
    Status {
        /// `pending` or `creating`.
        phase: &'a str,
    },
    /// Attached; output follows.
    Ready {
        /// Offset of the first byte that follows.
        offset: u64,
        /// Bytes asked for that the ring no longer held.
        missed: u64,
    },
    /// A share grant was made (to the owner).
    Shared {
        /// The grant's id, for `revoke`; it is in presence.
        grant_id: String,
        /// The capability: whoever has it may join with this role until it expires or is revoked.
        grant: SecretStr<'a>,
        /// `viewer` or `writer`.
        role: &'a str,
        /// When it expires, in Unix seconds.
        expires_at: u64,
        /// A link for the page: `/?session=<id>#grant=<grant>`, relative to the page's origin.
        url: String,
    },
    /// A share grant was revoked (to the owner).
    Revoked {
        /// The grant's id.
        grant_id: String,
    },
    /// Joined through a grant: the first message after an accepted join hello.
    Joined {
        /// Session id.
        session: String,
        /// `viewer` or `writer`.
        role: &'a str,
        /// The grant's id.
        grant_id: String,
        /// When the grant expires (and this connection is closed), in Unix seconds.
        expires_at: u64,
    },
    /// Who is connected through grants (to the owner), whenever it changes.
    Presence {
        /// How many.
        count: usize,
        /// Each of them.
        viewers: Vec<crate::controller::Present>,
    },
    /// Output was dropped.
    Gap {
        /// Bytes lost.
        missed: u64,
    },
    /// A warning.
    Warning {
        /// Stable code.
        code: &'a str,
        /// Human message.
        message: String,
        /// Seconds left (idle).
        #[serde(skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        /// Names concerned (env_ignored).
        #[serde(skip_serializing_if = "Option::is_none")]
        names: Option<Vec<String>>,
    },
    /// The session ended.
    Exit {
        /// End reason code.
        reason: &'a str,
        /// Exit code, for `exited`.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<i64>,
        /// Human message.
        message: String,
    },
}

impl ServerMsg<'_> {
    /// As a JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_input_gets_its_code() {
        assert_eq!(parse("{").map(|_| ()).expect_err("refused").code, "bad_json");
        assert_eq!(parse("[]").map(|_| ()).expect_err("refused").code, "bad_json");
        let Ok(ClientMsg::Unknown(ty)) = parse(r#"{"type":"nope"}"#) else { panic!("an unknown type is its own case") };
        assert_eq!(ClientMsg::unknown_type(&ty).code, "unknown_type");
        assert_eq!(ClientMsg::unknown_type(&ty).close, Some(close::BAD_MESSAGE));
        assert_eq!(parse(r#"{"type":"hello","cols":"x","rows":1}"#).map(|_| ()).expect_err("refused").code, "bad_json");
        let e = parse(r#"{"type":"hello","cols":0,"rows":24}"#).map(|_| ()).expect_err("refused");
        assert_eq!((e.code, e.close), ("bad_resize", Some(close::BAD_MESSAGE)));
        let e = parse(r#"{"type":"resize","cols":1001,"rows":24}"#).map(|_| ()).expect_err("refused");
        assert_eq!((e.code, e.close), ("bad_resize", None));
        assert!(matches!(parse(r#"{"type":"resize","cols":80,"rows":24}"#), Ok(ClientMsg::Resize(_))));
        assert!(matches!(parse(r#"{"type":"release"}"#), Ok(ClientMsg::Release)));
        for bad in [
            r#"{"type":"share"}"#,
            r#"{"type":"share","role":"owner"}"#,
            r#"{"type":"share","role":"viewer","ttl_s":0}"#,
            r#"{"type":"share","role":"viewer","label":7}"#,
            r#"{"type":"revoke"}"#,
        ] {
            let e = parse(bad).map(|_| ()).expect_err("refused");
            assert_eq!((e.code, e.close), ("bad_share", None), "{bad}");
        }
        let Ok(ClientMsg::Share(s)) = parse(r#"{"type":"share","role":"writer","ttl_s":60,"label":"bob"}"#) else {
            panic!("share refused")
        };
        assert_eq!(
            (s.role, s.ttl, s.label.as_deref()),
            (crate::controller::Role::Writer, Some(std::time::Duration::from_secs(60)), Some("bob"))
        );
        assert!(matches!(parse(r#"{"type":"revoke","grant_id":"ab12"}"#), Ok(ClientMsg::Revoke(g)) if g == "ab12"));
    }

    #[test]
    fn a_hello_without_a_size_gets_80x24_and_a_bad_resize_is_not_fatal() {
        let Ok(ClientMsg::Hello(h)) = parse(r#"{"type":"hello"}"#) else { panic!("hello without a size refused") };
        assert_eq!((h.cols, h.rows), DEFAULT_SIZE);
        for bad in [
            r#"{"type":"resize","cols":80}"#,
            r#"{"type":"resize","rows":-1,"cols":80}"#,
            r#"{"type":"resize","cols":"80","rows":24}"#,
        ] {
            let e = parse(bad).map(|_| ()).expect_err("refused");
            assert_eq!((e.code, e.close), ("bad_resize", None), "{bad}");
        }
    }

    #[test]
    fn a_hello_prints_no_secret() {
        let text = r#"{"type":"hello","token":"tok-SECRET1","cols":80,"rows":24,"env":{"LANG":"val-SECRET2"},
            "credentials":{"api_key":"cred-SECRET3"},"resume":{"session":"s","secret":"res-SECRET4"},
            "join":{"session":"s","grant":"grant-SECRET6"}}"#;
        let Ok(ClientMsg::Hello(h)) = parse(text) else { panic!("hello refused") };
        let session =
            ServerMsg::Session { session: "s".into(), secret: Some(SecretStr("new-SECRET5")), resumed: false };
        let printed = format!("{h:?} {:?} {session:?}", ClientMsg::Hello(h.clone()));
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(session.to_json().contains("new-SECRET5"), "the client still gets it");
        assert!(printed.contains("api_key") && printed.contains("LANG"), "names still print: {printed}");
    }

    #[test]
    fn the_protocol_doc_lists_every_error_code_with_its_close_code() {
        let doc = include_str!("../../docs/protocol.md");
        let section = doc.split("## Error codes and close codes").nth(1).expect("section");
        let mut documented: Vec<(String, Option<u16>)> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_owned(), cells.get(2)?.parse().ok()))
            })
            .collect();
        let mut ours: Vec<(String, Option<u16>)> = ERRORS.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
        documented.sort();
        ours.sort();
        assert_eq!(documented, ours);
        assert!(section.contains(&format!("| — | {} | — |", close::SESSION_ENDED)), "the close after exit");
    }

    #[test]
    fn every_frame_is_classified_in_one_place() {
        use warp::filters::ws::Message;
        assert!(matches!(Frame::classify(Message::binary(b"ls\r".to_vec())), Frame::Input(b) if &b[..] == b"ls\r"));
        assert!(matches!(Frame::classify(Message::text(r#"{"type":"release"}"#)), Frame::Msg(ClientMsg::Release)));
        assert!(
            matches!(Frame::classify(Message::text(r#"{"type":"launch"}"#)), Frame::Msg(ClientMsg::Unknown(t)) if t == "launch")
        );
        assert!(matches!(Frame::classify(Message::text("{")), Frame::Invalid(e) if e.code == "bad_json"));
        assert!(matches!(Frame::classify(Message::close_with(1001u16, "bye")), Frame::Close(Some(1001))));
        assert!(matches!(Frame::classify(Message::ping(Vec::new())), Frame::Control));
    }

    #[test]
    fn resume_secrets_do_not_print() {
        let r = Resume { session: "s".into(), secret: "hunter2".into(), offset: 1 };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
