//! The metric families of each subsystem, registered and with their alert series pre-created. The names and
//! help texts live here; [`super::Metrics`] records into them.

use berth_reconciler::plan::{ActionKind, RemoveReason};
use berth_reconciler::pool::PoolRemoveReason;
use berth_reconciler::{ContainerState, EndReason, Phase};
use prometheus::core::Collector;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::labels::{
    Direction, RecordingFailureKind, Rejection, ReloadResult, ResumeOutcome, Start, TakeoverResult, result,
};
use crate::runtime::{DockerOp, EventKind};

/// Buckets of fast internal work (a reconcile pass).
const FAST: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Buckets of work that waits on the engine or the network.
const SLOW: [f64; 13] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Registers `c`; panics only on a programming error in a metric's name (caught by the unit tests).
fn reg<C: Collector + Clone + 'static>(r: &Registry, name: &str, c: prometheus::Result<C>) -> C {
    let c = c.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, name, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(r, name, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, name, IntGauge::new(name, help))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(r, name, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn hist_vec(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    reg(r, name, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels))
}

/// Sessions, containers and the controller's passes.
#[derive(Debug, Clone)]
pub(super) struct Controller {
    /// Sessions by phase.
    pub sessions: IntGaugeVec,
    /// Managed containers by state.
    pub containers: IntGaugeVec,
    /// Reconcile passes.
    pub reconcile_passes: IntCounter,
    /// Reconcile pass duration.
    pub reconcile_duration: HistogramVec,
    /// Executed actions by kind and result.
    pub actions: IntCounterVec,
    /// Actions not dispatched (in flight already, or backing off).
    pub actions_deferred: IntCounterVec,
    /// Containers removed, by reason (orphans and leaks included).
    pub removed: IntCounterVec,
    /// Sessions ended, by reason.
    pub ended: IntCounterVec,
    /// Containers whose policy hash differs from their profile's current hash.
    pub drifted: IntGauge,
}

impl Controller {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            sessions: gauge_vec(r, "berth_sessions", "Sessions by phase.", &["phase"]),
            containers: gauge_vec(r, "berth_containers", "Managed containers by state.", &["state"]),
            reconcile_passes: counter(r, "berth_reconcile_passes_total", "Reconcile passes run."),
            reconcile_duration: hist_vec(
                r,
                "berth_reconcile_duration_seconds",
                "Time to plan and dispatch one reconcile pass.",
                &[],
                &FAST,
            ),
            actions: counter_vec(
                r,
                "berth_actions_total",
                "Actions executed, by kind and result.",
                &["kind", "result"],
            ),
            actions_deferred: counter_vec(
                r,
                "berth_actions_deferred_total",
                "Planned actions not dispatched, by reason (in_flight, backoff).",
                &["reason"],
            ),
            removed: counter_vec(
                r,
                "berth_containers_removed_total",
                "Containers removed, by reason (orphan counts leaks found and fixed).",
                &["reason"],
            ),
            ended: counter_vec(r, "berth_sessions_ended_total", "Sessions ended, by reason.", &["reason"]),
            drifted: gauge(
                r,
                "berth_containers_policy_drift",
                "Running session containers created from a profile that has since changed.",
            ),
        };
        m.precreate();
        m
    }

    fn precreate(&self) {
        // Histograms too, so that dashboards show zero rather than "no data" on a fresh instance.
        self.reconcile_duration.with_label_values::<&str>(&[]);
        for p in Phase::ALL {
            self.sessions.with_label_values(&[p.as_str()]);
        }
        for s in ContainerState::ALL {
            self.containers.with_label_values(&[s.as_str()]);
        }
        for k in ActionKind::ALL {
            for ok in [true, false] {
                self.actions.with_label_values(&[k.as_str(), result(ok)]);
            }
        }
        for reason in crate::controller::Deferred::ALL {
            self.actions_deferred.with_label_values(&[reason.as_str()]);
        }
        for r in RemoveReason::ALL {
            self.removed.with_label_values(&[r.as_str()]);
        }
        for r in EndReason::CODES {
            self.ended.with_label_values(&[r]);
        }
    }
}

/// Admission: the queue, refusals, resumes and capacity.
#[derive(Debug, Clone)]
pub(super) struct Admission {
    /// Resume attempts by result.
    pub resumes: IntCounterVec,
    /// Admissions refused, by reason.
    pub rejected: IntCounterVec,
    /// Clients waiting in the admission queue.
    pub queue_len: IntGauge,
    /// `limits.max_sessions` of the policy in force, for capacity alerts.
    pub capacity: IntGauge,
}

impl Admission {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            resumes: counter_vec(r, "berth_resumes_total", "Resume attempts, by result.", &["result"]),
            rejected: counter_vec(r, "berth_admissions_rejected_total", "Admissions refused, by reason.", &["reason"]),
            queue_len: gauge(r, "berth_admission_queue_length", "Clients waiting in the admission queue."),
            capacity: gauge(
                r,
                "berth_session_capacity",
                "Sessions this instance admits at most (limits.max_sessions of the policy in force).",
            ),
        };
        for o in ResumeOutcome::ALL {
            m.resumes.with_label_values(&[o.as_str()]);
        }
        for r in Rejection::ALL {
            m.rejected.with_label_values(&[r.as_str()]);
        }
        m
    }
}

/// The Docker engine: calls, their latency, events, and whether it answers.
#[derive(Debug, Clone)]
pub(super) struct Docker {
    /// Docker API calls by operation and result.
    pub calls: IntCounterVec,
    /// Docker API call latency by operation.
    pub latency: HistogramVec,
    /// 1 when Docker answers.
    pub up: IntGauge,
    /// Docker events seen, by kind.
    pub events: IntCounterVec,
    /// Events for changes berth itself made, not inspected.
    pub events_expected: IntCounter,
}

impl Docker {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            calls: counter_vec(
                r,
                "berth_docker_api_calls_total",
                "Docker API calls, by operation and result.",
                &["op", "result"],
            ),
            latency: hist_vec(
                r,
                "berth_docker_api_call_duration_seconds",
                "Docker API call latency, by operation.",
                &["op"],
                &SLOW,
            ),
            up: gauge(r, "berth_docker_up", "1 when the Docker engine answers, else 0."),
            events: counter_vec(r, "berth_docker_events_total", "Docker events seen, by kind.", &["kind"]),
            events_expected: counter(
                r,
                "berth_docker_events_expected_total",
                "Docker events for changes berth itself made, not inspected.",
            ),
        };
        for op in DockerOp::ALL {
            m.latency.with_label_values(&[op.as_str()]);
            for ok in [true, false] {
                m.calls.with_label_values(&[op.as_str(), result(ok)]);
            }
        }
        for k in EventKind::ALL {
            m.events.with_label_values(&[k.as_str()]);
        }
        m
    }
}

/// The edge: TCP connections, WebSockets and terminal bytes.
#[derive(Debug, Clone)]
pub(super) struct Edge {
    /// Time from WebSocket connect to the first output byte.
    pub first_output: HistogramVec,
    /// Open WebSocket connections.
    pub ws_open: IntGauge,
    /// WebSocket connections accepted.
    pub ws_total: IntCounter,
    /// WebSocket closes by code.
    pub ws_closed: IntCounterVec,
    /// Clients that went away without a close frame (reset, broken pipe, end of stream).
    pub ws_client_resets: IntCounter,
    /// Terminal bytes by direction.
    pub bytes: IntCounterVec,
    /// Open TCP connections on berth's listeners.
    pub connections: IntGauge,
    /// Connections that have not yet sent a WebSocket hello.
    pub connections_pending: IntGauge,
    /// Connections closed before they were served, by reason.
    pub connections_dropped: IntCounterVec,
}

impl Edge {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            first_output: hist_vec(
                r,
                "berth_time_to_first_output_seconds",
                "Time from WebSocket connect to the first terminal output byte sent, by how the session started.",
                &["start"],
                &SLOW,
            ),
            ws_open: gauge(r, "berth_websocket_connections", "Open WebSocket connections."),
            ws_total: counter(r, "berth_websocket_connections_total", "WebSocket connections accepted."),
            ws_closed: counter_vec(r, "berth_websocket_closes_total", "WebSocket closes, by close code.", &["code"]),
            ws_client_resets: counter(
                r,
                "berth_websocket_client_resets_total",
                "WebSocket clients that went away without a close frame (connection reset, broken pipe, end of stream).",
            ),
            bytes: counter_vec(r, "berth_terminal_bytes_total", "Terminal bytes, by direction.", &["direction"]),
            connections: gauge(r, "berth_connections", "Open TCP connections on berth's listeners."),
            connections_pending: gauge(
                r,
                "berth_connections_pending",
                "Connections that have not yet sent a WebSocket hello (plain HTTP ones included).",
            ),
            connections_dropped: counter_vec(
                r,
                "berth_connections_dropped_total",
                "Connections closed before they were served: over a connection cap, or too slow with the request head.",
                &["reason"],
            ),
        };
        for start in Start::ALL {
            m.first_output.with_label_values(&[start.as_str()]);
        }
        for d in Direction::ALL {
            m.bytes.with_label_values(&[d.as_str()]);
        }
        for r in crate::listener::Dropped::ALL {
            m.connections_dropped.with_label_values(&[r.as_str()]);
        }
        m
    }
}

/// The policy file: reloads and keys waiting for a restart.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// Policy reloads by result.
    pub reloads: IntCounterVec,
    /// Keys changed in the policy file that wait for a restart (the running policy keeps their old values).
    pub restart_pending: IntGauge,
    /// Unix time of the last successful policy load.
    pub loaded: Gauge,
}

impl Policy {
    pub(super) fn new(r: &Registry) -> Self {
        let name = "berth_policy_last_reload_timestamp_seconds";
        let m = Self {
            reloads: counter_vec(r, "berth_policy_reloads_total", "Policy reloads, by result.", &["result"]),
            restart_pending: gauge(
                r,
                "berth_policy_restart_pending",
                "Keys changed in the policy file that only a restart applies; the running values are kept.",
            ),
            loaded: reg(r, name, Gauge::new(name, "Unix time of the last successful policy load.")),
        };
        for res in ReloadResult::ALL {
            m.reloads.with_label_values(&[res.as_str()]);
        }
        m
    }
}

/// Peer replicas: this replica's sentinel and epoch, peers seen down, and takeovers.
#[derive(Debug, Clone)]
pub(super) struct Peers {
    /// 1 while this replica's sentinel runs (its liveness signal to peers).
    pub sentinel_up: IntGauge,
    /// Peers seen down (containers or claims, no running sentinel).
    pub down: IntGauge,
    /// Takeover attempts of dead peers, by result (`won`, `lost` to another replica, `error`).
    pub takeovers: IntCounterVec,
    /// This replica's fencing epoch.
    pub epoch: IntGauge,
    /// Claims on this replica refused because its sentinel runs at the claimed epoch (forged, or a mistake).
    pub claims_refused: IntCounter,
}

impl Peers {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            sentinel_up: gauge(r, "berth_sentinel_up", "1 while this replica's sentinel container runs, else 0."),
            down: gauge(r, "berth_peers_down", "Peer replicas seen down: containers or claims, no running sentinel."),
            takeovers: counter_vec(r, "berth_peer_takeovers_total", "Takeovers of dead peers, by result.", &["result"]),
            epoch: gauge(r, "berth_epoch", "This replica's fencing epoch, stamped on the containers it creates."),
            claims_refused: counter(
                r,
                "berth_peer_claims_refused_total",
                "Claims on this replica refused (and removed) because its sentinel runs at the claimed epoch.",
            ),
        };
        for res in TakeoverResult::ALL {
            m.takeovers.with_label_values(&[res.as_str()]);
        }
        m
    }
}

/// Session recordings, their retention, and the audit log.
#[derive(Debug, Clone)]
pub(super) struct Recordings {
    /// Recordings being written.
    pub active: IntGauge,
    /// Bytes written to recordings.
    pub bytes: IntCounter,
    /// Events the data path could not queue for a recording.
    pub dropped: IntCounter,
    /// Recordings that failed, by reason.
    pub failures: IntCounterVec,
    /// Recordings removed by retention.
    pub retention_removed: IntCounter,
    /// Audit log lines dropped (a full queue).
    pub audit_dropped: IntCounter,
}

impl Recordings {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            active: gauge(r, "berth_recordings_active", "Session recordings being written."),
            bytes: counter(r, "berth_recording_bytes_total", "Bytes written to session recordings."),
            dropped: counter(
                r,
                "berth_recording_events_dropped_total",
                "Recording events dropped because the recording's queue was full.",
            ),
            failures: counter_vec(
                r,
                "berth_recording_failures_total",
                "Session recordings that failed, by reason (open, queue_full, capped, write).",
                &["reason"],
            ),
            retention_removed: counter(
                r,
                "berth_recording_retention_removed_total",
                "Recordings removed by retention (age or total size).",
            ),
            audit_dropped: counter(
                r,
                "berth_audit_lines_dropped_total",
                "Audit log lines dropped because the audit log's queue was full.",
            ),
        };
        for f in RecordingFailureKind::ALL {
            m.failures.with_label_values(&[f.as_str()]);
        }
        m
    }
}

/// Shared sessions: grants and the connections joined through them.
#[derive(Debug, Clone)]
pub(super) struct Sharing {
    /// Connections joined through grants, by role.
    pub viewers: IntGaugeVec,
    /// Grants made, by role.
    pub grants: IntCounterVec,
    /// Grants revoked, by role.
    pub revoked: IntCounterVec,
    /// Joins refused (unknown, expired, full).
    pub refused: IntCounter,
}

impl Sharing {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            viewers: gauge_vec(
                r,
                "berth_session_viewers",
                "Connections joined to sessions through share grants, by role (viewer, writer); owners not counted.",
                &["role"],
            ),
            grants: counter_vec(r, "berth_share_grants_total", "Share grants made, by role.", &["role"]),
            revoked: counter_vec(r, "berth_share_grants_revoked_total", "Share grants revoked, by role.", &["role"]),
            refused: counter(
                r,
                "berth_share_joins_refused_total",
                "Joins through a grant refused (unknown or revoked grant, expired, session full of viewers).",
            ),
        };
        for role in crate::controller::Role::ALL {
            m.viewers.with_label_values(&[role.as_str()]);
            m.grants.with_label_values(&[role.as_str()]);
            m.revoked.with_label_values(&[role.as_str()]);
        }
        m
    }
}

/// The warm pool (decision 0025), per profile with a pool.
#[derive(Debug, Clone)]
pub(super) struct Pool {
    /// The pool's configured size.
    pub size: IntGaugeVec,
    /// Pooled containers whose launcher waits: what a claim can take now.
    pub ready: IntGaugeVec,
    /// Sessions that claimed a pooled container.
    pub claims: IntCounterVec,
    /// Sessions of a profile with a pool that started cold (the pool had nothing ready).
    pub misses: IntCounterVec,
    /// Time from a refill's create to its launcher waiting.
    pub refill: HistogramVec,
    /// Pooled containers removed, by reason.
    pub removed: IntCounterVec,
}

impl Pool {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            size: gauge_vec(r, "berth_pool_size", "The warm pool's configured size, per profile.", &["profile"]),
            ready: gauge_vec(
                r,
                "berth_pool_ready",
                "Pooled containers whose launcher waits for a session, per profile.",
                &["profile"],
            ),
            claims: counter_vec(
                r,
                "berth_pool_claims_total",
                "Sessions that claimed a pooled container.",
                &["profile"],
            ),
            misses: counter_vec(
                r,
                "berth_pool_misses_total",
                "Sessions of a profile with a pool that started cold: nothing in the pool was ready.",
                &["profile"],
            ),
            refill: hist_vec(
                r,
                "berth_pool_refill_seconds",
                "Time from a pooled container's create to its launcher waiting.",
                &[],
                &SLOW,
            ),
            removed: counter_vec(r, "berth_pool_removed_total", "Pooled containers removed, by reason.", &["reason"]),
        };
        m.refill.with_label_values::<&str>(&[]);
        for reason in PoolRemoveReason::ALL {
            m.removed.with_label_values(&[reason.as_str()]);
        }
        m
    }
}
