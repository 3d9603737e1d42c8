//! Policy hot reload: watches the policy file's parent directory and listens for SIGHUP.
//!
//! The watcher applies a file only when it is *replaced* (renamed into place, or a Kubernetes ConfigMap swap):
//! a file written in place may be caught half-written, and its missing sections would take their defaults, so
//! such a change is reported and waits for a rename or a SIGHUP (see `docs/decisions/0015-*.md`). Keys that
//! only a restart applies keep their running values, and are reported. An invalid file is logged and counted,
//! and the old policy stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use berth_reconciler::Policy;
use berth_reconciler::policy_diff::{hold_restart_only, restart_only};
use futures::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, info, warn};

use crate::metrics::{Metrics, ReloadResult};

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
    /// Keys the file changes that only a restart applies: the policy in force keeps their running values.
    pub restart_pending: Vec<String>,
    /// Set when the file was changed in place after the last reload, and that change was not applied.
    pub not_applied: Option<String>,
    /// Unix ms of the last attempt.
    pub at: u64,
}

/// Why the watcher saw the policy file change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileChange {
    /// A complete file was renamed onto the policy path, or a ConfigMap swapped its `..data` link: apply it.
    Replaced = 1,
    /// The file was created, truncated or written where it is: it may be half-written, so it is not applied.
    InPlace = 2,
}

const IN_PLACE: &str = "the policy file was changed in place and that change is not applied, since a file being \
                        written cannot be told from a finished one: replace the file by renaming a complete one \
                        onto it (write policy.yaml.new beside it, then mv), or send SIGHUP once it is complete";

/// How a change in the policy file's directory concerns the file named `name`. Opening or reading a file
/// changes nothing (and each reload opens the policy file: counting that would reload forever), and neither
/// does a change to another file, such as a log written beside it. Entries whose names start with `..` are how
/// Kubernetes swaps a ConfigMap's files in at once (`..data` and its timestamped targets).
fn classify(ev: &notify::Event, name: &std::ffi::OsStr) -> Option<FileChange> {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
    let named = |p: &PathBuf| p.file_name() == Some(name);
    let swapped_in = |p: &PathBuf| named(p) || p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".."));
    match ev.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            ev.paths.iter().any(swapped_in).then_some(FileChange::Replaced)
        }
        // Both carries (from, to): only the destination matters. Renaming the policy file away applies nothing.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            ev.paths.get(1).is_some_and(swapped_in).then_some(FileChange::Replaced)
        }
        EventKind::Modify(ModifyKind::Name(_) | ModifyKind::Metadata(_)) => None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            ev.paths.iter().any(named).then_some(FileChange::InPlace)
        }
        _ => None,
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Applies the policy file to the running policy: one writer of the policy channel and the reload status.
pub struct Reloader {
    path: PathBuf,
    load: Loader,
    /// What a valid file must also pass with the engine before it is applied (see [`Reloader::with_check`]).
    check: Option<Check>,
    tx: Arc<watch::Sender<Arc<Policy>>>,
    status: Arc<watch::Sender<ReloadStatus>>,
    metrics: Arc<Metrics>,
    /// The file as read when berth started: what a restart-only key is compared with, so that a flag
    /// overriding the file (`--listen`) is not reported as a pending change.
    boot: Option<Policy>,
    /// Digest of the file as last read by a reload, or last reported as changed in place.
    seen: Option<[u8; 32]>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader of `path`, reading it once now as the file berth started from.
    pub fn new(
        path: PathBuf,
        load: Loader,
        tx: Arc<watch::Sender<Arc<Policy>>>,
        status: Arc<watch::Sender<ReloadStatus>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let seen = digest(&path);
        let boot = load(&path).ok();
        Self { path, load, check: None, tx, status, metrics, boot, seen }
    }

    /// Also confirms each valid file with the engine (its profiles' runtimes) before it is applied; a file that
    /// fails the check is refused like an invalid one.
    #[must_use]
    pub fn with_check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }

    /// Loads the file and, if valid, publishes it with every restart-only key kept at its running value.
    /// Returns whether the policy in force changed. The engine check is not made: see [`Self::reload_checked`].
    pub fn reload(&mut self) -> bool {
        self.seen = digest(&self.path);
        let loaded = (self.load)(&self.path);
        self.apply(loaded)
    }

    /// [`Self::reload`], with the engine check first when there is one.
    pub async fn reload_checked(&mut self) -> bool {
        self.seen = digest(&self.path);
        let loaded = match ((self.load)(&self.path), self.check.clone()) {
            (Ok(p), Some(check)) => check(p).await.map_err(|e| format!("{}: {e}", self.path.display())),
            (loaded, _) => loaded,
        };
        self.apply(loaded)
    }

    fn apply(&mut self, loaded: Result<Policy, String>) -> bool {
        let at = crate::clock::now().as_millis();
        let running = self.tx.borrow().clone();
        let loaded = loaded.and_then(|file| {
            let mut p = file.clone();
            hold_restart_only(&mut p, &running).map(|()| (file, p)).map_err(|keys| {
                format!(
                    "{}: {} only take effect on a restart, and this berth cannot keep their running values",
                    self.path.display(),
                    keys.join(", ")
                )
            })
        });
        match loaded {
            Ok((file, p)) => {
                let pending = restart_only(self.boot.as_ref().unwrap_or(&running), &file);
                if !pending.is_empty() {
                    warn!(
                        keys = %pending.join(", "),
                        "policy changes that take effect only on restart; the running values are kept until then"
                    );
                }
                self.metrics.set_restart_pending(pending.len());
                let changed = *running != p;
                if changed {
                    info!(policy = %p.hash(), "policy reloaded");
                    self.tx.send_replace(Arc::new(p));
                }
                self.metrics.reload(ReloadResult::Ok);
                self.metrics.set_policy_loaded(at);
                let policy_hash = self.tx.borrow().hash();
                self.status.send_replace(ReloadStatus {
                    policy_hash,
                    last_error: None,
                    restart_pending: pending,
                    not_applied: None,
                    at,
                });
                changed
            }
            Err(e) => {
                warn!(errors = %e, "policy reload refused; the old policy stays in force");
                self.metrics.reload(ReloadResult::Error);
                let restart_pending = self.status.borrow().restart_pending.clone();
                let policy_hash = self.tx.borrow().hash();
                self.status.send_replace(ReloadStatus {
                    policy_hash,
                    last_error: Some(e),
                    restart_pending,
                    not_applied: None,
                    at,
                });
                false
            }
        }
    }

    /// Reports a change written in place, once per content, without applying it. Returns whether the file
    /// differed from what berth last read.
    pub fn changed_in_place(&mut self) -> bool {
        let now = digest(&self.path);
        if now.is_none() || now == self.seen {
            return false;
        }
        self.seen = now;
        warn!(file = %self.path.display(), "{IN_PLACE}");
        self.metrics.reload(ReloadResult::InPlace);
        let at = crate::clock::now().as_millis();
        self.status.send_modify(|s| {
            s.not_applied = Some(IN_PLACE.to_owned());
            s.at = at;
        });
        true
    }
}

/// Watches the policy file's directory and SIGHUP until the process ends. The watch and the signal handler are
/// in place when this returns, so a change made after it is seen.
pub fn spawn(mut reloader: Reloader) -> tokio::task::JoinHandle<()> {
    // What the watcher saw since the last pass, as `FileChange` bits; the task wakes on `wake`.
    let seen = Arc::new(AtomicU8::new(0));
    let wake = Arc::new(Notify::new());
    let path = reloader.path.clone();
    let dir = path.parent().map(Path::to_path_buf).filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
    let name = path.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    let (seen_w, wake_w) = (seen.clone(), wake.clone());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Some(change) = res.ok().and_then(|ev| classify(&ev, &name)) {
            seen_w.fetch_or(change as u8, Ordering::SeqCst);
            wake_w.notify_one();
        }
    });
    let watcher = match watcher {
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
    tokio::spawn(
        async move {
            // Held for the life of the loop.
            let _watcher = watcher;
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
                    () = wake.notified() => {
                        // A swap or an editor's save comes as several events; take them as one.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let bits = seen.swap(0, Ordering::SeqCst);
                        if bits & FileChange::Replaced as u8 != 0 {
                            reloader.reload_checked().await;
                        } else if bits & FileChange::InPlace as u8 != 0 {
                            reloader.changed_in_place();
                        }
                    }
                    () = hup_fut => {
                        info!("SIGHUP: reloading the policy");
                        reloader.reload_checked().await;
                    }
                }
            }
        }
        .in_current_span(),
    )
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    use super::{FileChange, Reloader, classify};

    fn ev(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn a_rename_onto_the_policy_file_or_a_configmap_swap_replaces_it() {
        let name = OsStr::new("policy.yaml");
        let to = ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/etc/berth/policy.yaml");
        assert_eq!(classify(&to, name), Some(FileChange::Replaced));
        let both = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/etc/berth/policy.yaml.new".into())
            .add_path("/etc/berth/policy.yaml".into());
        assert_eq!(classify(&both, name), Some(FileChange::Replaced));
        let swap = ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/etc/berth/..data");
        assert_eq!(classify(&swap, name), Some(FileChange::Replaced), "a Kubernetes ConfigMap swap");
    }

    #[test]
    fn writing_or_creating_the_policy_file_in_place_is_not_a_replacement() {
        let name = OsStr::new("policy.yaml");
        for kind in [
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
        ] {
            assert_eq!(classify(&ev(kind, "/etc/berth/policy.yaml"), name), Some(FileChange::InPlace), "{kind:?}");
        }
    }

    #[test]
    fn opening_renaming_away_or_writing_another_file_does_not_count() {
        let name = OsStr::new("policy.yaml");
        let open = ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/etc/berth/policy.yaml");
        assert_eq!(classify(&open, name), None, "a reload's own read");
        let log = ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/etc/berth/berth.log");
        assert_eq!(classify(&log, name), None, "a log beside the policy");
        let away = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/etc/berth/policy.yaml".into())
            .add_path("/etc/berth/policy.yaml~".into());
        assert_eq!(classify(&away, name), None, "an editor's backup");
        let tmp = ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/etc/berth/policy.yaml.new");
        assert_eq!(classify(&tmp, name), None, "the temporary file before its rename");
        let configmap_dir = ev(EventKind::Create(CreateKind::Folder), "/etc/berth/..2026_12_04");
        assert_eq!(classify(&configmap_dir, name), None, "a ConfigMap's files being written");
    }

    /// SIGHUP calls `reload`: it applies what the file holds, written in place or not, and still keeps the
    /// restart-only keys; `changed_in_place` reports a change once and applies nothing.
    #[test]
    fn a_reload_applies_the_file_as_it_is_and_an_in_place_change_is_only_reported() {
        use std::sync::Arc;

        use berth_reconciler::Policy;
        use tokio::sync::watch;

        let dir = std::env::temp_dir().join(format!("berth-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("policy.yaml");
        let header = "apiVersion: berth.dev/v1\nkind: Policy\n";
        std::fs::write(&path, format!("{header}server:\n  admin_listen: 127.0.0.2:9\n")).expect("write");
        let boot = crate::app::load_policy(&path).expect("valid");
        let tx = Arc::new(watch::channel(Arc::new(boot.clone())).0);
        let status = Arc::new(watch::channel(super::ReloadStatus::default()).0);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let load: super::Loader = Arc::new(crate::app::load_policy);
        let mut r = Reloader::new(path.clone(), load, tx.clone(), status.clone(), metrics);

        std::fs::write(&path, format!("{header}limits:\n  max_sessions: 3\n")).expect("write in place");
        assert!(r.changed_in_place(), "reported");
        assert!(!r.changed_in_place(), "once");
        assert!(status.borrow().not_applied.is_some());
        assert_eq!(**tx.borrow(), boot, "not applied");

        assert!(r.reload(), "SIGHUP applies it");
        let running: Policy = (**tx.borrow()).clone();
        assert_eq!(running.limits.max_sessions, 3);
        assert_eq!(running.server.admin_listen, boot.server.admin_listen, "the admin listener stays");
        assert_eq!(status.borrow().restart_pending, ["server.admin_listen"]);
        assert_eq!(status.borrow().not_applied, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
