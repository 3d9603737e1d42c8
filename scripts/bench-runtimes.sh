#!/usr/bin/env bash
# Time to prompt and memory per session for the OCI runtimes runc and runsc (gVisor), side by side in one run,
# with one berth binary and the load generator (examples/loadgen.rs):
#   for each runtime in BENCH_RUNTIMES (default "runc runsc"), a berth whose default profile names it, then
#     latency, N=BENCH_SESSIONS (default 20) at c=1, then at c=5
#     memory: BENCH_MEMORY_SESSIONS (default 10) idle sessions (prompt shown, detached); each container's
#     memory cgroup (memory.usage_in_bytes: for runsc the whole sandbox, its kernel included) is read
# Prints one JSON line per loadgen run, and one `memory` line per runtime. Uses the debug build unless
# BENCH_PROFILE=release. Loopback only; berth is stopped by pid, the run's containers are removed on exit.
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

runtimes="${BENCH_RUNTIMES:-runc runsc}"
n="${BENCH_SESSIONS:-20}"
mem_n="${BENCH_MEMORY_SESSIONS:-10}"
profile="${BENCH_PROFILE:-debug}"
docker info >/dev/null 2>&1 || { log "no Docker engine answers; run scripts/setup.sh first"; exit 1; }
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin berth --example loadgen
else
  cargo build --quiet --bin berth --example loadgen
fi
bin="target/$profile"

tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d "${TMPDIR:-/tmp}/berth-rtbench.XXXXXX")"
pid=""
lg=""
stop() {
  if [ -n "$lg" ] && kill -0 "$lg" 2>/dev/null; then kill -TERM "$lg" 2>/dev/null || true; wait "$lg" 2>/dev/null || true; fi
  lg=""
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  pid=""
}
cleanup() {
  stop
  for rt in $runtimes; do
    ids="$(docker ps -aq --filter "label=rtbench.$rt.$tag.managed=true"; docker ps -aq --filter "label=rtbench.$rt.$tag.peer")"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

for rt in $runtimes; do
  ns="rtbench.$rt.$tag"
  mkdir -p "$work/$rt"
  cat >"$work/$rt/policy.yaml" <<YAML
apiVersion: berth.dev/v1
kind: Policy
server:
  listen: 127.0.0.1:0
limits:
  max_sessions: 200
  max_anonymous: 200
  max_per_ip: 200
  connections_per_minute: 10000
  connection_burst: 10000
sessions:
  resume_grace: 30s
reconcile:
  concurrency: 10
docker:
  namespace: $ns
  name_prefix: rtb-$rt-$tag
profiles:
  default:
    image: berth-session:latest
    runtime: $rt
YAML
  start_berth "$bin/berth" "$work/$rt" "rtb-$rt-$tag" || exit 1
  pid=$BERTH_PID
  for c in 1 5; do
    timeout 300 "$bin/examples/loadgen" --url "$BERTH_WS_URL" --namespace "$ns" --mode latency \
      --sessions "$n" --concurrency "$c" --timeout 240s | jq -c --arg rt "$rt" '{runtime: $rt, mode, sessions, concurrency, failures, time_to_prompt_ms, echo_rtt_ms}'
  done
  "$bin/examples/loadgen" --url "$BERTH_WS_URL" --namespace "$ns" --mode memory --sessions "$mem_n" \
    --concurrency 5 --fill-bytes 1024 --timeout 120s >"$work/$rt/mem.json" 2>"$work/$rt/mem.err" &
  lg=$!
  for _ in $(seq 1 240); do
    grep -q "detaching them all" "$work/$rt/mem.err" && break
    kill -0 "$lg" 2>/dev/null || { log "loadgen memory ended early"; cat "$work/$rt/mem.err" >&2; exit 1; }
    sleep 0.5
  done
  total=0
  count=0
  for id in $(docker ps -q --no-trunc --filter "label=$ns.managed=true" --filter status=running); do
    f="/sys/fs/cgroup/memory/docker/$id/memory.usage_in_bytes"
    [ -r "$f" ] || f="/sys/fs/cgroup/system.slice/docker-$id.scope/memory.current"
    total=$((total + $(cat "$f")))
    count=$((count + 1))
  done
  [ "$count" -gt 0 ] || { log "no running containers to measure"; exit 1; }
  echo "{\"runtime\":\"$rt\",\"mode\":\"memory\",\"sessions\":$count,\"mean_bytes_per_session\":$((total / count)),\"mean_mib_per_session\":$(awk "BEGIN{printf \"%.1f\", $total/$count/1048576}")}"
  wait "$lg" || true
  lg=""
  stop
done
