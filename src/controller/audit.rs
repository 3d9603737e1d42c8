//! The controller's audit trail: one line in the audit log when a session starts and one when it ends, with
//! who opened it. The identities of sessions that have not ended are the only state, bounded by the sessions.

use std::collections::HashMap;

use berth_reconciler::{DesiredSession, SessionId};

use crate::metrics::Metrics;
use crate::recording::audit::{AuditEntry, AuditEvent, AuditLog};
use crate::terminal::Terminal;

/// The audit log (when the policy keeps one) and who opened each live session.
#[derive(Debug, Default)]
pub(super) struct AuditTrail {
    log: Option<AuditLog>,
    identities: HashMap<SessionId, Option<String>>,
}

impl AuditTrail {
    pub(super) fn new(log: Option<AuditLog>) -> Self {
        Self { log, identities: HashMap::new() }
    }

    /// A session was admitted for `identity`.
    pub(super) fn started(&mut self, s: &DesiredSession, identity: Option<String>, metrics: &Metrics) {
        let Some(log) = &self.log else { return };
        let entry = AuditEntry {
            time_ms: crate::clock::now().as_millis(),
            event: AuditEvent::Start,
            session: s.id.to_string(),
            profile: s.profile.to_string(),
            identity: identity.clone(),
            client_ip: s.client_ip,
            reason: None,
            bytes_in: 0,
            bytes_out: 0,
            recording: None,
        };
        Self::write(log, &entry, metrics);
        self.identities.insert(s.id, identity);
    }

    /// A session is gone; `term` is its terminal, with its byte counts and recording.
    pub(super) fn ended(&mut self, s: &DesiredSession, term: Option<&Terminal>, metrics: &Metrics) {
        let identity = self.identities.remove(&s.id).flatten();
        let Some(log) = &self.log else { return };
        let entry = AuditEntry {
            time_ms: crate::clock::now().as_millis(),
            event: AuditEvent::End,
            session: s.id.to_string(),
            profile: s.profile.to_string(),
            identity,
            client_ip: s.client_ip,
            reason: Some(s.ending.as_ref().map_or("released", |r| r.code()).to_owned()),
            bytes_in: term.map_or(0, Terminal::bytes_in),
            bytes_out: term.map_or(0, Terminal::bytes_out),
            recording: term.and_then(Terminal::recording_name),
        };
        Self::write(log, &entry, metrics);
    }

    fn write(log: &AuditLog, entry: &AuditEntry, metrics: &Metrics) {
        let before = log.dropped();
        log.record(entry);
        if log.dropped() > before {
            metrics.audit_line_dropped();
        }
    }
}
