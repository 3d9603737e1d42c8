//! berth's launcher (decision 0025): the static binary `build.rs` compiles from `launcher/main.rs`, embedded in
//! berth, and its installation where the engine can bind-mount it into warm-pool containers.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The launcher binary.
pub const BINARY: &[u8] = include_bytes!(env!("BERTH_LAUNCHER"));

/// Where berth installs the launcher: `BERTH_LAUNCHER_DIR`, else `BERTH_STATE_DIR` (which
/// `manifests/systemd/berth.service` sets: its private `/tmp` is invisible to the engine), else `berth-launcher`
/// in the temporary directory. The engine must see the same path: a local engine.
pub fn default_dir() -> PathBuf {
    std::env::var_os("BERTH_LAUNCHER_DIR")
        .or_else(|| std::env::var_os("BERTH_STATE_DIR"))
        .map_or_else(|| std::env::temp_dir().join("berth-launcher"), PathBuf::from)
}

/// Writes the launcher into `dir` (created if needed) as `berth-launch-<hash>`, read-only and executable, and
/// returns its path. The name carries the binary's hash, so a file that running containers have mounted is never
/// rewritten: a new berth version installs beside it.
///
/// # Errors
/// The directory or the file cannot be written.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let hash = hex::encode(&Sha256::digest(BINARY)[..8]);
    let path = dir.join(format!("berth-launch-{hash}"));
    if std::fs::read(&path).is_ok_and(|existing| existing == BINARY) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".berth-launch-{hash}.partial"));
    std::fs::write(&partial, BINARY)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o555))?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_as_a_read_only_executable_named_by_its_hash() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-launcher-test-{}", std::process::id()));
        let path = install(&dir).expect("installs");
        assert_eq!(std::fs::read(&path).expect("readable"), BINARY);
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o555);
        assert_eq!(install(&dir).expect("again"), path, "the same binary is not written twice");
        assert!(BINARY.starts_with(b"\x7fELF"), "a native executable");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
