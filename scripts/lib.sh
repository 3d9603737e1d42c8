# Shared helpers for berth's scripts. Sourced, not run.
set -euo pipefail

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BERTH_ROOT

log() { printf '[berth] %s\n' "$*" >&2; }

# Installs Debian packages that are missing. Usage: need_packages pkg...
need_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# Starts a berth binary in the background and waits (30 s at most) for the address it prints.
# Usage: start_berth BINARY WORKDIR TAG [ENV=VALUE...]; runs `BINARY serve --policy WORKDIR/policy.yaml` with
# instance TAG and state dir WORKDIR/state, stdout in WORKDIR/berth.out and the JSON log in WORKDIR/berth.log.
# Sets BERTH_PID, and BERTH_WS_URL (ws://ADDR/ws). Returns non-zero when berth exits or never reports (a berth
# that never reported is stopped first, by its pid).
start_berth() {
  local bin="$1" work="$2" tag="$3"
  shift 3
  env "$@" "$bin" serve --policy "$work/policy.yaml" --instance "$tag" --state-dir "$work/state" \
    --log-format json >"$work/berth.out" 2>"$work/berth.log" &
  BERTH_PID=$!
  BERTH_WS_URL=""
  for _ in $(seq 1 60); do
    BERTH_WS_URL="$(sed -n 's|^berth listening on http://\([^/]*\)/.*|ws://\1/ws|p' "$work/berth.out")"
    [ -n "$BERTH_WS_URL" ] && return 0
    kill -0 "$BERTH_PID" 2>/dev/null || { log "berth exited; see $work/berth.log"; tail -5 "$work/berth.log" >&2; return 1; }
    sleep 0.5
  done
  log "berth did not report its address within 30 s"
  kill -KILL "$BERTH_PID" 2>/dev/null || true
  return 1
}
