#!/usr/bin/env bash
# Fails when the pure core crate (berth-reconciler) pulls in tokio, bollard, warp or hyper, at any depth
# (dev-dependencies are left out: tests may use what they like).
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"
tree="$(cargo tree -p berth-reconciler -e normal,build --prefix none --format '{p}')"
bad="$(printf '%s\n' "$tree" | grep -E '^(tokio|bollard|warp|hyper|mio)( |$)' || true)"
if [ -n "$bad" ]; then
  log "berth-reconciler must stay pure, but depends on:"
  printf '%s\n' "$bad" | sort -u >&2
  exit 1
fi
log "berth-reconciler: $(printf '%s\n' "$tree" | sort -u | wc -l) crates, none of tokio/bollard/warp/hyper"
