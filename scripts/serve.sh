#!/usr/bin/env bash
# Sets everything up, then serves berth on its default policy.
source "$(dirname "$0")/lib.sh"
"$BERTH_ROOT/scripts/setup.sh"
cd "$BERTH_ROOT"
# glibc keeps freed replay buffers in its arenas; these hand large blocks back to the kernel (docs/performance.md).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}" MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
exec cargo run --release --bin berth -- serve --policy manifests/policy.yaml "$@"
