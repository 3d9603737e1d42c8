//! The asciicast v2 format (<https://docs.asciinema.org/manual/asciicast/v2/>): a JSON header line, then one
//! JSON array per event, `[seconds, code, data]`, with code `o` (output), `i` (input) or `r` (resize, data
//! `"COLSxROWS"`). Any asciinema player and `asciinema cat` read it.
//!
//! A terminal's output arrives in chunks that may split a UTF-8 sequence; [`Utf8Carry`] holds an incomplete
//! tail until the next chunk, so every event's data is whole text (invalid bytes become U+FFFD, as asciinema's
//! own recorder does).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u8,
    pub width: u16,
    pub height: u16,
    /// Unix seconds when the recording began.
    pub timestamp: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Header {
    /// A version 2 header for a terminal of `width`×`height`.
    pub fn new(width: u16, height: u16, timestamp: u64, title: Option<String>) -> Self {
        let env = BTreeMap::from([("TERM".to_owned(), "xterm-256color".to_owned())]);
        Self { version: 2, width, height, timestamp, env, title }
    }

    /// The header as one line, newline included.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a header always serializes");
        s.push('\n');
        s
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Output,
    Input,
    Resize,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "o",
            Self::Input => "i",
            Self::Resize => "r",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "o" => Some(Self::Output),
            "i" => Some(Self::Input),
            "r" => Some(Self::Resize),
            _ => None,
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Since the recording began.
    pub at: Duration,
    pub code: Code,
    pub data: String,
}

impl Event {
    /// A resize event's data.
    pub fn resize(at: Duration, cols: u16, rows: u16) -> Self {
        Self { at, code: Code::Resize, data: format!("{cols}x{rows}") }
    }

    /// The event as one line, newline included. Times have microsecond precision, as asciinema writes them.
    pub fn line(&self) -> String {
        let data = serde_json::to_string(&self.data).expect("a string always serializes");
        format!("[{:.6}, \"{}\", {data}]\n", self.at.as_secs_f64(), self.code.as_str())
    }

    /// The size a resize event carries.
    pub fn size(&self) -> Option<(u16, u16)> {
        let (c, r) = self.data.split_once('x')?;
        Some((c.parse().ok()?, r.parse().ok()?))
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the file is empty")]
    Empty,
    #[error("line 1 is not an asciicast v2 header: {0}")]
    Header(String),
    #[error("line {line} is not an event: {why}")]
    Event { line: usize, why: String },
}

/// A recording read back: its header and events. A last line without its newline (a writer that died mid-line)
/// is left out rather than refused: everything before it is whole.
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), ParseError> {
    let mut lines = text.split_inclusive('\n').enumerate();
    let (_, first) = lines.next().ok_or(ParseError::Empty)?;
    let header: Header = serde_json::from_str(first.trim_end()).map_err(|e| ParseError::Header(e.to_string()))?;
    if header.version != 2 {
        return Err(ParseError::Header(format!("version {} (only 2 is read)", header.version)));
    }
    let mut events = Vec::new();
    for (i, line) in lines {
        if !line.ends_with('\n') {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| ParseError::Event { line: i + 1, why };
        let (t, code, data): (f64, String, String) = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let code = Code::parse(&code).ok_or_else(|| bad(format!("unknown code {code:?}")))?;
        let at = Duration::try_from_secs_f64(t).map_err(|e| bad(e.to_string()))?;
        events.push(Event { at, code, data });
    }
    Ok((header, events))
}

/// The length of `bytes` up to its last whole line: what a crashed writer left that is valid.
pub fn whole_lines_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

/// Turns chunks of terminal output into text, carrying an incomplete UTF-8 sequence at a chunk's end over to
/// the next chunk.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `chunk` (after what was carried), less an incomplete sequence at its very end.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).expect("checked valid"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // An incomplete sequence at the end: keep it for the next chunk.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is still carried, as text (at the end of a recording).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_events_round_trip_through_their_lines() {
        let h = Header::new(100, 30, 1_700_000_000, Some("s-1".into()));
        let events = [
            Event { at: Duration::from_micros(1_500), code: Code::Output, data: "$ \u{1b}[1mbold\r\n\"q\"\\".into() },
            Event::resize(Duration::from_secs(2), 120, 40),
            Event { at: Duration::from_millis(2_250), code: Code::Input, data: "ls\r".into() },
        ];
        let text: String = std::iter::once(h.line()).chain(events.iter().map(Event::line)).collect();
        assert!(text.starts_with("{\"version\":2,\"width\":100,\"height\":30,\"timestamp\":1700000000,"));
        assert!(text.contains("[0.001500, \"o\", \"$ \\u001b[1mbold\\r\\n\\\"q\\\"\\\\\"]\n"), "{text}");
        assert!(text.contains("[2.000000, \"r\", \"120x40\"]\n"));
        let (h2, e2) = parse(&text).expect("parses");
        assert_eq!(h2, h);
        assert_eq!(e2, events);
        assert_eq!(e2[1].size(), Some((120, 40)));
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_everything_before_it_reads() {
        let text = format!("{}[0.1, \"o\", \"a\"]\n[0.2, \"o\", \"b", Header::new(80, 24, 0, None).line());
        let (_, events) = parse(&text).expect("parses");
        assert_eq!(events.len(), 1);
        assert_eq!(whole_lines_len(text.as_bytes()), text.rfind('\n').expect("a newline") + 1);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        assert_eq!(parse(""), Err(ParseError::Empty));
        assert!(matches!(
            parse("{\"version\":1,\"width\":1,\"height\":1,\"timestamp\":0}\n"),
            Err(ParseError::Header(_))
        ));
        let text = format!("{}[0.1, \"x\", \"a\"]\n", Header::new(80, 24, 0, None).line());
        assert!(matches!(parse(&text), Err(ParseError::Event { line: 2, .. })), "{:?}", parse(&text));
    }

    #[test]
    fn a_utf8_sequence_split_across_chunks_is_whole_in_one_event() {
        let mut c = Utf8Carry::default();
        let snow = "☃".as_bytes(); // three bytes
        assert_eq!(c.push(&[b'a', snow[0]]), "a");
        assert_eq!(c.push(&snow[1..2]), "");
        assert_eq!(c.push(&[snow[2], b'b']), "☃b");
        assert_eq!(c.push(&[0xff, b'c']), "\u{fffd}c", "an invalid byte is replaced, not carried");
        assert_eq!(c.push(&[0xe2]), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }
}
