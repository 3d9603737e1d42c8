//! One session's recording: a bounded queue off the data path and a task that appends whole asciicast lines
//! to the file. The data path only ever calls `try_send`; it never waits on the disk.
//!
//! Whole lines are written, and each batch is handed to the kernel before the next is taken, so a crash of
//! berth leaves the file valid up to the last whole line (a torn last line, if the kernel cut one, is dropped by
//! [`super::asciicast::parse`] and trimmed by [`super::repair`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, info_span, warn};

use super::asciicast::{Code, Event, Header, Utf8Carry};
use crate::metrics::{Metrics, RecordingFailureKind};

/// What a failed recording does to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// The failure is counted and logged, and the session goes on (unrecorded from then on, or with a gap).
    BestEffort,
    /// The session is ended: a session that must be recorded cannot go on unrecorded.
    Required,
}

/// How one session is recorded.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub mode: RecordingMode,
    /// Whether input is recorded too (off by default: input holds what users type, passwords included).
    pub input: bool,
    /// The file's size cap; the recording stops at it.
    pub max_bytes: u64,
    /// Events queued between the data path and the writer.
    pub queue: usize,
    /// Where bytes written, drops and failures are counted; `None` counts nowhere (unit tests).
    pub metrics: Option<Arc<Metrics>>,
}

/// Why a recording stopped before its session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordingFailure {
    /// The file could not be created.
    #[error("the recording could not be created: {0}")]
    Open(String),
    /// The data path found the queue full.
    #[error("the recording queue was full (the disk is slower than the session)")]
    QueueFull,
    /// The file reached the size cap.
    #[error("the recording reached its size cap of {0} bytes")]
    Capped(u64),
    /// A write failed.
    #[error("the recording could not be written: {0}")]
    Write(String),
}

impl RecordingFailure {
    /// Its metric label.
    pub fn kind(&self) -> RecordingFailureKind {
        match self {
            Self::Open(_) => RecordingFailureKind::Open,
            Self::QueueFull => RecordingFailureKind::QueueFull,
            Self::Capped(_) => RecordingFailureKind::Capped,
            Self::Write(_) => RecordingFailureKind::Write,
        }
    }
}

/// Marks a recording failed (the first failure only) and counts it.
fn fail(failed: &watch::Sender<Option<RecordingFailure>>, metrics: Option<&Metrics>, why: RecordingFailure) {
    failed.send_if_modified(|f| {
        if f.is_some() {
            return false;
        }
        // Counted before anyone watching hears of it.
        if let Some(m) = metrics {
            m.recording_failed(why.kind());
        }
        *f = Some(why.clone());
        true
    });
}

/// Counters of one recording, read by metrics and the audit log.
#[derive(Debug, Default)]
pub struct RecordingStats {
    /// Bytes in the file.
    pub written: AtomicU64,
    /// Events the data path could not queue (best effort).
    pub dropped: AtomicU64,
}

#[derive(Debug)]
enum Entry {
    Output(Duration, Bytes),
    Input(Duration, Bytes),
    Resize(Duration, u16, u16),
}

/// The data path's handle on a recording. Dropping every clone ends the recording: the writer writes what is
/// queued and stops.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Entry>,
    began: Instant,
    input: bool,
    mode: RecordingMode,
    failed: Arc<watch::Sender<Option<RecordingFailure>>>,
    stats: Arc<RecordingStats>,
    path: Arc<PathBuf>,
    metrics: Option<Arc<Metrics>>,
}

impl Recorder {
    /// Creates `<dir>/<name>` (never an existing file), writes the header, and starts the writer.
    pub async fn start(cfg: &RecorderConfig, name: &str, header: Header) -> io::Result<(Self, JoinHandle<()>)> {
        let path = cfg.dir.join(name);
        let mut file = open_new(&path).await?;
        let head = header.line();
        file.write_all(head.as_bytes()).await?;
        file.flush().await?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let (failed, _) = watch::channel(None);
        let rec = Self {
            tx,
            began: Instant::now(),
            input: cfg.input,
            mode: cfg.mode,
            failed: Arc::new(failed),
            stats: Arc::new(RecordingStats::default()),
            path: Arc::new(path),
            metrics: cfg.metrics.clone(),
        };
        rec.stats.written.store(head.len() as u64, Ordering::Relaxed);
        if let Some(m) = &cfg.metrics {
            m.recording_started();
            m.recording_written(head.len() as u64);
        }
        let writer = Writer {
            file,
            max_bytes: cfg.max_bytes,
            stats: rec.stats.clone(),
            failed: rec.failed.clone(),
            metrics: cfg.metrics.clone(),
        };
        let task = tokio::spawn(writer.run(rx).instrument(info_span!("recording", file = %rec.path.display())));
        Ok((rec, task))
    }

    /// Records output the session produced.
    pub fn output(&self, data: Bytes) {
        self.push(Entry::Output(self.began.elapsed(), data));
    }

    /// Records input the client typed, if this recording takes input.
    pub fn input(&self, data: Bytes) {
        if self.input {
            self.push(Entry::Input(self.began.elapsed(), data));
        }
    }

    /// Records a resize of the terminal.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.push(Entry::Resize(self.began.elapsed(), cols, rows));
    }

    /// Resolves when the recording fails, with why; never, if it does not.
    pub fn failed(&self) -> watch::Receiver<Option<RecordingFailure>> {
        self.failed.subscribe()
    }

    pub fn mode(&self) -> RecordingMode {
        self.mode
    }

    pub fn stats(&self) -> &RecordingStats {
        &self.stats
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn push(&self, entry: Entry) {
        if self.failed.borrow().is_some() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(entry) {
            let before = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.recording_event_dropped();
            }
            if self.mode == RecordingMode::Required {
                fail(&self.failed, self.metrics.as_deref(), RecordingFailure::QueueFull);
            } else if before == 0 {
                warn!(file = %self.path.display(), "recording queue full; events are dropped (best effort)");
            }
        }
    }
}

async fn open_new(path: &Path) -> io::Result<tokio::fs::File> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.create_new(true).append(true);
    #[cfg(unix)]
    opts.mode(0o640);
    opts.open(path).await
}

struct Writer {
    file: tokio::fs::File,
    max_bytes: u64,
    stats: Arc<RecordingStats>,
    failed: Arc<watch::Sender<Option<RecordingFailure>>>,
    metrics: Option<Arc<Metrics>>,
}

impl Writer {
    async fn run(mut self, rx: mpsc::Receiver<Entry>) {
        self.drain(rx).await;
        if let Some(m) = &self.metrics {
            m.recording_ended();
        }
    }

    async fn drain(&mut self, mut rx: mpsc::Receiver<Entry>) {
        let (mut out, mut inp) = (Utf8Carry::default(), Utf8Carry::default());
        let mut batch = String::new();
        let mut last = Duration::ZERO;
        while let Some(first) = rx.recv().await {
            batch.clear();
            let mut next = Some(first);
            // Take what is already queued, so a burst of output is one write.
            while let Some(entry) = next {
                let event = match entry {
                    Entry::Output(at, data) => Event { at, code: Code::Output, data: out.push(&data) },
                    Entry::Input(at, data) => Event { at, code: Code::Input, data: inp.push(&data) },
                    Entry::Resize(at, cols, rows) => Event::resize(at, cols, rows),
                };
                last = event.at;
                if !(event.data.is_empty() && event.code != Code::Resize) {
                    batch.push_str(&event.line());
                }
                next = if batch.len() < 64 << 10 { rx.try_recv().ok() } else { None };
            }
            if !self.write(&batch).await {
                return;
            }
        }
        // The session ended: what was carried (an incomplete sequence at the very end) is written as it is.
        let tail = out.finish();
        if !tail.is_empty() {
            self.write(&Event { at: last, code: Code::Output, data: tail }.line()).await;
        }
    }

    /// Appends whole lines, within the cap. Returns whether the recording goes on.
    async fn write(&mut self, lines: &str) -> bool {
        let written = self.stats.written.load(Ordering::Relaxed);
        let fits = usize::try_from(self.max_bytes.saturating_sub(written)).unwrap_or(usize::MAX);
        let (part, capped) = if lines.len() <= fits {
            (lines, false)
        } else {
            (&lines[..super::asciicast::whole_lines_len(&lines.as_bytes()[..fits])], true)
        };
        let result = async {
            self.file.write_all(part.as_bytes()).await?;
            self.file.flush().await
        }
        .await;
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(part.len() as u64, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.recording_written(part.len() as u64);
                }
                if capped {
                    warn!(cap = self.max_bytes, "recording reached its size cap; later output is not recorded");
                    fail(&self.failed, self.metrics.as_deref(), RecordingFailure::Capped(self.max_bytes));
                }
                !capped
            }
            Err(e) => {
                warn!(error = %e, "recording write failed; later output is not recorded");
                fail(&self.failed, self.metrics.as_deref(), RecordingFailure::Write(e.to_string()));
                false
            }
        }
    }
}
