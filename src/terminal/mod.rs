//! The data path: one terminal per session, holding the container's attach stream, a bounded replay
//! ring, and the cursor of the one client reading it.
//!
//! The controller hands each attach stream here (attach happens before start, so the first prompt is
//! captured); WebSocket connections read and write through [`Terminal`] and never touch Docker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_reconciler::{SessionId, Timestamp};
use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tracing::{Instrument, debug, info_span, warn};

use crate::recording::asciicast::Header;
use crate::recording::{Recorder, RecorderConfig, RecordingFailure, RecordingMode};
use crate::runtime::{ResizeFn, RuntimeError};

mod registry;
mod ring;

pub use registry::Terminals;
use ring::Ring;

/// Something the data path tells the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminalEvent {
    /// The attach stream of a session ended (container exited, or the engine went away).
    Lost(SessionId),
    /// The session's profile requires a recording, and it failed: the session is to end.
    RecordingFailed(SessionId, RecordingFailure),
}

/// How a session is to be recorded: set by the controller before its terminal is attached, begun by the output
/// pump before it reads the first byte.
#[derive(Debug, Clone)]
pub struct RecordingPlan {
    /// The recorder's settings.
    pub config: RecorderConfig,
    /// The header's title (the profile).
    pub title: Option<String>,
}

/// A terminal's recording.
#[derive(Debug, Default)]
enum Recording {
    /// Not recorded.
    #[default]
    Off,
    /// To begin when the output pump starts.
    Planned(RecordingPlan),
    /// Being written.
    Active(Recorder),
    /// Failed to begin, or ended with the session.
    Done,
}

#[derive(Debug)]
struct Shared {
    ring: Ring,
    /// The attached reader: its generation and the offset it has consumed.
    reader: Option<(u64, u64)>,
    generation: u64,
    /// The attach stream is gone.
    closed: bool,
    /// Attach stream generation, so a stale pump cannot close a newer one.
    stream: u64,
}

/// One session's terminal.
pub struct Terminal {
    session: SessionId,
    shared: Mutex<Shared>,
    output_ready: Notify,
    drained: Notify,
    input: Mutex<Option<mpsc::Sender<Bytes>>>,
    resize: Mutex<Option<Arc<ResizeFn>>>,
    last_activity: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    recording: Mutex<Recording>,
    /// The last size asked for (columns, rows), for a recording's header.
    size: Mutex<(u16, u16)>,
    /// The size a pooled container's launcher set at the claim, until the first resize: a first resize to it
    /// needs no engine call.
    launched: Mutex<Option<(u16, u16)>>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal").field("session", &self.session).finish_non_exhaustive()
    }
}

/// What a reader gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Output bytes; `end` is the offset just past them.
    Data {
        /// The bytes.
        bytes: Bytes,
        /// Offset after them.
        end: u64,
    },
    /// The reader asked for bytes the ring no longer holds; reading resumes at `resumed_at`.
    Gap {
        /// Bytes lost.
        missed: u64,
        /// Where reading continues.
        resumed_at: u64,
    },
    /// The attach stream ended and everything was read.
    Closed,
    /// Another connection took the session over.
    Superseded,
}

/// A reader's handle: its generation and position.
#[derive(Debug)]
pub struct Reader {
    generation: u64,
    offset: u64,
    /// A viewer's reader (a connection joined through a share grant): never superseded, never waited for.
    viewer: bool,
}

impl Reader {
    /// Offset of the next byte this reader will get.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Largest chunk handed to a reader at once.
const CHUNK: usize = 32 << 10;

impl Terminal {
    /// An empty terminal for `session`, with a replay ring of `ring_bytes` and no attach stream yet.
    fn new(session: SessionId, ring_bytes: usize) -> Self {
        Self {
            session,
            shared: Mutex::new(Shared {
                ring: Ring::new(ring_bytes),
                reader: None,
                generation: 0,
                closed: true,
                stream: 0,
            }),
            output_ready: Notify::new(),
            drained: Notify::new(),
            input: Mutex::new(None),
            resize: Mutex::new(None),
            last_activity: AtomicU64::new(crate::clock::now().as_millis()),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            recording: Mutex::new(Recording::Off),
            size: Mutex::new((80, 24)),
            launched: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session this terminal serves.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Attaches a reader starting at `from` (bytes the client already has; `None` = from the oldest byte
    /// held). Any earlier reader is superseded.
    pub fn subscribe(&self, from: Option<u64>) -> Reader {
        let mut s = self.lock();
        s.generation += 1;
        // Bytes older than the ring cannot be sent: the reader starts at the oldest byte held, so that its
        // offset is where output really resumes (the caller reports the difference as missed).
        let start = from.unwrap_or(s.ring.start()).clamp(s.ring.start(), s.ring.end());
        s.reader = Some((s.generation, start));
        let r = Reader { generation: s.generation, offset: start, viewer: false };
        drop(s);
        self.output_ready.notify_waiters();
        self.drained.notify_waiters();
        r
    }

    /// A viewer's reader, starting at the oldest byte held: any number of them read the ring at once, beside
    /// the owner's. The pump never waits for one: a viewer that falls behind the ring gets a [`Read::Gap`], and
    /// one whose socket stalls is closed by its connection. Nothing needs undoing when it goes.
    pub fn watch(&self) -> Reader {
        let s = self.lock();
        Reader { generation: 0, offset: s.ring.start(), viewer: true }
    }

    /// Detaches `reader`, if it is still the current one: output keeps flowing into the ring.
    pub fn unsubscribe(&self, reader: &Reader) {
        if reader.viewer {
            return;
        }
        let mut s = self.lock();
        if s.reader.is_some_and(|(g, _)| g == reader.generation) {
            s.reader = None;
        }
        drop(s);
        self.drained.notify_waiters();
    }

    /// Waits for output for `reader`. Does not advance the reader's acknowledged position: call
    /// [`Terminal::ack`] once the bytes are handed to the client.
    pub async fn read(&self, reader: &mut Reader) -> Read {
        loop {
            let notified = self.output_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if !reader.viewer && s.generation != reader.generation {
                    return Read::Superseded;
                }
                if reader.offset < s.ring.start() {
                    let missed = s.ring.start() - reader.offset;
                    reader.offset = s.ring.start();
                    return Read::Gap { missed, resumed_at: s.ring.start() };
                }
                if reader.offset < s.ring.end() {
                    let bytes = s.ring.read(reader.offset, CHUNK);
                    reader.offset += bytes.len() as u64;
                    return Read::Data { bytes, end: reader.offset };
                }
                if s.closed {
                    return Read::Closed;
                }
            }
            notified.await;
        }
    }

    /// Records that the client has taken everything before `offset`, letting the pump read more.
    pub fn ack(&self, reader: &Reader) {
        if reader.viewer {
            return;
        }
        let mut s = self.lock();
        if let Some((g, off)) = s.reader.as_mut()
            && *g == reader.generation
        {
            *off = reader.offset;
        }
        drop(s);
        self.drained.notify_waiters();
    }

    /// Sends input to the shell; waits while the input queue is full.
    ///
    /// # Errors
    /// When no attach stream is open.
    pub async fn write(&self, data: Bytes) -> Result<(), RuntimeError> {
        let tx = self.input.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let tx = tx.ok_or_else(|| RuntimeError::Other("terminal not attached".into()))?;
        self.touch();
        self.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(r) = self.recorder() {
            r.input(data.clone());
        }
        tx.send(data).await.map_err(|_| RuntimeError::Other("terminal input closed".into()))
    }

    /// Whether a resize to (`cols`, `rows`) is already done: the launcher of a pooled container set that size at
    /// the claim, and this is the first resize since. Asked once, before the first resize.
    pub fn launched_at(&self, cols: u16, rows: u16) -> bool {
        self.launched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() == Some((cols, rows))
    }

    /// Resizes the TTY.
    ///
    /// # Errors
    /// When no attach stream is open or the engine refuses.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        let f = self.resize.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let f = f.ok_or_else(|| RuntimeError::Other("terminal not attached".into()))?;
        f(cols, rows).await?;
        let changed = {
            let mut size = self.size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *size, (cols, rows)) != (cols, rows)
        };
        if changed && let Some(r) = self.recorder() {
            r.resize(cols, rows);
        }
        Ok(())
    }

    /// Bytes of input written to the shell so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// The file name of this session's recording, while it is being written.
    pub fn recording_name(&self) -> Option<String> {
        match &*self.lock_recording() {
            Recording::Active(r) => r.path().file_name().map(|n| n.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    fn lock_recording(&self) -> MutexGuard<'_, Recording> {
        self.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn recorder(&self) -> Option<Recorder> {
        match &*self.lock_recording() {
            Recording::Active(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Begins the planned recording, if one is planned and not yet begun; returns the recorder to feed. A
    /// failure to begin, or a later failure of a `required` recording, is told to the controller on `events`.
    async fn begin_recording(&self, events: &mpsc::Sender<TerminalEvent>) -> Option<Recorder> {
        let plan = {
            let mut rec = self.lock_recording();
            match &*rec {
                Recording::Active(r) => return Some(r.clone()),
                Recording::Off | Recording::Done => return None,
                Recording::Planned(_) => {}
            }
            match std::mem::replace(&mut *rec, Recording::Done) {
                Recording::Planned(p) => p,
                _ => return None,
            }
        };
        let now = crate::clock::now();
        let unix = now.as_millis() / 1000;
        let name = crate::recording::file_name(&self.session.to_string(), unix);
        let (cols, rows) = *self.size.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let header = Header::new(cols, rows, unix, plan.title.clone());
        let mode = plan.config.mode;
        let started = async {
            tokio::fs::create_dir_all(&plan.config.dir).await?;
            Recorder::start(&plan.config, &name, header).await
        }
        .await;
        let rec = match started {
            Ok((rec, _writer)) => rec,
            Err(e) => {
                let why = RecordingFailure::Open(e.to_string());
                warn!(error = %e, dir = %plan.config.dir.display(), "recording could not begin");
                if let Some(m) = &plan.config.metrics {
                    m.recording_failed(why.kind());
                }
                if mode == RecordingMode::Required {
                    let _ = events.send(TerminalEvent::RecordingFailed(self.session, why)).await;
                }
                return None;
            }
        };
        debug!(file = %name, "recording");
        let mut failed = rec.failed();
        let (events, session) = (events.clone(), self.session);
        tokio::spawn(
            async move {
                // Ends when the recording's last handle is gone (the sender drops with it).
                while failed.changed().await.is_ok() {
                    let why = failed.borrow_and_update().clone();
                    if let Some(why) = why {
                        warn!(error = %why, ?mode, "recording failed");
                        if mode == RecordingMode::Required {
                            let _ = events.send(TerminalEvent::RecordingFailed(session, why)).await;
                        }
                        return;
                    }
                }
            }
            .instrument(info_span!("recording_watch", session = %session)),
        );
        *self.lock_recording() = Recording::Active(rec.clone());
        Some(rec)
    }

    /// Ends the recording, if any: the writer writes what is queued and closes the file once the output pump
    /// lets its handle go too.
    fn end_recording(&self) {
        *self.lock_recording() = Recording::Done;
    }

    /// Whether an attach stream is open.
    pub fn is_open(&self) -> bool {
        !self.lock().closed
    }

    /// Last input or output.
    pub fn last_activity(&self) -> Timestamp {
        Timestamp::from_millis(self.last_activity.load(Ordering::Relaxed))
    }

    /// Bytes of output read from the container so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Offset just past the newest byte.
    pub fn end(&self) -> u64 {
        self.lock().ring.end()
    }

    /// Bytes held in the replay ring.
    pub fn buffered(&self) -> usize {
        self.lock().ring.len()
    }

    fn touch(&self) {
        self.last_activity.store(crate::clock::now().as_millis(), Ordering::Relaxed);
    }

    /// Appends `data` to the ring. While a reader is attached, a byte goes in only when the ring has room for it
    /// beyond what the reader has not yet acknowledged, so that an attached client never loses output: a slow
    /// one pauses the stream (and with it the shell) instead. With no reader, the oldest bytes make room.
    async fn push_when_room(&self, mut data: &[u8]) {
        while !data.is_empty() {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let room = match s.reader {
                    Some((_, acked)) => {
                        let unacked = usize::try_from(s.ring.end().saturating_sub(acked)).unwrap_or(usize::MAX);
                        s.ring.cap().saturating_sub(unacked)
                    }
                    None => data.len(),
                };
                if room > 0 {
                    let n = room.min(data.len());
                    s.ring.push(&data[..n]);
                    drop(s);
                    data = &data[n..];
                    self.output_ready.notify_waiters();
                    continue;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::asciicast::Code;
    use crate::runtime::AttachIo;
    use futures::StreamExt;
    use std::time::Duration;

    fn terminal(cap: usize) -> Arc<Terminal> {
        let (tx, _rx) = mpsc::channel(1);
        let id: SessionId = "0123456789abcdef0123456789abcdef".parse().expect("session id");
        let t = Terminals::new(tx, cap).get_or_create(id, cap);
        // As if an attach stream were open.
        t.lock().closed = false;
        t
    }

    #[tokio::test]
    async fn a_reader_asking_for_dropped_bytes_starts_at_the_oldest_byte_held() {
        let t = terminal(8);
        t.push_when_room(b"hello world!").await;
        let r = t.subscribe(Some(2));
        assert_eq!(r.offset(), 4, "bytes 2..4 are gone; the caller reports them as missed");
        assert_eq!(t.subscribe(Some(6)).offset(), 6);
        assert_eq!(t.subscribe(Some(99)).offset(), 12);
        assert_eq!(t.subscribe(None).offset(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_attached_reader_that_does_not_acknowledge_pauses_the_stream_without_losing_bytes() {
        let t = terminal(8);
        let mut r = t.subscribe(None);
        let pusher = tokio::spawn({
            let t = t.clone();
            async move { t.push_when_room(b"0123456789abcdef").await }
        });
        let mut got = Vec::new();
        while got.len() < 16 {
            match t.read(&mut r).await {
                Read::Data { bytes, .. } => {
                    got.extend_from_slice(&bytes);
                    // Nothing beyond the ring's room is taken before the reader acknowledges.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    assert!(t.buffered() <= 8 && t.end() <= r.offset() + 8);
                    t.ack(&r);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, b"0123456789abcdef");
        pusher.await.expect("pusher");
    }

    #[tokio::test(start_paused = true)]
    async fn a_viewer_that_never_reads_does_not_hold_the_owner_back_and_gets_a_gap() {
        let t = terminal(8);
        let mut owner = t.subscribe(None);
        let mut viewer = t.watch();
        let mut other = t.watch();
        for chunk in [b"0123".as_slice(), b"4567", b"89ab", b"cdef"] {
            t.push_when_room(chunk).await;
            let Read::Data { bytes, .. } = t.read(&mut owner).await else { panic!("owner reads") };
            assert_eq!(&bytes[..], chunk);
            t.ack(&owner);
            let Read::Data { bytes, .. } = t.read(&mut other).await else { panic!("a keeping-up viewer reads") };
            assert_eq!(&bytes[..], chunk);
        }
        assert_eq!(t.read(&mut viewer).await, Read::Gap { missed: 8, resumed_at: 8 });
        let Read::Data { bytes, .. } = t.read(&mut viewer).await else { panic!("then reads on") };
        assert_eq!(&bytes[..], b"89abcdef");
        // A viewer is never superseded, and does not supersede the owner.
        let mut late = t.watch();
        t.push_when_room(b"g").await;
        assert!(matches!(t.read(&mut owner).await, Read::Data { .. }));
        assert_eq!(t.read(&mut late).await, Read::Gap { missed: 1, resumed_at: 9 }, "the byte pushed out meanwhile");
        assert!(matches!(t.read(&mut late).await, Read::Data { .. }));
    }

    /// An attach stream that yields `chunks` and then stays open until `close` is dropped.
    fn attach(chunks: Vec<&'static [u8]>, close: tokio::sync::oneshot::Receiver<()>) -> AttachIo {
        let first = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))));
        let rest = futures::stream::once(async move {
            let _ = close.await;
            Err(RuntimeError::Other("closed".into()))
        });
        AttachIo {
            output: Box::pin(first.chain(rest)),
            input: Box::pin(tokio::io::sink()),
            resize: Box::new(|_, _| Box::pin(async { Ok(()) })),
        }
    }

    #[tokio::test]
    async fn the_output_pump_records_each_chunk_once_with_resizes_and_input_when_asked() {
        let dir = std::env::temp_dir().join(format!("berth-term-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tx, mut events) = mpsc::channel(4);
        let terms = Terminals::new(tx, 1024);
        let id: SessionId = "0123456789abcdef0123456789abcdef".parse().expect("session id");
        let config = RecorderConfig {
            dir: dir.clone(),
            mode: RecordingMode::BestEffort,
            input: true,
            max_bytes: 1 << 20,
            queue: 64,
            metrics: None,
        };
        terms.plan_recording(id, RecordingPlan { config, title: Some("default".into()) });
        let (close, closed) = tokio::sync::oneshot::channel();
        terms.connect(id, attach(vec![b"$ ", b"hello\r\n"], closed));
        let t = terms.get(&id).expect("terminal");
        // Two readers, one after the other: the output is still recorded once.
        let mut a = t.subscribe(None);
        let mut b = t.subscribe(None);
        assert_eq!(t.read(&mut a).await, Read::Superseded);
        while t.end() < 9 {
            let _ = t.read(&mut b).await;
            t.ack(&b);
        }
        t.resize(80, 24).await.expect("same size: no event");
        t.resize(100, 30).await.expect("resize");
        t.write(Bytes::from_static(b"ls\r")).await.expect("input");
        let name = terms.active_recordings().into_iter().next().expect("an active recording");
        assert!(name.starts_with("0123456789abcdef0123456789abcdef-"), "{name}");
        terms.forget(&id);
        drop(close);
        assert_eq!(events.recv().await, Some(TerminalEvent::Lost(id)));
        // The writer writes what is queued and closes the file once the pump has let its handle go.
        let text = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let text = std::fs::read_to_string(dir.join(&name)).expect("the recording");
                if text.contains("\"i\"") {
                    return text;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the input event is written within 10 s");
        let (header, events) = crate::recording::asciicast::parse(&text).expect("parses");
        assert_eq!((header.width, header.height, header.title.as_deref()), (80, 24, Some("default")));
        let out: String = events.iter().filter(|e| e.code == Code::Output).map(|e| e.data.as_str()).collect();
        assert_eq!(out, "$ hello\r\n", "each chunk once");
        let resizes: Vec<_> = events.iter().filter(|e| e.code == Code::Resize).map(|e| e.size()).collect();
        assert_eq!(resizes, [Some((100, 30))]);
        assert!(events.iter().any(|e| e.code == Code::Input && e.data == "ls\r"));
        assert_eq!(t.bytes_in(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
