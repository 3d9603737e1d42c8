# Shared helpers for berth's scripts. Sourced, not run.
set -euo pipefail

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BERTH_ROOT

log() { printf '[berth] %s\n' "$*" >&2; }

# A docker CLI call that gives up after 60 s: a cleanup must never wait forever on an engine that stopped
# answering. Usage: docker_bounded ARGS...
docker_bounded() { timeout --signal=KILL 60 docker "$@"; }

# What a failed run needs to tell an engine that stopped answering from a berth defect, printed to stderr and
# bounded in time and size: whether the engine answers; processes stuck in the kernel (state D, frozen ones too),
# the runtime's processes (runc, shims) with where they wait and the kernel stacks of the oldest runc ones; the
# engine's memory cgroup (a limit with the OOM killer off stalls whatever allocates); the tail of dockerd's log;
# and dockerd's and containerd's goroutines that have waited a minute or more, grouped by where they wait
# (SIGUSR1 makes dockerd write its stacks to a file in its exec root).
engine_report() (
  # Best effort: a part that fails or is cut short must not end the report, nor the caller.
  set +e +o pipefail
  log "engine report: is the engine answering?"
  if timeout 10 docker version --format '{{.Server.Version}}' >&2; then log "the engine answers"; else log "the engine does not answer within 10 s"; fi
  log "engine report: processes in state D (stuck in the kernel), and the runtime's own (runc, shims) with where they wait"
  ps -eo pid,stat,etime,wchan:32,args | awk 'NR == 1 || $2 ~ /^D/ || $5 ~ /(^|\/)(runc|containerd-shim[^ ]*)$/' |
    cut -c1-200 | head -40 >&2
  local p
  for p in $(ps -eo pid=,etimes=,args= | awk '$2 >= 30 && $3 ~ /(^|\/)runc$/ { print $1 }' | head -3); do
    log "engine report: kernel stack of runc pid $p ($(tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null | cut -c1-120))"
    cat /proc/"$p"/stack >&2 2>/dev/null
  done
  local dpid cg
  dpid="$(tr -dc '0-9' </var/run/docker.pid 2>/dev/null || true)"
  cg="$(awk -F: '$2 == "memory" { print $3 }' /proc/"$dpid"/cgroup 2>/dev/null)"
  if [ -n "$cg" ] && [ -d "/sys/fs/cgroup/memory$cg" ]; then
    log "engine report: dockerd's memory cgroup $cg: limit $(cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes"), usage $(cat "/sys/fs/cgroup/memory$cg/memory.usage_in_bytes"), $(tr '\n' ' ' <"/sys/fs/cgroup/memory$cg/memory.oom_control")"
  fi
  local dlog="${BERTH_DOCKERD_LOG:-/tmp/berth-dockerd.log}" pid stacks=""
  if [ -f "$dlog" ]; then
    log "engine report: the last lines of $dlog"
    grep -vE 'loading plugin|starting signal loop|Security options with' "$dlog" | tail -30 | cut -c1-400 >&2
  fi
  pid="$dpid"
  local before
  before="$(ls -t /var/run/docker/goroutine-stacks-*.log 2>/dev/null | head -1 || true)"
  if [ -n "$pid" ] && kill -USR1 "$pid" 2>/dev/null; then
    for _ in $(seq 1 20); do
      sleep 0.5
      stacks="$(ls -t /var/run/docker/goroutine-stacks-*.log 2>/dev/null | head -1 || true)"
      [ "$stacks" != "$before" ] && break
    done
    [ "$stacks" != "$before" ] || stacks=""
  fi
  if [ -n "$stacks" ]; then
    log "engine report: dockerd's goroutines waiting a minute or more, by the first frame of theirs ($stacks)"
    long_waits <"$stacks"
  fi
  # The engine's managed containerd serves its goroutines on a debug socket.
  local debug=/var/run/docker/containerd/containerd-debug.sock
  if [ -S "$debug" ] && timeout 10 curl -s --unix-socket "$debug" 'http://localhost/debug/pprof/goroutine?debug=2' \
      >/tmp/berth-containerd-stacks.log; then
    log "engine report: containerd's goroutines waiting a minute or more (/tmp/berth-containerd-stacks.log)"
    long_waits </tmp/berth-containerd-stacks.log
  fi
)

# Reads a Go goroutine dump on stdin; prints, grouped and counted, the first docker or containerd frame of each
# goroutine that has waited a minute or more.
long_waits() {
  awk '/^goroutine [0-9]+ \[.*minutes/ { want = 1; next } /^$/ { want = 0 }
       want && /github.com\/docker|containerd/ && !/^\t/ { sub(/\([^(]*$/, ""); print; want = 0 }' |
    sort | uniq -c | sort -rn | head -25 >&2
}

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
