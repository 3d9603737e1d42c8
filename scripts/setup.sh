#!/usr/bin/env bash
# Installs and starts everything berth and its tests need on a fresh Debian/Ubuntu machine with Rust:
# the Docker engine, the session images, and (with BERTH_SETUP_TEST_TOOLS=1) the tools the end-to-end tests
# drive: Chromium, node and npm with web/node_modules, HAProxy, nginx, Prometheus, systemd-analyze, and gVisor's
# runsc registered with the engine (also with BERTH_RUNSC=1).
source "$(dirname "$0")/lib.sh"

need_packages build-essential pkg-config curl
"$BERTH_ROOT/scripts/ensure-docker.sh"
"$BERTH_ROOT/scripts/build-images.sh"
# gVisor's runsc, registered with the engine as the runtime `runsc` (profiles with `runtime: runsc`): with
# BERTH_RUNSC=1, and for the test tools, since tests/gvisor.rs and the leak run's runsc leg need it.
if [ "${BERTH_RUNSC:-0}" = 1 ] || [ "${BERTH_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  "$BERTH_ROOT/scripts/ensure-runsc.sh"
fi
if [ "${BERTH_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  # haproxy, nginx, prometheus (which also provides promtool) and systemd (systemd-analyze) check the
  # deployment files in manifests/ (tests/prometheus.rs). Their packaged services are not needed: the tests
  # start their own instances on free ports.
  need_packages chromium haproxy nginx prometheus systemd
  # node, npm and web/node_modules (playwright-core) for the browser test, tests/browser.rs. It also copies
  # web/vendor/ from the lockfile's packages: identical to the committed files, so the tree stays clean.
  "$BERTH_ROOT/scripts/build-web.sh"
fi
