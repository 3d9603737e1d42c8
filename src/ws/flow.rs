//! What a connection does with its terminal beside the byte pump: the last output before an `exit`, a timed
//! and counted resize, and when a session status means the end.

use std::time::Duration;

use berth_reconciler::{EndReason, Phase, Status};
use tokio::time::Instant;
use warp::filters::ws::Message;

use super::End;
use super::conn::Conn;
use crate::metrics::Metrics;
use crate::runtime::{DockerOp, RuntimeError};
use crate::terminal::{Read, Terminal};

/// How long a terminal resize may take.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends whatever output is already in the ring (bounded wait), before an `exit`.
pub(super) async fn drain(conn: &Conn, term: &Terminal, reader: &mut crate::terminal::Reader) -> Result<(), End> {
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(20), term.read(reader)).await {
            Ok(Read::Data { bytes, .. }) => {
                conn.send(Message::binary(bytes)).await?;
                term.ack(reader);
            }
            Ok(Read::Gap { .. }) => {}
            Ok(Read::Closed | Read::Superseded) | Err(_) => break,
        }
    }
    Ok(())
}

pub(super) async fn resize(metrics: &Metrics, term: &Terminal, (cols, rows): (u32, u32)) -> Result<(), RuntimeError> {
    let c = u16::try_from(cols).unwrap_or(u16::MAX);
    let r = u16::try_from(rows).unwrap_or(u16::MAX);
    if term.launched_at(c, r) {
        return Ok(());
    }
    crate::executor::timed(metrics, DockerOp::Resize, RESIZE_TIMEOUT, term.resize(c, r)).await
}

pub(super) fn ending(s: &Status) -> Option<EndReason> {
    matches!(s.phase, Phase::Terminating | Phase::Gone).then(|| s.reason.clone().unwrap_or(EndReason::Released))
}
