#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite against the real Docker engine.
source "$(dirname "$0")/lib.sh"
BERTH_SETUP_TEST_TOOLS=1 "$BERTH_ROOT/scripts/setup.sh"
cd "$BERTH_ROOT"
cargo test --workspace --all-targets --no-fail-fast "$@"
