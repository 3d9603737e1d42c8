//! Prometheus metrics. Every label comes from a small enum; no metric is labelled by session id.
//! Series that alerts depend on are pre-created at zero. Metrics are recorded through methods named for what
//! happened ([`Metrics::takeover`], [`Metrics::set_epoch`], ...); a few getters let tests read them.

mod families;
mod labels;

use std::time::Duration;

use berth_reconciler::ProfileName;
use berth_reconciler::plan::{ActionKind, RemoveReason};
use berth_reconciler::pool::PoolRemoveReason;
use berth_reconciler::{ContainerState, EndReason, Phase};
use prometheus::{Encoder, Registry, TextEncoder};

pub use labels::{
    Direction, REJECT_REASONS, RecordingFailureKind, Rejection, ReloadResult, ResumeOutcome, Start, TakeoverResult,
};

use crate::controller::{Deferred, Role};
use crate::listener::Dropped;
use crate::runtime::{DockerOp, EventKind};
use labels::result;

/// All of berth's metrics, in their own registry, in one part per subsystem.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    controller: families::Controller,
    admission: families::Admission,
    docker: families::Docker,
    edge: families::Edge,
    policy: families::Policy,
    peers: families::Peers,
    recordings: families::Recordings,
    sharing: families::Sharing,
    pool: families::Pool,
}

/// A count as a gauge value, saturating.
fn gauge_value<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Creates and registers every metric, with alert series pre-created.
    ///
    /// Panics only on a programming error in metric names (caught by the unit test below).
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            controller: families::Controller::new(&registry),
            admission: families::Admission::new(&registry),
            docker: families::Docker::new(&registry),
            edge: families::Edge::new(&registry),
            policy: families::Policy::new(&registry),
            peers: families::Peers::new(&registry),
            recordings: families::Recordings::new(&registry),
            sharing: families::Sharing::new(&registry),
            pool: families::Pool::new(&registry),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = m.registry.register(Box::new(pc));
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    // The controller.

    /// Sets how many sessions are in phase `p`.
    pub fn set_sessions(&self, p: Phase, n: i64) {
        self.controller.sessions.with_label_values(&[p.as_str()]).set(n);
    }

    /// Sets how many managed containers are in state `s`.
    pub fn set_containers(&self, s: ContainerState, n: i64) {
        self.controller.containers.with_label_values(&[s.as_str()]).set(n);
    }

    /// Sets how many running containers were created from a profile that has since changed.
    pub fn set_drifted(&self, n: i64) {
        self.controller.drifted.set(n);
    }

    /// Counts one reconcile pass, which took `took`.
    pub fn reconcile_pass(&self, took: Duration) {
        self.controller.reconcile_passes.inc();
        self.controller.reconcile_duration.with_label_values::<&str>(&[]).observe(took.as_secs_f64());
    }

    /// Counts one executed action, successful (`ok`) or not.
    pub fn action(&self, kind: ActionKind, ok: bool) {
        self.controller.actions.with_label_values(&[kind.as_str(), result(ok)]).inc();
    }

    /// Counts one planned action that was not dispatched.
    pub fn deferred(&self, why: Deferred) {
        self.controller.actions_deferred.with_label_values(&[why.as_str()]).inc();
    }

    /// Counts one container removed.
    pub fn container_removed(&self, reason: RemoveReason) {
        self.controller.removed.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts one session ended.
    pub fn session_ended(&self, reason: &EndReason) {
        self.controller.ended.with_label_values(&[reason.code()]).inc();
    }

    // Admission.

    /// Counts one admission refused.
    pub fn rejected(&self, why: impl Into<Rejection>) {
        self.admission.rejected.with_label_values(&[why.into().as_str()]).inc();
    }

    /// Counts one resume attempt.
    pub fn resume(&self, outcome: ResumeOutcome) {
        self.admission.resumes.with_label_values(&[outcome.as_str()]).inc();
    }

    /// Sets how many clients wait in the admission queue.
    pub fn set_queue_len(&self, n: usize) {
        self.admission.queue_len.set(gauge_value(n));
    }

    /// Sets the number of sessions this instance admits at most.
    pub fn set_capacity(&self, max_sessions: usize) {
        self.admission.capacity.set(gauge_value(max_sessions));
    }

    // Recordings and the audit log.

    // Shared sessions.

    /// Counts a share grant made.
    pub fn grant_created(&self, role: Role) {
        self.sharing.grants.with_label_values(&[role.as_str()]).inc();
    }

    /// Counts a share grant revoked.
    pub fn grant_revoked(&self, role: Role) {
        self.sharing.revoked.with_label_values(&[role.as_str()]).inc();
    }

    /// Counts a connection joined through a grant.
    pub fn viewer_joined(&self, role: Role) {
        self.sharing.viewers.with_label_values(&[role.as_str()]).inc();
    }

    /// Counts a joined connection gone.
    pub fn viewer_left(&self, role: Role) {
        self.sharing.viewers.with_label_values(&[role.as_str()]).dec();
    }

    /// Counts a join refused.
    pub fn join_refused(&self) {
        self.sharing.refused.inc();
    }

    /// Connections joined through grants now, with `role` (for tests).
    pub fn viewers(&self, role: Role) -> i64 {
        self.sharing.viewers.with_label_values(&[role.as_str()]).get()
    }

    /// Counts a recording begun.
    pub fn recording_started(&self) {
        self.recordings.active.inc();
    }

    /// Counts a recording ended (its file closed).
    pub fn recording_ended(&self) {
        self.recordings.active.dec();
    }

    /// Counts `n` bytes written to a recording.
    pub fn recording_written(&self, n: u64) {
        self.recordings.bytes.inc_by(n);
    }

    /// Counts one event a recording could not queue.
    pub fn recording_event_dropped(&self) {
        self.recordings.dropped.inc();
    }

    /// Counts one recording failed.
    pub fn recording_failed(&self, why: RecordingFailureKind) {
        self.recordings.failures.with_label_values(&[why.as_str()]).inc();
    }

    /// Counts `n` recordings removed by retention.
    pub fn recordings_expired(&self, n: usize) {
        self.recordings.retention_removed.inc_by(n as u64);
    }

    /// Counts one audit log line dropped.
    pub fn audit_line_dropped(&self) {
        self.recordings.audit_dropped.inc();
    }

    /// Recordings being written (for tests).
    pub fn recordings_active(&self) -> i64 {
        self.recordings.active.get()
    }

    /// Recordings failed for `why` so far (for tests).
    pub fn recording_failures(&self, why: RecordingFailureKind) -> u64 {
        self.recordings.failures.with_label_values(&[why.as_str()]).get()
    }

    /// Recordings removed by retention so far (for tests).
    pub fn recordings_removed(&self) -> u64 {
        self.recordings.retention_removed.get()
    }

    // The Docker engine.

    /// Counts one engine call and its latency.
    pub fn docker_call(&self, op: DockerOp, ok: bool, took: Duration) {
        self.docker.latency.with_label_values(&[op.as_str()]).observe(took.as_secs_f64());
        self.docker.calls.with_label_values(&[op.as_str(), result(ok)]).inc();
    }

    /// Counts one Docker event seen.
    pub fn docker_event(&self, kind: &EventKind) {
        self.docker.events.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts one Docker event for a change berth itself made, whose inspect was skipped.
    pub fn docker_event_expected(&self) {
        self.docker.events_expected.inc();
    }

    /// Docker events whose inspect was skipped, for tests.
    pub fn docker_events_expected(&self) -> u64 {
        self.docker.events_expected.get()
    }

    /// Sets whether the engine answers.
    pub fn set_docker_up(&self, up: bool) {
        self.docker.up.set(i64::from(up));
    }

    // The edge.

    /// Counts one WebSocket connection accepted, now open.
    pub fn ws_opened(&self) {
        self.edge.ws_total.inc();
        self.edge.ws_open.inc();
    }

    /// Counts one WebSocket connection closed, under its close code's label.
    pub fn ws_closed(&self, code: &str) {
        self.edge.ws_open.dec();
        self.edge.ws_closed.with_label_values(&[code]).inc();
    }

    /// Counts one client that went away without a close frame.
    pub fn ws_client_reset(&self) {
        self.edge.ws_client_resets.inc();
    }

    // The warm pool.

    /// Sets a profile's pool: its configured size and how many of its containers are ready.
    pub fn set_pool(&self, profile: &ProfileName, size: usize, ready: usize) {
        self.pool.size.with_label_values(&[profile.as_str()]).set(gauge_value(size));
        self.pool.ready.with_label_values(&[profile.as_str()]).set(gauge_value(ready));
        // The profile's counters exist from its first report, at zero.
        self.pool.claims.with_label_values(&[profile.as_str()]);
        self.pool.misses.with_label_values(&[profile.as_str()]);
    }

    /// Forgets the series of a profile that no longer has a pool.
    pub fn forget_pool(&self, profile: &ProfileName) {
        let _ = self.pool.size.remove_label_values(&[profile.as_str()]);
        let _ = self.pool.ready.remove_label_values(&[profile.as_str()]);
    }

    /// A session claimed a pooled container of `profile`.
    pub fn pool_claim(&self, profile: &ProfileName) {
        self.pool.claims.with_label_values(&[profile.as_str()]).inc();
    }

    /// A session of `profile`, which has a pool, starts cold.
    pub fn pool_miss(&self, profile: &ProfileName) {
        self.pool.misses.with_label_values(&[profile.as_str()]).inc();
    }

    /// A pooled container became ready `took` after its create began.
    pub fn pool_refilled(&self, took: Duration) {
        self.pool.refill.with_label_values::<&str>(&[]).observe(took.as_secs_f64());
    }

    /// A pooled container was removed.
    pub fn pool_removed(&self, reason: PoolRemoveReason) {
        self.pool.removed.with_label_values(&[reason.as_str()]).inc();
    }

    /// A profile's pool size and ready count (tests).
    pub fn pool(&self, profile: &ProfileName) -> (i64, i64) {
        (
            self.pool.size.with_label_values(&[profile.as_str()]).get(),
            self.pool.ready.with_label_values(&[profile.as_str()]).get(),
        )
    }

    /// Records the time from a WebSocket connect to its first terminal output byte, by how its session started.
    pub fn first_output(&self, start: Start, took: Duration) {
        self.edge.first_output.with_label_values(&[start.as_str()]).observe(took.as_secs_f64());
    }

    /// Counts `n` terminal bytes that went `direction`.
    pub fn bytes(&self, direction: Direction, n: u64) {
        self.edge.bytes.with_label_values(&[direction.as_str()]).inc_by(n);
    }

    /// Sets how many TCP connections are open, and how many of them have not yet sent a hello.
    pub fn set_connections(&self, open: usize, pending: usize) {
        self.edge.connections.set(gauge_value(open));
        self.edge.connections_pending.set(gauge_value(pending));
    }

    /// Counts one connection closed before it was served.
    pub fn connection_dropped(&self, why: Dropped) {
        self.edge.connections_dropped.with_label_values(&[why.as_str()]).inc();
    }

    // The policy file.

    /// Counts one policy reload.
    pub fn reload(&self, res: ReloadResult) {
        self.policy.reloads.with_label_values(&[res.as_str()]).inc();
    }

    /// Sets the time of the last successful policy load, in Unix milliseconds.
    pub fn set_policy_loaded(&self, unix_millis: u64) {
        self.policy.loaded.set(unix_millis as f64 / 1000.0);
    }

    /// Sets how many changed keys wait for a restart.
    pub fn set_restart_pending(&self, n: usize) {
        self.policy.restart_pending.set(gauge_value(n));
    }

    // Peers.

    /// Sets whether this replica's sentinel runs.
    pub fn set_sentinel_up(&self, up: bool) {
        self.peers.sentinel_up.set(i64::from(up));
    }

    /// Sets how many peers are seen down.
    pub fn set_peers_down(&self, n: usize) {
        self.peers.down.set(gauge_value(n));
    }

    /// Sets this replica's fencing epoch.
    pub fn set_epoch(&self, epoch: u64) {
        self.peers.epoch.set(gauge_value(epoch));
    }

    /// Counts one takeover attempt of a dead peer.
    pub fn takeover(&self, res: TakeoverResult) {
        self.peers.takeovers.with_label_values(&[res.as_str()]).inc();
    }

    /// Counts one claim on this replica refused.
    pub fn claim_refused(&self) {
        self.peers.claims_refused.inc();
    }
}

/// Getters: what tests (and the controller's view of the engine) read back.
impl Metrics {
    /// How many `op` calls have ended, successfully (`ok`) or not.
    pub fn docker_calls(&self, op: DockerOp, ok: bool) -> u64 {
        self.docker.calls.with_label_values(&[op.as_str(), result(ok)]).get()
    }

    /// Whether the engine answered last time it was asked.
    pub fn docker_up(&self) -> bool {
        self.docker.up.get() == 1
    }

    /// How many reconcile passes have run.
    pub fn reconcile_passes(&self) -> u64 {
        self.controller.reconcile_passes.get()
    }

    /// How many containers were removed for `reason`.
    pub fn removed(&self, reason: RemoveReason) -> u64 {
        self.controller.removed.with_label_values(&[reason.as_str()]).get()
    }

    /// How many policy reloads ended with `res`.
    pub fn reloads(&self, res: ReloadResult) -> u64 {
        self.policy.reloads.with_label_values(&[res.as_str()]).get()
    }

    /// How many WebSocket closes were counted under `code`.
    pub fn ws_closes(&self, code: &str) -> u64 {
        self.edge.ws_closed.with_label_values(&[code]).get()
    }

    /// How many clients went away without a close frame.
    pub fn ws_client_resets(&self) -> u64 {
        self.edge.ws_client_resets.get()
    }

    /// How many TCP connections are open.
    pub fn connections(&self) -> i64 {
        self.edge.connections.get()
    }

    /// How many open connections have not yet sent a hello.
    pub fn connections_pending(&self) -> i64 {
        self.edge.connections_pending.get()
    }

    /// How many connections were dropped for `why`.
    pub fn connections_dropped(&self, why: Dropped) -> u64 {
        self.edge.connections_dropped.with_label_values(&[why.as_str()]).get()
    }

    /// This replica's fencing epoch.
    pub fn epoch(&self) -> i64 {
        self.peers.epoch.get()
    }

    /// How many peers are seen down.
    pub fn peers_down(&self) -> i64 {
        self.peers.down.get()
    }

    /// How many takeovers ended with `res`.
    pub fn takeovers(&self, res: TakeoverResult) -> u64 {
        self.peers.takeovers.with_label_values(&[res.as_str()]).get()
    }

    /// How many claims on this replica were refused.
    pub fn claims_refused(&self) -> u64 {
        self.peers.claims_refused.get()
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
        assert!(text.contains(r#"berth_time_to_first_output_seconds_count{start="pool"} 0"#));
        assert!(text.contains(r#"berth_time_to_first_output_seconds_count{start="cold"} 0"#));
        assert!(text.contains(r#"berth_connections_dropped_total{reason="header_timeout"} 0"#));
        assert!(!text.contains("session_id"));
    }

    #[test]
    fn every_rejection_reason_is_pre_created() {
        let text = Metrics::new().render();
        for r in Rejection::ALL {
            let series = format!(r#"berth_admissions_rejected_total{{reason="{}"}} 0"#, r.as_str());
            assert!(text.contains(&series), "{series} missing");
        }
    }

    #[test]
    fn each_method_counts_under_its_label() {
        let m = Metrics::new();
        m.rejected(berth_reconciler::admission::Reject::PerIp);
        m.rejected(Rejection::QueueTimeout);
        m.takeover(TakeoverResult::Lost);
        m.reload(ReloadResult::InPlace);
        m.bytes(Direction::Out, 7);
        m.set_epoch(3);
        let text = m.render();
        for series in [
            r#"berth_admissions_rejected_total{reason="per_ip"} 1"#,
            r#"berth_admissions_rejected_total{reason="queue_timeout"} 1"#,
            r#"berth_peer_takeovers_total{result="lost"} 1"#,
            r#"berth_policy_reloads_total{result="in_place"} 1"#,
            r#"berth_terminal_bytes_total{direction="out"} 7"#,
            "berth_epoch 3",
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        assert_eq!((m.takeovers(TakeoverResult::Lost), m.reloads(ReloadResult::InPlace), m.epoch()), (1, 1, 3));
    }
}
