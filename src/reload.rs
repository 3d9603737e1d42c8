//! Policy hot reload: watches the policy file's parent directory (editors save by rename; Kubernetes
//! ConfigMaps swap a symlink) and listens for SIGHUP. A valid file replaces the policy at once; an invalid one
//! is logged and counted, and the old policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_reconciler::{Policy, Timestamp};
use futures::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Reads and validates a policy file.
pub type Loader = Arc<dyn Fn(&Path) -> Result<Policy, String> + Send + Sync>;

/// Checks a valid file's policy against the engine (its profiles' runtimes): the policy back, or why it is
/// refused.
pub type Check = Arc<dyn Fn(Policy) -> BoxFuture<'static, Result<Policy, String>> + Send + Sync>;

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

/// What cannot change without a restart; carried over from the running policy. Warns only when the file
/// itself changed such a value (`previous` is the file as last read), not when a flag overrides it.
fn keep_fixed(new: &mut Policy, current: &Policy, previous: Option<&Policy>) {
    if let Some(prev) = previous {
        if new.server.listen != prev.server.listen || new.server.admin_listen != prev.server.admin_listen {
            warn!("listen addresses change only on restart; keeping the current ones");
        }
        if new.docker.namespace != prev.docker.namespace || new.docker.name_prefix != prev.docker.name_prefix {
            warn!("docker.namespace and docker.name_prefix change only on restart; keeping the current ones");
        }
    }
    new.server.listen = current.server.listen;
    new.server.admin_listen = current.server.admin_listen;
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
    previous: &mut Option<Policy>,
) -> bool {
    let at = Timestamp::now().as_millis();
    match load(path) {
        Ok(mut p) => {
            let current = tx.borrow().clone();
            let as_read = p.clone();
            keep_fixed(&mut p, &current, previous.as_ref());
            *previous = Some(as_read);
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

/// Whether a change in the policy file's directory may have changed the file named `name`. Opening or reading
/// a file changes nothing (and each reload opens the policy file: counting that would reload forever), and
/// neither does a change to another file, such as a log written beside it. Entries whose names start with
/// `..` are how Kubernetes swaps a ConfigMap's files in at once (`..data` and its timestamped targets).
fn may_change_policy(ev: &notify::Event, name: &std::ffi::OsStr) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    let writes = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    writes
        && ev.paths.iter().filter_map(|p| p.file_name()).any(|n| n == name || n.as_encoded_bytes().starts_with(b".."))
}

/// Watches `path`'s directory and SIGHUP until the process ends.
pub async fn run(
    path: PathBuf,
    load: Loader,
    check: Check,
    tx: Arc<watch::Sender<Arc<Policy>>>,
    status: Arc<watch::Sender<ReloadStatus>>,
    metrics: Arc<Metrics>,
) {
    // The file as it was read at startup, so a flag overriding a fixed value does not warn on every reload.
    let mut previous = load(&path).ok();
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    // Held for the life of the loop, so the channel stays open even without a watcher.
    let _keep_open = ev_tx.clone();
    let dir = path.parent().map(Path::to_path_buf).filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
    let name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|ev| may_change_policy(&ev, &name)) {
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
        let loaded = match load(&path) {
            Ok(p) => check(p).await.map_err(|e| format!("{}: {e}", path.display())),
            Err(e) => Err(e),
        };
        reload_once(&path, &|_| loaded.clone(), &tx, &status, &metrics, &mut previous);
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    use super::may_change_policy;

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn writes_and_renames_of_the_policy_file_count() {
        let name = OsStr::new("policy.yaml");
        for kind in [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        ] {
            assert!(may_change_policy(&ev(kind, "/etc/berth/policy.yaml"), name), "{kind:?}");
        }
        let swap = ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/etc/berth/..data");
        assert!(may_change_policy(&swap, name), "a Kubernetes ConfigMap swap");
    }

    #[test]
    fn opening_the_policy_file_or_writing_another_file_does_not_count() {
        let name = OsStr::new("policy.yaml");
        let open = ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/etc/berth/policy.yaml");
        assert!(!may_change_policy(&open, name), "a reload's own read");
        let log = ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/etc/berth/berth.log");
        assert!(!may_change_policy(&log, name), "a log beside the policy");
    }
}
