//! The keeper of the recordings directory: at startup it trims what a crash tore, and then, every minute, it
//! removes what retention says has expired (the pure [`berth_reconciler::retention::expired`]), never a
//! recording still being written.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::Policy;
use berth_reconciler::retention::{Retention, expired};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::terminal::Terminals;

/// How often retention runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Trims every recording in `dir` that ends in a torn line (a crash mid-write). Returns how many it repaired.
///
/// # Errors
/// When the directory cannot be listed; a file that cannot be repaired is logged and skipped.
pub async fn repair_all(dir: &Path) -> std::io::Result<usize> {
    let mut repaired = 0;
    for f in super::list(dir).await? {
        match super::repair(&dir.join(&f.name)).await {
            Ok(0) => {}
            Ok(cut) => {
                info!(file = %f.name, cut, "recording repaired: a torn last line was trimmed");
                repaired += 1;
            }
            Err(e) => warn!(file = %f.name, error = %e, "recording could not be repaired"),
        }
    }
    Ok(repaired)
}

/// One retention pass over `dir`: removes the expired recordings that are not in `active`. Returns the names
/// removed.
///
/// # Errors
/// When the directory cannot be listed; a file that cannot be removed is logged and skipped.
pub async fn retain(dir: &Path, active: &BTreeSet<String>, rules: Retention) -> std::io::Result<Vec<String>> {
    if rules == Retention::default() {
        return Ok(Vec::new());
    }
    let files = super::list(dir).await?;
    let active: BTreeSet<&str> = active.iter().map(String::as_str).collect();
    let mut removed = Vec::new();
    for name in expired(&files, &active, rules, crate::clock::now()) {
        match tokio::fs::remove_file(dir.join(name)).await {
            Ok(()) => removed.push(name.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %name, error = %e, "expired recording could not be removed"),
        }
    }
    if !removed.is_empty() {
        info!(removed = removed.len(), "retention removed recordings");
    }
    Ok(removed)
}

/// Runs retention on the policy's recordings directory every [`RETENTION_INTERVAL`], the first pass at once.
pub async fn run(mut policy: watch::Receiver<Arc<Policy>>, terminals: Terminals, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = policy.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let (dir, rules) = {
            let p = policy.borrow();
            (p.recordings.dir.clone(), p.recordings.retention)
        };
        let Some(dir) = dir else { continue };
        match retain(&dir, &terminals.active_recordings(), rules).await {
            Ok(removed) => metrics.recordings_expired(removed.len()),
            Err(e) => warn!(dir = %dir.display(), error = %e, "recordings could not be listed for retention"),
        }
    }
}
