//! The launcher (`launcher/main.rs`, decision 0025) is a program of its own, outside the workspace's crates:
//! `build.rs` compiles it, so cargo never runs its unit tests. This compiles them with the same compiler and runs
//! them.

use std::process::Command;

#[test]
fn the_launchers_own_unit_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = dir.join("berth-launch-tests");
    let root = env!("CARGO_MANIFEST_DIR");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .args(["--edition", "2024", "--test", "--crate-name", "berth_launch"])
        .arg(format!("{root}/launcher/main.rs"))
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("run rustc");
    assert!(
        built.status.success(),
        "compiling the launcher's tests failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&bin).output().expect("run the launcher's tests");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(ran.status.success(), "the launcher's tests failed:\n{out}\n{}", String::from_utf8_lossy(&ran.stderr));
    assert!(out.contains("test result: ok.") && !out.contains(" 0 passed"), "the launcher's tests ran: {out}");
}
