#!/usr/bin/env bash
# Measures berth against the Docker floor on this machine, side by side, alternating in one run:
#   latency c=1 (N=20), latency c=10 (N=50), churn c=5 for 30 s   floor, then berth, each time
#   leak N=60 (a third released, a third reset, a third `exit`)    berth
#   memory: N detached sessions with full replay rings            berth (BENCH_MEMORY_SESSIONS, default 500; 0 skips)
# Prints one JSON line per run (also kept in $work/results.jsonl) and the ratios berth / floor.
#
# berth runs from target/release with a temporary policy: its own label namespace and instance, limits raised for
# loopback load, a 10 s resume grace (so reset and detached sessions end within the run), and
# reconcile.concurrency 10. The executor's semaphore bounds berth's create/start/remove calls in flight; the floor
# has as many calls in flight as sessions, so berth gets at least the highest load concurrency (10) and its
# overhead is measured at equal Docker parallelism, not against a tighter bound.
#
# Loopback only. After the build, the whole run is bounded by BENCH_BUDGET seconds (default 570). berth is
# stopped by its pid; every container of the run's namespaces is removed on exit.
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

budget="${BENCH_BUDGET:-570}"
memory_sessions="${BENCH_MEMORY_SESSIONS:-500}"

docker info >/dev/null 2>&1 || { log "no Docker engine answers; run scripts/setup.sh first"; exit 1; }
command -v jq >/dev/null 2>&1 || need_packages jq
docker image inspect berth-session:latest >/dev/null 2>&1 \
  || { log "the session image berth-session:latest is missing; run scripts/build-images.sh"; exit 1; }

log "building berth, loadgen and floor (release)"
cargo build --release --quiet --bin berth --example loadgen --example floor

tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")"
ns="bench.berth.$tag"
floor_ns="bench.floor.$tag"
results="$work/results.jsonl"
: >"$results"
berth_pid=""

stop_berth() {
  [ -n "$berth_pid" ] || return 0
  if kill -0 "$berth_pid" 2>/dev/null; then
    kill -TERM "$berth_pid"
    for _ in $(seq 1 40); do
      kill -0 "$berth_pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$berth_pid" 2>/dev/null; then
      log "berth did not stop within 20 s; killing it"
      kill -KILL "$berth_pid" 2>/dev/null || true
    fi
  fi
  wait "$berth_pid" 2>/dev/null || true
  berth_pid=""
}

cleanup() {
  stop_berth
  for n in "$ns" "$floor_ns"; do
    ids="$(docker ps -aq --filter "label=$n.managed=true" 2>/dev/null || true)"
    if [ -n "$ids" ]; then
      log "removing $(echo "$ids" | wc -l) leftover container(s) of $n"
      # shellcheck disable=SC2086
      docker rm -f $ids >/dev/null 2>&1 || true
    fi
  done
}
trap cleanup EXIT

cat >"$work/policy.yaml" <<EOF
apiVersion: berth.dev/v1
kind: Policy
server:
  listen: 127.0.0.1:0
limits:
  max_sessions: 600
  max_anonymous: 600
  max_per_ip: 600
  connections_per_minute: 100000
  connection_burst: 100000
sessions:
  resume_grace: 10s
reconcile:
  # >= the highest load concurrency below (10): see the header of scripts/bench.sh.
  concurrency: 10
  shutdown: remove
docker:
  namespace: $ns
  name_prefix: bench-$tag
profiles:
  default:
    image: berth-session:latest
EOF

start_berth target/release/berth "$work" "bench-$tag" MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 || exit 1
berth_pid=$BERTH_PID
url=$BERTH_WS_URL

started=$(date +%s)
deadline=$((started + budget))
log "berth (pid $berth_pid) at $url; namespace $ns; floor namespace $floor_ns; work dir $work"
log "machine: $(nproc) cores, docker $(docker version --format '{{.Server.Version}}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# run LABEL SECONDS COMMAND...: runs one measurement bounded by SECONDS and by the overall budget, and records
# its JSON line (lines from warm-up runs, whose label starts with "warmup", are shown but not kept).
failed=0
run() {
  local label="$1" secs="$2"
  shift 2
  local left=$((deadline - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    log "$label: skipped, the time budget is spent"
    failed=1
    return 0
  fi
  [ "$secs" -le "$left" ] || secs="$left"
  log "$label"
  local line rc=0
  line="$(timeout --signal=TERM --kill-after=10 "$secs" "$@")" || rc=$?
  if [ -z "$line" ]; then
    log "$label: no result (exit status $rc)"
    failed=1
    return 0
  fi
  [ "$rc" -eq 0 ] || { log "$label: exit status $rc (failures or leftovers: see the line)"; failed=1; }
  echo "$line"
  case "$label" in warmup*) ;; *) echo "$line" >>"$results" ;; esac
}

floor=(target/release/examples/floor --policy "$work/policy.yaml" --namespace "$floor_ns")
loadgen=(target/release/examples/loadgen --url "$url" --namespace "$ns")

run "warmup floor" 60 "${floor[@]}" --mode latency --sessions 3 --concurrency 1 --timeout 50s
run "warmup berth" 60 "${loadgen[@]}" --mode latency --sessions 3 --concurrency 1 --timeout 50s
run "latency c=1: floor" 120 "${floor[@]}" --mode latency --sessions 20 --concurrency 1 --timeout 110s
run "latency c=1: berth" 120 "${loadgen[@]}" --mode latency --sessions 20 --concurrency 1 --timeout 110s
run "latency c=10: floor" 150 "${floor[@]}" --mode latency --sessions 50 --concurrency 10 --timeout 140s
run "latency c=10: berth" 150 "${loadgen[@]}" --mode latency --sessions 50 --concurrency 10 --timeout 140s
run "churn c=5 30 s: floor" 90 "${floor[@]}" --mode churn --duration 30s --sessions 2000 --concurrency 5 --timeout 80s
run "churn c=5 30 s: berth" 120 "${loadgen[@]}" --mode churn --duration 30s --sessions 2000 --concurrency 5 --timeout 110s
run "leak N=60: berth" 150 "${loadgen[@]}" --mode leak --sessions 60 --concurrency 10 --timeout 140s
if [ "$memory_sessions" -gt 0 ]; then
  run "memory N=$memory_sessions: berth" 300 "${loadgen[@]}" --mode memory --sessions "$memory_sessions" --concurrency 10 \
    --ring-bytes 256KiB --fill-bytes 320KiB --timeout 290s
fi

# berth's own view of the run (Docker calls by operation, passes, latencies), for the analysis.
if command -v curl >/dev/null 2>&1; then
  curl -sf "$(printf '%s' "$url" | sed 's|^ws://\([^/]*\)/.*|http://\1/metrics|')" >"$work/metrics.txt" \
    && log "berth's metrics at the end: $work/metrics.txt"
fi
log "stopping berth (pid $berth_pid)"
stop_berth
log "load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $(($(date +%s) - started)) s of measurement"

pick() { jq -r --arg t "$1" --arg m "$2" --argjson c "$3" \
  'select(.target == $t and .mode == $m and .concurrency == $c) | '"$4" "$results" | head -1; }
ratio() { jq -rn --arg a "$1" --arg b "$2" \
  'if ($a | test("^[0-9.]+$")) and ($b | test("^[0-9.]+$")) and ($b | tonumber) > 0
   then (($a | tonumber) / ($b | tonumber) * 100 | round / 100 | tostring) else "n/a" end'; }

echo
echo "== results ($results)"
cat "$results"
echo
echo "== berth / floor"
for c in 1 10; do
  b="$(pick berth latency "$c" '.time_to_prompt_ms.p50')"
  f="$(pick floor latency "$c" '.time_to_prompt_ms.p50')"
  echo "time-to-prompt p50, c=$c: berth $b ms / floor $f ms = $(ratio "$b" "$f")x   (goal <= 1.10x)"
done
b="$(pick berth churn 5 '.rate_drained_per_s')"
braw="$(pick berth churn 5 '.rate_per_s')"
f="$(pick floor churn 5 '.rate_per_s')"
echo "churn c=5: berth $b sessions/s (until drained; $braw client-side) / floor $f sessions/s = $(ratio "$b" "$f")   (goal >= 0.90)"
leak="$(jq -r 'select(.mode == "leak") | "leftover sessions \(.leftover_sessions), containers \(.leftover_containers), drained in \(.drain_s) s"' "$results")"
echo "leak N=60: ${leak:-n/a}"
mem="$(jq -r 'select(.mode == "memory") | .memory | "RSS \(.rss_detached_mib) MiB with \(.detached_sessions) detached sessions; bound \(.bound_mib) MiB; within: \(.within_bound)"' "$results")"
[ "$memory_sessions" -gt 0 ] && echo "memory: ${mem:-n/a}"
exit "$failed"
