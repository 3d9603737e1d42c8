#!/usr/bin/env bash
# Installs and starts everything berth and its tests need on a fresh Debian/Ubuntu machine with Rust:
# the Docker engine, the session images, and (with BERTH_SETUP_TEST_TOOLS=1) the tools the end-to-end tests
# drive: Chromium, node and npm with web/node_modules, HAProxy, Prometheus.
source "$(dirname "$0")/lib.sh"

need_packages build-essential pkg-config curl
"$BERTH_ROOT/scripts/ensure-docker.sh"
"$BERTH_ROOT/scripts/build-images.sh"
if [ "${BERTH_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  need_packages chromium haproxy prometheus
  # node, npm and web/node_modules (playwright-core) for the browser test, tests/browser.rs. It also copies
  # web/vendor/ from the lockfile's packages: identical to the committed files, so the tree stays clean.
  "$BERTH_ROOT/scripts/build-web.sh"
fi
