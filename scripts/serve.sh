#!/usr/bin/env bash
# Sets everything up, then serves berth on its default policy.
source "$(dirname "$0")/lib.sh"
"$BERTH_ROOT/scripts/setup.sh"
cd "$BERTH_ROOT"
exec cargo run --release --bin berth -- serve --policy manifests/policy.yaml "$@"
