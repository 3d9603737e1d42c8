#!/usr/bin/env bash
# Measures berth against the Docker floor on this machine, side by side, alternating in one run:
#   latency c=1 (N=20), latency c=10 (N=30)   floor, berth cold, berth with a warm pool, each time
#   burst of twice the pool (N=2*pool, all at once)   berth with a warm pool: pooled and cold parts from its metrics
#   churn c=5 for 30 s                         floor, berth cold, berth with a warm pool
#   idle pool for 60 s                         berth with a warm pool: CPU (berth and its pooled containers), memory
#   leak N=60 (a third released, a third reset, a third `exit`)    berth cold
#   memory: N detached sessions with full replay rings            berth cold (BENCH_MEMORY_SESSIONS, default 500; 0 skips)
# Prints one JSON line per run (also kept in $work/results.jsonl, or BENCH_OUT when set), each with a `variant`
# (floor, cold, pooled), then the ratios against the floor. The latency lines carry every sample
# (`time_to_prompt_samples_ms`): `cargo run --example ttp_plot -- RESULTS OUT.svg` draws them.
#
# Two berths run from target/release, each with a temporary policy: its own label namespace and instance, limits
# raised for loopback load, a 10 s resume grace (so reset and detached sessions end within the run), and
# reconcile.concurrency 10. The pooled one's default profile keeps a warm pool of BENCH_POOL (default 30, enough
# for the c=10 run) and waits for it to be full before each of its runs. The executor's semaphore bounds berth's
# create/start/remove calls in flight; the floor has as many calls in flight as sessions, so berth gets at least
# the highest load concurrency (10) and its overhead is measured at equal Docker parallelism.
#
# Loopback only. After the build, the whole run is bounded by BENCH_BUDGET seconds (default 900). Both berths are
# stopped by their pids; every container of the run's namespaces is removed on exit.
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

budget="${BENCH_BUDGET:-900}"
pool_size="${BENCH_POOL:-30}"
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
pool_ns="bench.pooled.$tag"
floor_ns="bench.floor.$tag"
results="${BENCH_OUT:-$work/results.jsonl}"
: >"$results"
pids=()

# stop_pid PID: SIGTERM, up to 20 s, then SIGKILL.
stop_pid() {
  local pid="$1"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "berth (pid $pid) did not stop within 20 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  pids=()
  for n in "$ns" "$pool_ns" "$floor_ns"; do
    ids="$( (docker ps -aq --filter "label=$n.managed=true"; docker ps -aq --filter "label=$n.pool"; \
      docker ps -aq --filter "label=$n.peer") 2>/dev/null || true)"
    if [ -n "$ids" ]; then
      log "removing $(echo "$ids" | wc -l) leftover container(s) of $n"
      # shellcheck disable=SC2086
      docker rm -f $ids >/dev/null 2>&1 || true
    fi
  done
}
trap cleanup EXIT

# policy NAMESPACE [POOL]: the bench policy, with a warm pool of POOL on the default profile when given.
policy() {
  cat <<EOF
apiVersion: berth.dev/v1
kind: Policy
server:
  listen: 127.0.0.1:0
  max_pending_per_ip: 256
limits:
  max_sessions: 600
  max_anonymous: 600
  max_per_ip: 600
  connections_per_minute: 100000
  connection_burst: 100000
  queue_len: 200
  max_queued_per_ip: 200
sessions:
  resume_grace: 10s
reconcile:
  # >= the highest load concurrency below (10): see the header of scripts/bench.sh.
  concurrency: 10
  shutdown: remove
docker:
  namespace: $1
  name_prefix: bench-$tag
profiles:
  default:
    image: berth-session:latest
EOF
  if [ -n "${2:-}" ]; then
    cat <<EOF
    command: [/bin/sh, -i]
    pool:
      size: $2
      max_age: 30m
EOF
  fi
}

mkdir -p "$work/cold" "$work/pooled"
policy "$ns" >"$work/cold/policy.yaml"
policy "$pool_ns" "$pool_size" >"$work/pooled/policy.yaml"
# The floor creates what the cold berth's default profile would.
cp "$work/cold/policy.yaml" "$work/policy.yaml"

start_berth target/release/berth "$work/cold" "bench-$tag" MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 || exit 1
cold_pid=$BERTH_PID
pids+=("$cold_pid")
cold_url=$BERTH_WS_URL
start_berth target/release/berth "$work/pooled" "bench-pool-$tag" MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 \
  BERTH_LAUNCHER_DIR="$work/pooled" || exit 1
pool_pid=$BERTH_PID
pids+=("$pool_pid")
pool_url=$BERTH_WS_URL
pool_metrics="$(printf '%s' "$pool_url" | sed 's|^ws://\([^/]*\)/.*|http://\1/metrics|')"

started=$(date +%s)
deadline=$((started + budget))
log "cold berth (pid $cold_pid) at $cold_url, namespace $ns; pooled berth (pid $pool_pid, pool $pool_size) at $pool_url, namespace $pool_ns; floor namespace $floor_ns; work dir $work"
log "machine: $(nproc) cores, docker $(docker version --format '{{.Server.Version}}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# metric NAME: the pooled berth's value of one series (exact name with labels), or 0.
metric() {
  curl -sf "$pool_metrics" | awk -v s="$1" '$1 == s { print $2; found=1 } END { if (!found) print 0 }'
}

# pool_full: waits (60 s at most) until the pooled berth's pool is full again.
pool_full() {
  local ready=0
  for _ in $(seq 1 240); do
    ready="$(metric 'berth_pool_ready{profile="default"}')"
    [ "${ready%.*}" -ge "$pool_size" ] 2>/dev/null && return 0
    sleep 0.25
  done
  log "the pool did not refill to $pool_size within 60 s (ready: $ready)"
}

# run LABEL VARIANT SECONDS COMMAND...: runs one measurement bounded by SECONDS and by the overall budget, and
# records its JSON line with its variant (lines from warm-up runs, whose label starts with "warmup", are shown
# but not kept). A pooled run starts with a full pool.
failed=0
run() {
  local label="$1" variant="$2" secs="$3"
  shift 3
  local left=$((deadline - $(date +%s)))
  if [ "$left" -lt 10 ]; then
    log "$label: skipped, the time budget is spent"
    failed=1
    return 0
  fi
  [ "$secs" -le "$left" ] || secs="$left"
  [ "$variant" != pooled ] || pool_full
  log "$label"
  local line rc=0
  line="$(timeout --signal=TERM --kill-after=10 "$secs" "$@")" || rc=$?
  if [ -z "$line" ]; then
    log "$label: no result (exit status $rc)"
    failed=1
    return 0
  fi
  [ "$rc" -eq 0 ] || { log "$label: exit status $rc (failures or leftovers: see the line)"; failed=1; }
  line="$(printf '%s' "$line" | jq -c --arg v "$variant" '. + {variant: $v}')"
  printf '%s\n' "$line" | jq -c 'del(.time_to_prompt_samples_ms)'
  case "$label" in warmup*) ;; *) echo "$line" >>"$results" ;; esac
}

floor=(target/release/examples/floor --policy "$work/policy.yaml" --namespace "$floor_ns")
cold=(target/release/examples/loadgen --url "$cold_url" --namespace "$ns")
pooled=(target/release/examples/loadgen --url "$pool_url" --namespace "$pool_ns")

run "warmup floor" floor 60 "${floor[@]}" --mode latency --sessions 3 --concurrency 1 --timeout 50s
run "warmup cold" cold 60 "${cold[@]}" --mode latency --sessions 3 --concurrency 1 --timeout 50s
run "warmup pooled" pooled 60 "${pooled[@]}" --mode latency --sessions 3 --concurrency 1 --timeout 50s
for c in 1 10; do
  n=$([ "$c" -eq 1 ] && echo 20 || echo 30)
  run "latency c=$c: floor" floor 150 "${floor[@]}" --mode latency --sessions "$n" --concurrency "$c" --timeout 140s --samples
  run "latency c=$c: cold" cold 150 "${cold[@]}" --mode latency --sessions "$n" --concurrency "$c" --timeout 140s --samples
  run "latency c=$c: pooled" pooled 150 "${pooled[@]}" --mode latency --sessions "$n" --concurrency "$c" --timeout 140s --samples
done

# A burst of twice the pool, all at once: the pooled berth's own histogram tells the pooled part from the cold one.
burst=$((2 * pool_size))
pool_full
series() { metric "berth_time_to_first_output_seconds_$1{start=\"$2\"}"; }
b0="$(series count pool) $(series sum pool) $(series count cold) $(series sum cold)"
run "burst N=$burst at once: pooled" pooled 150 "${pooled[@]}" --mode latency --sessions "$burst" --concurrency "$burst" --timeout 140s --samples
b1="$(series count pool) $(series sum pool) $(series count cold) $(series sum cold)"
read -r pn0 ps0 cn0 cs0 <<<"$b0"
read -r pn1 ps1 cn1 cs1 <<<"$b1"
jq -nc --argjson pn "$pn1" --argjson pn0 "$pn0" --argjson ps "$ps1" --argjson ps0 "$ps0" \
  --argjson cn "$cn1" --argjson cn0 "$cn0" --argjson cs "$cs1" --argjson cs0 "$cs0" --argjson n "$burst" \
  'def part(n; n0; s; s0): {n: (n - n0), first_output_mean_ms: (if n > n0 then ((s - s0) / (n - n0) * 10000 | round / 10) else null end)};
   {target: "berth", variant: "pooled", mode: "burst", sessions: $n,
    pooled: part($pn; $pn0; $ps; $ps0), cold: part($cn; $cn0; $cs; $cs0)}' | tee -a "$results"

run "churn c=5 30 s: floor" floor 90 "${floor[@]}" --mode churn --duration 30s --sessions 2000 --concurrency 5 --timeout 80s
run "churn c=5 30 s: cold" cold 120 "${cold[@]}" --mode churn --duration 30s --sessions 2000 --concurrency 5 --timeout 110s
run "churn c=5 30 s: pooled" pooled 120 "${pooled[@]}" --mode churn --duration 30s --sessions 2000 --concurrency 5 --timeout 110s

# An idle pool: what the pooled berth and its waiting containers cost over 60 s, once the pool is full.
pool_full
ticks="$(getconf CLK_TCK)"
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
c0="$(cpu_of "$pool_pid")"
sleep 60
c1="$(cpu_of "$pool_pid")"
rss_kib="$(awk '/^VmRSS/ { print $2 }' "/proc/$pool_pid/status")"
# shellcheck disable=SC2046
stats="$(docker stats --no-stream --format '{{.CPUPerc}} {{.MemUsage}}' $(docker ps -q --filter "label=$pool_ns.pool") \
  2>/dev/null | awk '
    { gsub("%", "", $1); cpu += $1; m = $2; v = m + 0;
      if (m ~ /GiB/) v *= 1024; else if (m ~ /KiB/) v /= 1024; else if (m ~ /[0-9]B$/) v /= 1048576;
      mem += v; n++ }
    END { printf "%d %.2f %.1f", n, cpu, mem }')"
read -r idle_n idle_cpu idle_mem <<<"$stats"
jq -nc --argjson n "${idle_n:-0}" --argjson cpu "${idle_cpu:-0}" --argjson mem "${idle_mem:-0}" \
  --argjson ticks "$((c1 - c0))" --argjson hz "$ticks" --argjson rss "$rss_kib" --argjson size "$pool_size" \
  '{target: "berth", variant: "pooled", mode: "idle_pool", pool: $size, seconds: 60,
    berth_cpu_s: ($ticks / $hz), berth_cpu_pct: ($ticks / $hz / 60 * 100 * 100 | round / 100),
    berth_rss_mib: ($rss / 1024 * 10 | round / 10),
    containers: $n, containers_cpu_pct_now: $cpu, containers_mem_mib: $mem}' | tee -a "$results"

run "leak N=60: cold" cold 150 "${cold[@]}" --mode leak --sessions 60 --concurrency 10 --timeout 140s
if [ "$memory_sessions" -gt 0 ]; then
  run "memory N=$memory_sessions: cold" cold 300 "${cold[@]}" --mode memory --sessions "$memory_sessions" --concurrency 10 \
    --ring-bytes 256KiB --fill-bytes 320KiB --timeout 290s
fi

# berth's own view of the run (Docker calls by operation, passes, latencies), for the analysis.
for v in cold pooled; do
  url="$([ "$v" = cold ] && echo "$cold_url" || echo "$pool_url")"
  curl -sf "$(printf '%s' "$url" | sed 's|^ws://\([^/]*\)/.*|http://\1/metrics|')" >"$work/metrics-$v.txt" \
    && log "the $v berth's metrics at the end: $work/metrics-$v.txt"
done
log "stopping both berths (pids $cold_pid $pool_pid)"
cleanup
log "load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $(($(date +%s) - started)) s of measurement"

pick() { jq -r --arg v "$1" --arg m "$2" --argjson c "$3" \
  'select(.variant == $v and .mode == $m and .concurrency == $c) | '"$4" "$results" | head -1; }
ratio() { jq -rn --arg a "$1" --arg b "$2" \
  'if ($a | test("^[0-9.]+$")) and ($b | test("^[0-9.]+$")) and ($b | tonumber) > 0
   then (($a | tonumber) / ($b | tonumber) * 100 | round / 100 | tostring) else "n/a" end'; }

echo
echo "== results ($results)"
jq -c 'del(.time_to_prompt_samples_ms)' "$results"
echo
echo "== against the floor"
for c in 1 10; do
  f="$(pick floor latency "$c" '.time_to_prompt_ms.p50')"
  b="$(pick cold latency "$c" '.time_to_prompt_ms.p50')"
  echo "cold time-to-prompt p50, c=$c: $b ms / floor $f ms = $(ratio "$b" "$f")x   (goal <= 1.10x)"
  p="$(pick pooled latency "$c" '.time_to_prompt_ms.p50')"
  echo "pooled time-to-prompt p50, c=$c: $p ms / floor $f ms = $(ratio "$p" "$f")x   (goal <= $([ "$c" -eq 1 ] && echo 0.1 || echo 0.2)x)"
done
f="$(pick floor latency 10 '.time_to_prompt_ms.p50')"
p="$(pick pooled latency 10 '.time_to_prompt_ms.p99')"
echo "pooled time-to-prompt p99, c=10: $p ms / floor p50 $f ms = $(ratio "$p" "$f")x   (goal <= 0.5x)"
jq -r 'select(.mode == "burst") | "burst of \(.sessions) at once: pooled \(.pooled.n) (first output mean \(.pooled.first_output_mean_ms) ms), cold \(.cold.n) (mean \(.cold.first_output_mean_ms) ms)"' "$results"
f="$(pick floor churn 5 '.rate_per_s')"
for v in cold pooled; do
  b="$(pick "$v" churn 5 '.rate_drained_per_s')"
  braw="$(pick "$v" churn 5 '.rate_per_s')"
  echo "churn c=5, $v: $b sessions/s (until drained; $braw client-side) / floor $f sessions/s = $(ratio "$b" "$f")   (goal >= $([ "$v" = cold ] && echo 0.90 || echo 1.0))"
done
jq -r 'select(.mode == "idle_pool") | "idle pool of \(.pool) over 60 s: berth \(.berth_cpu_pct)% of a core, RSS \(.berth_rss_mib) MiB; \(.containers) containers at \(.containers_cpu_pct_now)% CPU, \(.containers_mem_mib) MiB"' "$results"
leak="$(jq -r 'select(.mode == "leak") | "leftover sessions \(.leftover_sessions), containers \(.leftover_containers), drained in \(.drain_s) s"' "$results")"
echo "leak N=60: ${leak:-n/a}"
mem="$(jq -r 'select(.mode == "memory") | .memory | "RSS \(.rss_detached_mib) MiB with \(.detached_sessions) detached sessions; bound \(.bound_mib) MiB; within: \(.within_bound)"' "$results")"
[ "$memory_sessions" -gt 0 ] && echo "memory: ${mem:-n/a}"
exit "$failed"
