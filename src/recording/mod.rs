//! Session recordings (asciicast v2) and the audit log.
//!
//! A recording's file is named `<session id>-<UTC start, YYYYMMDDTHHMMSSZ>.cast` in the policy's recordings
//! directory: listing the directory is listing the recordings, and a name sorts by session, then time. Retention
//! is the pure [`berth_reconciler::retention`] applied to [`list`]; [`repair`] trims what a crash tore.

pub mod asciicast;
pub mod audit;
pub mod keeper;
mod writer;

use std::io;
use std::path::Path;

use berth_reconciler::Timestamp;
use berth_reconciler::retention::RecordingFile;

pub use writer::{Recorder, RecorderConfig, RecordingFailure, RecordingMode, RecordingStats};

/// The extension of recordings.
pub const EXTENSION: &str = "cast";

/// The file name of the recording of `session` begun at `unix_secs`.
pub fn file_name(session: &str, unix_secs: u64) -> String {
    format!("{session}-{}.{EXTENSION}", utc_compact(unix_secs))
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds (the civil calendar, proleptic Gregorian).
pub fn utc_compact(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX);
    let secs = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The recordings in `dir`, with their sizes and last changes. Files of other names are not berth's and are
/// left out (and so never removed).
pub async fn list(dir: &Path) -> io::Result<Vec<RecordingFile>> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_recording_name(&name) {
            continue;
        }
        let meta = match entry.metadata().await {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(Timestamp::ZERO, |d| Timestamp::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        out.push(RecordingFile { name, size: meta.len(), modified });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether `name` is a recording's file name: no path, no hidden file, the extension.
pub fn is_recording_name(name: &str) -> bool {
    !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && name.strip_suffix(&format!(".{EXTENSION}")).is_some_and(|stem| {
            !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Trims a recording that a crash left with a torn last line back to its last whole line. Returns how many
/// bytes it cut.
pub async fn repair(path: &Path) -> io::Result<u64> {
    let bytes = tokio::fs::read(path).await?;
    let keep = asciicast::whole_lines_len(&bytes);
    let cut = (bytes.len() - keep) as u64;
    if cut > 0 {
        let file = tokio::fs::OpenOptions::new().write(true).open(path).await?;
        file.set_len(keep as u64).await?;
    }
    Ok(cut)
}

#[cfg(test)]
mod tests;
