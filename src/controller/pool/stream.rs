//! The pool's work on a pooled container's attach stream, off the controller's loop: a fill up to the launcher's
//! announcement, an earlier run's container adopted again, and a claim's hand-over (decision 0025).

use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::ContainerId;
use berth_reconciler::plan::ContainerSpec;
use berth_reconciler::pool::{LAUNCHER_CLAIMED, LauncherVersion, launcher_waiting};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::executor::timed;
use crate::metrics::Metrics;
use crate::runtime::{AttachIo, DockerOp, Runtime, RuntimeError};

/// A launcher that waits: berth's end of its terminal, and which settings lines it reads.
#[derive(Debug)]
pub(in crate::controller) struct Waiting {
    pub(super) io: AttachIo,
    pub(super) launcher: LauncherVersion,
}

/// One pooled container, from create to a launcher that waits. A failure removes what it created.
pub(super) async fn fill<R: Runtime>(
    rt: R,
    spec: ContainerSpec,
    metrics: Arc<Metrics>,
    timeout: Duration,
    wait: Duration,
) -> Result<(ContainerId, Waiting), RuntimeError> {
    let id = timed(&metrics, DockerOp::Create, timeout, rt.create(&spec)).await?;
    let res = async {
        let mut io = timed(&metrics, DockerOp::Attach, timeout, rt.attach(&id, false)).await?;
        timed(&metrics, DockerOp::Start, timeout, rt.start(&id)).await?;
        wait_launcher(&mut io, wait).await.map(|launcher| Waiting { io, launcher })
    }
    .await;
    match res {
        Ok(w) => Ok((id, w)),
        Err(e) => {
            let _ = timed(&metrics, DockerOp::Remove, timeout, rt.remove(&id)).await;
            Err(e)
        }
    }
}

/// An earlier run's pooled container, kept by the startup mode: attached again with its history, which holds the
/// launcher's announcement. One whose log shows its launcher took a claim's settings (the run crashed before the
/// claim's rename landed) is removed, as is one that fails.
pub(super) async fn adopt<R: Runtime>(
    rt: R,
    id: ContainerId,
    metrics: Arc<Metrics>,
    timeout: Duration,
    wait: Duration,
) -> Result<Waiting, RuntimeError> {
    let res = async {
        let head = timed(&metrics, DockerOp::Logs, timeout, rt.log_head(&id, 64 * 1024)).await?;
        if head.windows(LAUNCHER_CLAIMED.len()).any(|w| w == LAUNCHER_CLAIMED) {
            return Err(RuntimeError::Other("its launcher took a claim's settings: it is no one's to adopt".into()));
        }
        let mut io = timed(&metrics, DockerOp::Attach, timeout, rt.attach(&id, true)).await?;
        wait_launcher(&mut io, wait).await.map(|launcher| Waiting { io, launcher })
    }
    .await;
    if res.is_err() {
        let _ = timed(&metrics, DockerOp::Remove, timeout, rt.remove(&id)).await;
    }
    res
}

/// Reads a pooled container's stream until its launcher says it waits (and the end of that line: the launcher
/// prints nothing more before its settings, so nothing of it is left for the session), within `wait`.
async fn wait_launcher(io: &mut AttachIo, wait: Duration) -> Result<LauncherVersion, RuntimeError> {
    let waited = tokio::time::timeout(wait, async {
        let mut seen = Vec::new();
        loop {
            if let Some(version) = launcher_waiting(&seen) {
                return Some(version);
            }
            match io.output.next().await {
                Some(Ok(b)) if seen.len() < 64 * 1024 => seen.extend_from_slice(&b),
                _ => return None,
            }
        }
    })
    .await;
    match waited {
        Ok(Some(version)) => Ok(version),
        Ok(None) => Err(RuntimeError::Other("the launcher ended before it waited for settings".into())),
        Err(_) => Err(RuntimeError::Other(format!("the launcher did not wait for settings within {wait:?}"))),
    }
}

/// Writes a claim's settings line to the launcher, within `timeout`.
async fn write_settings(io: &mut AttachIo, line: &[u8], timeout: Duration) -> Result<(), RuntimeError> {
    let write = async {
        io.input.write_all(line).await?;
        io.input.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RuntimeError::Other(format!("writing the settings: {}", e.kind()))),
        Err(_) => Err(RuntimeError::Timeout { op: DockerOp::Attach, after: timeout }),
    }
}

/// Writes the settings line and reads the stream until the launcher says it took them ([`LAUNCHER_CLAIMED`], and
/// from a [`LauncherVersion::V3`] launcher the newline after it), within `timeout`; returns what followed that in
/// the same reads: the session's first output.
async fn settle(
    io: &mut AttachIo,
    line: &[u8],
    launcher: LauncherVersion,
    timeout: Duration,
) -> Result<Bytes, RuntimeError> {
    write_settings(io, line, timeout).await?;
    let read = async {
        let mut seen = Vec::new();
        loop {
            if let Some(at) = seen.windows(LAUNCHER_CLAIMED.len()).position(|w| w == LAUNCHER_CLAIMED) {
                let rest = &seen[at + LAUNCHER_CLAIMED.len()..];
                // The newline comes as `\r\n` through the terminal; a read may end before it.
                let newline = match (launcher, rest) {
                    (LauncherVersion::V3, [b'\r', b'\n', ..]) => Some(2),
                    (LauncherVersion::V3, [b'\n', ..]) => Some(1),
                    (LauncherVersion::V3, [] | [b'\r']) => None,
                    _ => Some(0),
                };
                if let Some(n) = newline {
                    return Ok(Bytes::copy_from_slice(&rest[n..]));
                }
            }
            match io.output.next().await {
                Some(Ok(b)) if seen.len() < 64 * 1024 => seen.extend_from_slice(&b),
                _ => return Err(RuntimeError::Other("the launcher ended before it took its settings".into())),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(RuntimeError::Timeout { op: DockerOp::Attach, after: timeout }))
}

/// Hands a claimed container's stream over: the rename and the settings line, in the order its launcher allows;
/// returns the stream with the launcher's traffic read off it.
pub(super) async fn hand_over<R: Runtime>(
    rt: &R,
    metrics: &Metrics,
    timeout: Duration,
    container: &ContainerId,
    new_name: &str,
    waiting: Waiting,
    line: &[u8],
) -> Result<AttachIo, RuntimeError> {
    let Waiting { mut io, launcher } = waiting;
    let rename = timed(metrics, DockerOp::Rename, timeout, rt.rename(container, new_name));
    if launcher >= LauncherVersion::V2 {
        // The settings go beside the rename, so the shell starts while the engine renames: the launcher writes in
        // the engine's log that it took them, and a restarted berth never puts such a container back in the pool,
        // renamed or not (decision 0025).
        let (renamed, rest) = tokio::join!(rename, settle(&mut io, line, launcher, timeout));
        renamed?;
        let rest = rest?;
        if !rest.is_empty() {
            let output = std::mem::replace(&mut io.output, futures::stream::empty().boxed());
            io.output = futures::stream::iter([Ok(rest)]).chain(output).boxed();
        }
    } else {
        // An earlier launcher says nothing once it has its settings: the rename first, as the claim's durable
        // record, so that a crash between the two leaves no shell in the pool.
        rename.await?;
        write_settings(&mut io, line, timeout).await?;
    }
    Ok(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that yields `chunks`, then stays open; input goes nowhere.
    fn stream_of(chunks: &[&'static [u8]]) -> AttachIo {
        let chunks: Vec<Result<Bytes, RuntimeError>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        AttachIo {
            output: futures::stream::iter(chunks).chain(futures::stream::pending()).boxed(),
            input: Box::pin(tokio::io::sink()),
            resize: Box::new(|_, _| Box::pin(async { Ok(()) })),
        }
    }

    async fn first_output(launcher: LauncherVersion, chunks: &[&'static [u8]]) -> Bytes {
        let mut io = stream_of(chunks);
        settle(&mut io, b"berth2 s:80x24\n", launcher, Duration::from_secs(5)).await.expect("settled")
    }

    #[tokio::test]
    async fn a_claim_hands_on_what_follows_the_mark_and_a_v3_launchers_newline_never() {
        // Version 3: the newline after the mark is the launcher's, whole or split across reads.
        let v3 = LauncherVersion::V3;
        assert_eq!(&first_output(v3, &[b"\x1b]berth;launcher-claimed\x07\r\n$ "]).await[..], b"$ ");
        assert_eq!(&first_output(v3, &[b"\x1b]berth;launcher-claimed\x07", b"\r\n$ "]).await[..], b"$ ");
        assert_eq!(&first_output(v3, &[b"\x1b]berth;launcher-claimed\x07\r", b"\n"]).await[..], b"");
        assert_eq!(&first_output(v3, &[b"\x1b]berth;launcher-claimed\x07\n$ "]).await[..], b"$ ");
        // Version 2 prints no newline: what follows the mark is all the command's.
        let v2 = LauncherVersion::V2;
        assert_eq!(&first_output(v2, &[b"\x1b]berth;launcher-claimed\x07\r\n$ "]).await[..], b"\r\n$ ");
        assert_eq!(&first_output(v2, &[b"\x1b]berth;launcher-claimed\x07"]).await[..], b"");
    }
}
