#!/usr/bin/env bash
# Installs and starts everything berth and its tests need on a fresh Debian/Ubuntu machine with Rust:
# the Docker engine, the session images, and the tools the end-to-end tests drive.
source "$(dirname "$0")/lib.sh"

need_packages build-essential pkg-config curl
"$BERTH_ROOT/scripts/ensure-docker.sh"
"$BERTH_ROOT/scripts/build-images.sh"
if [ "${BERTH_SETUP_TEST_TOOLS:-0}" = 1 ]; then
  need_packages chromium haproxy prometheus
fi
