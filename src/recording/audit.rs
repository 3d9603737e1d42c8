//! The audit log: one JSON line per session start and end, appended to a file by one task. The data path and
//! the controller only queue lines; a full queue drops the line and counts it, it never waits.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span, warn};

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    Start,
    End,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub event: AuditEvent,
    pub session: String,
    pub profile: String,
    /// Who: the token's or JWT's subject; `null` for anonymous sessions.
    pub identity: Option<String>,
    pub client_ip: Option<IpAddr>,
    /// Why it ended (`end` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes the client sent and the session wrote (`end` only: 0 at `start`).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The recording's file name, if the session is recorded.
    pub recording: Option<String>,
}

/// The audit log's handle. Cloning shares one writer.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (creating, appending) the log at `path` and starts its writer.
    pub async fn open(path: &Path, queue: usize) -> io::Result<(Self, JoinHandle<()>)> {
        let mut opts = tokio::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        opts.mode(0o640);
        let mut file = opts.open(path).await?;
        let (tx, mut rx) = mpsc::channel::<String>(queue.max(1));
        let task = tokio::spawn(
            async move {
                while let Some(line) = rx.recv().await {
                    let mut batch = line;
                    while let Ok(more) = rx.try_recv() {
                        batch.push_str(&more);
                    }
                    if let Err(e) = async {
                        file.write_all(batch.as_bytes()).await?;
                        file.flush().await
                    }
                    .await
                    {
                        warn!(error = %e, "audit log write failed");
                    }
                }
            }
            .instrument(info_span!("audit_log")),
        );
        Ok((Self { tx, dropped: Arc::new(AtomicU64::new(0)) }, task))
    }

    /// Queues one entry; counts it as dropped when the queue is full.
    pub fn record(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_string(entry).expect("an audit entry always serializes");
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
