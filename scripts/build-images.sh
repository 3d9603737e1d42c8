#!/usr/bin/env bash
# Builds berth's session images locally from manifests/images (no registry is needed or used):
#   berth-session:latest  the default busybox shell
#   berth-session:v2      the same, marked as variant v2 (tests use it for image changes)
source "$(dirname "$0")/lib.sh"

need_packages busybox-static
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$BERTH_ROOT"/manifests/images/session/* "$ctx"/
cp "$(command -v busybox || echo /bin/busybox)" "$ctx/busybox"
for variant in latest v2; do
  docker build -q --build-arg "BERTH_IMAGE_VARIANT=$variant" -t "berth-session:$variant" "$ctx" >/dev/null 2>"$ctx/build.err" \
    || { cat "$ctx/build.err" >&2; exit 1; }
done
log "built berth-session:latest and berth-session:v2"
