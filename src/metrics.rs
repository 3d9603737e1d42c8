//! Prometheus metrics. Every label comes from a small enum; no metric is labelled by session id.
//! Series that alerts depend on are pre-created at zero.

use berth_reconciler::plan::{ActionKind, RemoveReason};
use berth_reconciler::{ContainerState, EndReason, Phase};

use crate::runtime::DockerOp;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Reasons an admission is refused.
pub const REJECT_REASONS: [&str; 9] = [
    "full",
    "anonymous_full",
    "authenticated_full",
    "per_ip",
    "rate_limited",
    "queue_timeout",
    "draining",
    "unauthorized",
    "bad_request",
];

/// All of berth's metrics, in their own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
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
    /// Docker API calls by operation and result ([`Metrics::docker_call`]).
    docker_calls: IntCounterVec,
    /// Docker API call latency by operation.
    docker_latency: HistogramVec,
    /// Containers removed, by reason (orphans and leaks included).
    pub removed: IntCounterVec,
    /// Sessions ended, by reason.
    pub ended: IntCounterVec,
    /// Time from WebSocket connect to the first output byte.
    pub first_output: HistogramVec,
    /// Resume attempts by result.
    pub resumes: IntCounterVec,
    /// Admissions refused, by reason.
    pub rejected: IntCounterVec,
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
    /// Policy reloads by result.
    pub reloads: IntCounterVec,
    /// Keys changed in the policy file that wait for a restart (the running policy keeps their old values).
    pub restart_pending: IntGauge,
    /// 1 when Docker answers.
    pub docker_up: IntGauge,
    /// Docker events seen, by kind.
    pub events: IntCounterVec,
    /// Clients waiting in the admission queue.
    pub queue_len: IntGauge,
    /// Containers whose policy hash differs from their profile's current hash.
    pub drifted: IntGauge,
    /// Unix time of the last successful policy load.
    pub policy_loaded: Gauge,
    /// `limits.max_sessions` of the policy in force, for capacity alerts.
    pub capacity: IntGauge,
    /// 1 while this replica's sentinel runs (its liveness signal to peers).
    pub sentinel_up: IntGauge,
    /// Peers seen down (containers or claims, no running sentinel).
    pub peers_down: IntGauge,
    /// Takeover attempts of dead peers, by result (`won`, `lost` to another replica, `error`).
    pub takeovers: IntCounterVec,
    /// This replica's fencing epoch.
    pub epoch: IntGauge,
    /// Claims on this replica refused because its sentinel runs at the claimed epoch (forged, or a mistake).
    pub claims_refused: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone())).unwrap_or_else(|e| panic!("register {name}: {e}"));
    c
}

fn hist_vec(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(h.clone())).unwrap_or_else(|e| panic!("register {name}: {e}"));
    h
}

impl Metrics {
    /// Creates and registers every metric, with alert series pre-created.
    ///
    /// Panics only on a programming error in metric names (caught by the unit test below).
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            r.register(Box::new(g.clone())).unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        let sessions = gauge_vec("berth_sessions", "Sessions by phase.", &["phase"]);
        let containers = gauge_vec("berth_containers", "Managed containers by state.", &["state"]);
        let ws_open = int_gauge("berth_websocket_connections", "Open WebSocket connections.");
        let connections = int_gauge("berth_connections", "Open TCP connections on berth's listeners.");
        let connections_pending = int_gauge(
            "berth_connections_pending",
            "Connections that have not yet sent a WebSocket hello (plain HTTP ones included).",
        );
        let docker_up = int_gauge("berth_docker_up", "1 when the Docker engine answers, else 0.");
        let sentinel_up = int_gauge("berth_sentinel_up", "1 while this replica's sentinel container runs, else 0.");
        let peers_down =
            int_gauge("berth_peers_down", "Peer replicas seen down: containers or claims, no running sentinel.");
        let epoch = int_gauge("berth_epoch", "This replica's fencing epoch, stamped on the containers it creates.");
        let queue_len = int_gauge("berth_admission_queue_length", "Clients waiting in the admission queue.");
        let drifted = int_gauge(
            "berth_containers_policy_drift",
            "Running session containers created from a profile that has since changed.",
        );
        let capacity = int_gauge(
            "berth_session_capacity",
            "Sessions this instance admits at most (limits.max_sessions of the policy in force).",
        );
        let reconcile_passes = IntCounter::new("berth_reconcile_passes_total", "Reconcile passes run.")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(reconcile_passes.clone())).unwrap_or_else(|e| panic!("register: {e}"));
        let ws_total = IntCounter::new("berth_websocket_connections_total", "WebSocket connections accepted.")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(ws_total.clone())).unwrap_or_else(|e| panic!("register: {e}"));
        let ws_client_resets = IntCounter::new(
            "berth_websocket_client_resets_total",
            "WebSocket clients that went away without a close frame (connection reset, broken pipe, end of stream).",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(ws_client_resets.clone())).unwrap_or_else(|e| panic!("register: {e}"));
        let claims_refused = IntCounter::new(
            "berth_peer_claims_refused_total",
            "Claims on this replica refused (and removed) because its sentinel runs at the claimed epoch.",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(claims_refused.clone())).unwrap_or_else(|e| panic!("register: {e}"));
        let policy_loaded =
            Gauge::new("berth_policy_last_reload_timestamp_seconds", "Unix time of the last successful policy load.")
                .unwrap_or_else(|e| panic!("metric: {e}"));
        r.register(Box::new(policy_loaded.clone())).unwrap_or_else(|e| panic!("register: {e}"));

        let fast = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let slow = vec![0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0];
        let m = Self {
            sessions,
            containers,
            reconcile_passes,
            reconcile_duration: hist_vec(
                &r,
                "berth_reconcile_duration_seconds",
                "Time to plan and dispatch one reconcile pass.",
                &[],
                fast,
            ),
            actions: counter_vec(
                &r,
                "berth_actions_total",
                "Actions executed, by kind and result.",
                &["kind", "result"],
            ),
            actions_deferred: counter_vec(
                &r,
                "berth_actions_deferred_total",
                "Planned actions not dispatched, by reason (in_flight, backoff).",
                &["reason"],
            ),
            docker_calls: counter_vec(
                &r,
                "berth_docker_api_calls_total",
                "Docker API calls, by operation and result.",
                &["op", "result"],
            ),
            docker_latency: hist_vec(
                &r,
                "berth_docker_api_call_duration_seconds",
                "Docker API call latency, by operation.",
                &["op"],
                slow.clone(),
            ),
            removed: counter_vec(
                &r,
                "berth_containers_removed_total",
                "Containers removed, by reason (orphan counts leaks found and fixed).",
                &["reason"],
            ),
            ended: counter_vec(&r, "berth_sessions_ended_total", "Sessions ended, by reason.", &["reason"]),
            first_output: hist_vec(
                &r,
                "berth_time_to_first_output_seconds",
                "Time from WebSocket connect to the first terminal output byte sent.",
                &[],
                slow,
            ),
            resumes: counter_vec(&r, "berth_resumes_total", "Resume attempts, by result.", &["result"]),
            rejected: counter_vec(&r, "berth_admissions_rejected_total", "Admissions refused, by reason.", &["reason"]),
            ws_open,
            ws_total,
            ws_closed: counter_vec(&r, "berth_websocket_closes_total", "WebSocket closes, by close code.", &["code"]),
            ws_client_resets,
            bytes: counter_vec(&r, "berth_terminal_bytes_total", "Terminal bytes, by direction.", &["direction"]),
            connections,
            connections_pending,
            connections_dropped: counter_vec(
                &r,
                "berth_connections_dropped_total",
                "Connections closed before they were served: over a connection cap, or too slow with the request head.",
                &["reason"],
            ),
            reloads: counter_vec(&r, "berth_policy_reloads_total", "Policy reloads, by result.", &["result"]),
            restart_pending: int_gauge(
                "berth_policy_restart_pending",
                "Keys changed in the policy file that only a restart applies; the running values are kept.",
            ),
            docker_up,
            events: counter_vec(&r, "berth_docker_events_total", "Docker events seen, by kind.", &["kind"]),
            queue_len,
            drifted,
            policy_loaded,
            capacity,
            sentinel_up,
            peers_down,
            takeovers: counter_vec(
                &r,
                "berth_peer_takeovers_total",
                "Takeovers of dead peers, by result.",
                &["result"],
            ),
            epoch,
            claims_refused,
            registry: r,
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m.precreate();
        m
    }

    fn precreate(&self) {
        // Histograms too, so that dashboards show zero rather than "no data" on a fresh instance.
        self.reconcile_duration.with_label_values::<&str>(&[]);
        self.first_output.with_label_values::<&str>(&[]);
        for op in DockerOp::ALL {
            self.docker_latency.with_label_values(&[op.as_str()]);
        }
        for p in Phase::ALL {
            self.sessions.with_label_values(&[p.as_str()]);
        }
        for s in ContainerState::ALL {
            self.containers.with_label_values(&[s.as_str()]);
        }
        for k in ActionKind::ALL {
            for res in ["ok", "error"] {
                self.actions.with_label_values(&[k.as_str(), res]);
            }
        }
        for reason in crate::controller::Deferred::ALL {
            self.actions_deferred.with_label_values(&[reason.as_str()]);
        }
        for op in DockerOp::ALL {
            for res in ["ok", "error"] {
                self.docker_calls.with_label_values(&[op.as_str(), res]);
            }
        }
        for r in RemoveReason::ALL {
            self.removed.with_label_values(&[r.as_str()]);
        }
        for r in EndReason::CODES {
            self.ended.with_label_values(&[r]);
        }
        for r in ["ok", "unknown", "bad_secret", "elsewhere"] {
            self.resumes.with_label_values(&[r]);
        }
        for r in REJECT_REASONS {
            self.rejected.with_label_values(&[r]);
        }
        for d in ["in", "out"] {
            self.bytes.with_label_values(&[d]);
        }
        for r in crate::listener::Dropped::ALL {
            self.connections_dropped.with_label_values(&[r.as_str()]);
        }
        for r in ["ok", "error", "in_place"] {
            self.reloads.with_label_values(&[r]);
        }
        for k in ["create", "start", "die", "oom", "destroy", "health", "other"] {
            self.events.with_label_values(&[k]);
        }
        for r in ["won", "lost", "error"] {
            self.takeovers.with_label_values(&[r]);
        }
    }

    /// Counts one engine call and its latency.
    pub fn docker_call(&self, op: DockerOp, ok: bool, took: std::time::Duration) {
        self.docker_latency.with_label_values(&[op.as_str()]).observe(took.as_secs_f64());
        self.docker_calls.with_label_values(&[op.as_str(), if ok { "ok" } else { "error" }]).inc();
    }

    /// How many `op` calls have ended, successfully (`ok`) or not.
    pub fn docker_calls(&self, op: DockerOp, ok: bool) -> u64 {
        self.docker_calls.with_label_values(&[op.as_str(), if ok { "ok" } else { "error" }]).get()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_alert_series_exist_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        assert!(text.contains("berth_docker_up 0"));
        assert!(text.contains(r#"berth_containers_removed_total{reason="orphan"} 0"#));
        assert!(text.contains(r#"berth_policy_reloads_total{result="error"} 0"#));
        assert!(text.contains(r#"berth_sessions{phase="running"} 0"#));
        assert!(text.contains("berth_session_capacity 0"));
        assert!(text.contains("berth_reconcile_duration_seconds_bucket"));
        assert!(text.contains(r#"berth_docker_api_call_duration_seconds_count{op="create"} 0"#));
        assert!(text.contains("berth_time_to_first_output_seconds_count 0"));
        assert!(text.contains(r#"berth_connections_dropped_total{reason="header_timeout"} 0"#));
        assert!(!text.contains("session_id"));
    }
}
