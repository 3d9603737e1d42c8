//! Policy hot reload: watches the policy file's parent directory (editors save by rename; Kubernetes
//! ConfigMaps swap a symlink) and listens for SIGHUP. A valid file replaces the policy at once; an invalid one
//! is logged and counted, and the old policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::{Policy, Timestamp};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Reads and validates a policy file.
pub type Loader = Arc<dyn Fn(&Path) -> Result<Policy, String> + Send + Sync>;

/// The outcome of the last reload attempt, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Hash of the policy in force.
    pub policy_hash: String,
    /// Errors of the last refused file, one per line with line and column; empty when it was accepted.
    pub last_error: Option<String>,
    /// Unix ms of the last attempt.
    pub at: u64,
}

/// What cannot change without a restart; carried over from the running policy.
fn keep_fixed(new: &mut Policy, current: &Policy) {
    if new.server.listen != current.server.listen || new.server.admin_listen != current.server.admin_listen {
        warn!("listen addresses change only on restart; keeping the current ones");
    }
    new.server.listen = current.server.listen;
    new.server.admin_listen = current.server.admin_listen;
    if new.docker.namespace != current.docker.namespace || new.docker.name_prefix != current.docker.name_prefix {
        warn!("docker.namespace and docker.name_prefix change only on restart; keeping the current ones");
    }
    new.docker.namespace = current.docker.namespace.clone();
    new.docker.name_prefix = current.docker.name_prefix.clone();
}

/// Loads `path` and, if valid and different, publishes it.
pub fn reload_once(
    path: &Path,
    load: &dyn Fn(&Path) -> Result<Policy, String>,
    tx: &watch::Sender<Arc<Policy>>,
    status: &watch::Sender<ReloadStatus>,
    metrics: &Metrics,
) -> bool {
    let at = Timestamp::now().as_millis();
    match load(path) {
        Ok(mut p) => {
            let current = tx.borrow().clone();
            keep_fixed(&mut p, &current);
            let changed = *current != p;
            if changed {
                info!(policy = %p.hash(), "policy reloaded");
                tx.send_replace(Arc::new(p));
            }
            metrics.reloads.with_label_values(&["ok"]).inc();
            metrics.policy_loaded.set(at as f64 / 1000.0);
            status.send_replace(ReloadStatus { policy_hash: tx.borrow().hash(), last_error: None, at });
            changed
        }
        Err(e) => {
            warn!(errors = %e, "policy reload refused; the old policy stays in force");
            metrics.reloads.with_label_values(&["error"]).inc();
            status.send_replace(ReloadStatus { policy_hash: tx.borrow().hash(), last_error: Some(e), at });
            false
        }
    }
}

/// Watches `path`'s directory and SIGHUP until the process ends.
pub async fn run(
    path: PathBuf,
    load: Loader,
    tx: Arc<watch::Sender<Arc<Policy>>>,
    status: Arc<watch::Sender<ReloadStatus>>,
    metrics: Arc<Metrics>,
) {
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    // Held for the life of the loop, so the channel stays open even without a watcher.
    let _keep_open = ev_tx.clone();
    let dir = path.parent().map(Path::to_path_buf).filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel means a reload is already pending: dropping this event loses nothing.
            let _ = ev_tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; SIGHUP still reloads");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "no file watcher; SIGHUP still reloads");
            None
        }
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            ev = ev_rx.recv() => {
                if ev.is_none() {
                    return;
                }
                // Editors write in several steps; let them finish.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while ev_rx.try_recv().is_ok() {}
            }
            () = hup_fut => info!("SIGHUP: reloading the policy"),
        }
        reload_once(&path, load.as_ref(), &tx, &status, &metrics);
    }
}
