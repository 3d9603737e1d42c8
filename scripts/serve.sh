#!/usr/bin/env bash
# Sets everything up, then serves berth on its default policy, or on the one a `--policy FILE` argument names
# (every argument goes to `berth serve`), e.g. scripts/serve.sh --policy manifests/examples/warm-pool.yaml
source "$(dirname "$0")/lib.sh"
"$BERTH_ROOT/scripts/setup.sh"
cd "$BERTH_ROOT"
# glibc keeps freed replay buffers in its arenas; these hand large blocks back to the kernel (docs/performance.md).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}" MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-131072}"
policy=(--policy manifests/policy.yaml)
for arg in "$@"; do
  case "$arg" in --policy | --policy=*) policy=() ;; esac
done
exec cargo run --release --bin berth -- serve "${policy[@]}" "$@"
