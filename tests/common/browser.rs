//! What the browser tests need: node >= 20, Chromium and web/node_modules (playwright-core).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Checks that node, Chromium and playwright-core are installed, or fails with what to run.
pub fn browser_tools(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("BERTH_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let mut missing = Vec::new();
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            // playwright-core declares node >= 20.
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let major: u32 =
                version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if major < 20 {
                missing.push(format!("node >= 20 (this one is {version})"));
            }
        }
        _ => missing.push("node (Debian packages nodejs and npm)".to_owned()),
    }
    if !chromium.is_file() {
        missing.push(format!("{} (Debian package chromium)", chromium.display()));
    }
    let driver = root.join("web/node_modules/playwright-core");
    if !driver.is_dir() {
        missing.push(format!("{} (npm ci in web/)", driver.display()));
    }
    assert!(
        missing.is_empty(),
        "The browser test needs node, Chromium and web/node_modules, and was not skipped. Missing: {}. \
         Run scripts/test.sh (or BERTH_SETUP_TEST_TOOLS=1 scripts/setup.sh), which installs them.",
        missing.join("; ")
    );
    chromium
}
