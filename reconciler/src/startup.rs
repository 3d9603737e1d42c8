//! Startup handling of containers an earlier run of this instance left behind, per the policy's mode.
//!
//! Pure: the controller applies the result once, after the first complete list.

use crate::desired::{Attachment, Desired, DesiredSession};
use crate::ids::ContainerId;
use crate::observed::{ContainerState, Observed};
use crate::policy::{Policy, StartupMode};
use crate::time::Timestamp;

/// What startup does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Startup {
    /// Sessions adopted as detached, resumable for the resume grace.
    pub adopted: Vec<DesiredSession>,
    /// Containers to remove.
    pub remove: Vec<ContainerId>,
}

/// Decides the fate of this instance's containers that no desired session claims.
pub fn startup(desired: &Desired, observed: &Observed, policy: &Policy, now: Timestamp) -> Startup {
    let mut out = Startup::default();
    let stale_before = now.sub(policy.reconcile.stale_age);
    for c in observed.containers.values() {
        if !desired.manages(&c.labels) || desired.sessions.contains_key(&c.labels.session) || c.removal_requested {
            continue;
        }
        let running = c.state == ContainerState::Running;
        let adopt = match policy.reconcile.startup {
            StartupMode::Adopt => running,
            StartupMode::RemoveAll => false,
            StartupMode::Conservative => running && c.labels.created_at >= stale_before,
        };
        let duplicate = out.adopted.iter().any(|s| s.id == c.labels.session);
        if adopt && !duplicate {
            out.adopted.push(adopted_session(c, now));
        } else if !adopt && c.state != ContainerState::Removing {
            out.remove.push(c.id.clone());
        }
    }
    out
}

/// A detached session for a running container found at startup or left by a dead peer.
pub fn adopted_session(c: &crate::observed::ObservedContainer, now: Timestamp) -> DesiredSession {
    let mut s = DesiredSession::new(c.labels.session, c.labels.profile.clone(), c.labels.kind, c.labels.created_at);
    s.attachment = Attachment::Detached { since: now };
    s.last_activity = now;
    s.resume_hash = c.labels.resume_hash.clone();
    s.container = Some(c.id.clone());
    s.adopted = true;
    s
}
