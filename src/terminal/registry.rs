//! The registry of every session's terminal: created by the controller when it plans a recording or connects an
//! attach stream, read by the WebSocket layer, dropped when the session is gone.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_reconciler::SessionId;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

use super::{Recording, RecordingPlan, Terminal, TerminalEvent};
use crate::runtime::AttachIo;

/// Every session's terminal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Terminals {
    map: Arc<Mutex<HashMap<SessionId, Arc<Terminal>>>>,
    events: mpsc::Sender<TerminalEvent>,
    input_queue: usize,
    ring_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Terminals {
    /// A registry that reports lost streams on `events`.
    pub fn new(events: mpsc::Sender<TerminalEvent>, ring_bytes: usize) -> Self {
        Self {
            map: Arc::default(),
            events,
            input_queue: 64,
            ring_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(ring_bytes)),
        }
    }

    /// Sets the replay ring size for terminals created from now on.
    pub fn set_ring_bytes(&self, bytes: usize) {
        self.ring_bytes.store(bytes, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Terminal>>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The terminal of `session`, if it has one.
    pub fn get(&self, session: &SessionId) -> Option<Arc<Terminal>> {
        self.lock().get(session).cloned()
    }

    /// The terminal of `session`, created empty with a ring of `ring_bytes` when missing.
    pub fn get_or_create(&self, session: SessionId, ring_bytes: usize) -> Arc<Terminal> {
        self.lock().entry(session).or_insert_with(|| Arc::new(Terminal::new(session, ring_bytes))).clone()
    }

    /// Plans `session`'s recording, to begin when its terminal's output pump starts; a recording already begun
    /// is kept.
    pub fn plan_recording(&self, session: SessionId, plan: RecordingPlan) {
        let term = self.get_or_create(session, self.ring_bytes.load(Ordering::Relaxed));
        let mut rec = term.lock_recording();
        if matches!(*rec, Recording::Off) {
            *rec = Recording::Planned(plan);
        }
    }

    /// The file names of the recordings being written, which retention and the admin API never remove.
    pub fn active_recordings(&self) -> std::collections::BTreeSet<String> {
        let terms: Vec<Arc<Terminal>> = self.lock().values().cloned().collect();
        terms.iter().filter_map(|t| t.recording_name()).collect()
    }

    /// Notes that a pooled container's launcher set `session`'s terminal to `size` (columns, rows) at its claim,
    /// before the stream is connected: the recording's header and the first resize see it.
    pub fn sized_by_launcher(&self, session: SessionId, size: (u16, u16)) {
        let term = self.get_or_create(session, self.ring_bytes.load(Ordering::Relaxed));
        *term.size.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = size;
        *term.launched.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(size);
    }

    /// Connects a fresh attach stream to `session`'s terminal, creating the terminal when missing.
    pub fn connect(&self, session: SessionId, io: AttachIo) {
        let term = self.get_or_create(session, self.ring_bytes.load(Ordering::Relaxed));
        let AttachIo { mut output, mut input, resize } = io;
        let (tx, mut rx) = mpsc::channel::<Bytes>(self.input_queue);
        *term.input.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx);
        *term.resize.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(resize));
        let stream = {
            let mut s = term.lock();
            s.closed = false;
            s.stream += 1;
            s.stream
        };
        let span = info_span!("terminal", session = %session);
        tokio::spawn(
            async move {
                while let Some(data) = rx.recv().await {
                    if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                        break;
                    }
                }
            }
            .instrument(span.clone()),
        );
        let events = self.events.clone();
        tokio::spawn(
            async move {
                // Before the first byte is read, so the recording holds the session's output from its start.
                let recorder = term.begin_recording(&events).await;
                loop {
                    match output.next().await {
                        Some(Ok(chunk)) => {
                            if let Some(r) = &recorder {
                                r.output(chunk.clone());
                            }
                            term.push_when_room(&chunk).await;
                            term.bytes_out.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            term.touch();
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "attach stream failed");
                            break;
                        }
                        None => break,
                    }
                }
                {
                    let mut s = term.lock();
                    if s.stream == stream {
                        s.closed = true;
                    }
                }
                term.input.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                term.output_ready.notify_waiters();
                let _ = events.send(TerminalEvent::Lost(session)).await;
            }
            .instrument(span),
        );
    }

    /// Drops `session`'s terminal once the session is gone.
    pub fn forget(&self, session: &SessionId) {
        if let Some(t) = self.lock().remove(session) {
            t.end_recording();
            t.lock().closed = true;
            t.output_ready.notify_waiters();
        }
    }

    /// Number of terminals held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no terminal is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
