//! Compiles berth's launcher (`launcher/main.rs`, decision 0025) into a static, dependency-free binary that
//! berth mounts read-only into warm-pool containers. Its path reaches the crate as `BERTH_LAUNCHER`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=launcher/main.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("berth-launch");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args(["--edition", "2024", "--crate-name", "berth_launch", "--target", &target])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "strip=symbols", "-C", "target-feature=+crt-static"])
        .arg("launcher/main.rs")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run rustc for the launcher");
    assert!(status.success(), "compiling launcher/main.rs failed");
    println!("cargo:rustc-env=BERTH_LAUNCHER={}", out.display());
}
