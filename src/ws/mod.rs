//! The WebSocket layer: the HTTP upgrade checks (`upgrade.rs`: subprotocol, origin, rate, readiness), and one
//! task per connection (`conn.rs`) that runs an explicit state machine (`state.rs`: awaiting hello, queued,
//! starting, attached, detaching): it asks the controller for a session, waits for it to run, and then moves
//! bytes between the socket and the session's terminal. Client frames are classified in one place
//! (`messages.rs`); failures become protocol codes in `errors.rs`. It changes desired state only; it never
//! creates or removes containers.

mod conn;
mod errors;
mod flow;
mod idle;
pub mod messages;
mod state;
mod upgrade;
mod viewer;

pub use upgrade::routes;

use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::{EndReason, Policy};
use tokio::sync::watch;

use crate::controller::Handle;
use crate::limits::ConnectionLimiter;
use crate::metrics::Metrics;
use crate::terminal::Terminals;
use conn::Conn;
use flow::ending;
use messages::ProtoError;

/// Messages queued for a connection's writer, beyond the two kept for the error or exit and the close frame.
const OUT_QUEUE: usize = 16;

/// How long a closing connection's queued messages get to reach the client before the socket is dropped.
const LAST_WORDS_GRACE: Duration = Duration::from_secs(5);

/// The upgrade response header naming the session this connection serves, for load balancers that stick
/// `?session=<id>` to the replica that announced it (HAProxy: `stick store-response res.hdr(berth-session)`).
pub const SESSION_HEADER: &str = "berth-session";

/// What the WebSocket layer shares across connections.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The controller.
    pub handle: Handle,
    /// The data path.
    pub terminals: Terminals,
    /// The policy in force.
    pub policy: watch::Receiver<Arc<Policy>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Per-IP connection rate.
    pub limiter: Arc<ConnectionLimiter>,
    /// Flips to true when berth shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Why a connection ended, and how to tell the client.
#[derive(Debug)]
enum End {
    /// Send this error (if the peer is still there) and close with its code.
    Error(ProtoError),
    /// The session ended: `exit` then close 4000.
    Exited(EndReason),
    /// The client sent a close frame (with this code, if any). The WebSocket library queues the reply (the same
    /// code); the writer sends it as soon as it stops.
    PeerClosed(Option<u16>),
    /// The client vanished without a close frame (reset, broken pipe, end of stream): normal, logged at debug.
    PeerReset,
}

impl From<ProtoError> for End {
    fn from(e: ProtoError) -> Self {
        Self::Error(e)
    }
}
