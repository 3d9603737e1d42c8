#!/usr/bin/env bash
# CI's short leak run: a real berth binary and the load generator's `leak` mode, 60 sessions closed in a mix
# (a third `release`, a third TCP reset, a third shell `exit`). The load generator polls berth's session count and
# the run's labelled containers until both are 0, and exits 1 on any leftover: so does this script.
# Loopback only; bounded (the load generator's --timeout, and this script's own waits). berth is stopped by pid.
#
# BERTH_LEAK_RUNTIME=runsc runs the sessions on that OCI runtime (the profile's `runtime`; it must be registered
# with the engine: scripts/ensure-runsc.sh for runsc).
# BERTH_LEAK_POOL=N keeps a warm pool of N (decision 0025): sessions claim pooled containers first, the pool
# refills during the run, and the pool is removed at shutdown; pooled and claimed containers count as leftovers.
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

docker_bounded info >/dev/null 2>&1 || { log "no Docker engine answers; run scripts/setup.sh first"; exit 1; }
cargo build --quiet --bin berth --example loadgen

tag="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
work="$(mktemp -d "${TMPDIR:-/tmp}/berth-leak.XXXXXX")"
ns="ci.leak.$tag"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  ids="$(docker_bounded ps -aq --filter "label=$ns.managed=true" 2>/dev/null || true)
$(docker_bounded ps -aq --filter "label=$ns.peer" 2>/dev/null || true)
$(docker_bounded ps -aq --filter "label=$ns.pool" 2>/dev/null || true)"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker_bounded rm -f $ids >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A pool is removed at shutdown, so that nothing of the run is left; sessions are all closed by then either way.
shutdown_mode=leave
[ -z "${BERTH_LEAK_POOL:-}" ] || shutdown_mode=remove
cat >"$work/policy.yaml" <<YAML
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
  resume_grace: 5s
reconcile:
  concurrency: 6
  resync_interval: 2s
  shutdown: $shutdown_mode
docker:
  namespace: $ns
  name_prefix: leak-$tag
YAML
if [ -n "${BERTH_LEAK_RUNTIME:-}${BERTH_LEAK_POOL:-}" ]; then
  [ -z "${BERTH_LEAK_RUNTIME:-}" ] || log "leak run on the runtime ${BERTH_LEAK_RUNTIME}"
  [ -z "${BERTH_LEAK_POOL:-}" ] || log "leak run with a warm pool of ${BERTH_LEAK_POOL}"
  {
    echo "profiles:"
    echo "  default:"
    echo "    image: berth-session:latest"
    [ -z "${BERTH_LEAK_RUNTIME:-}" ] || echo "    runtime: ${BERTH_LEAK_RUNTIME}"
    [ -z "${BERTH_LEAK_POOL:-}" ] || printf '    command: [/bin/sh, -i]\n    pool: {size: %s}\n' "$BERTH_LEAK_POOL"
  } >>"$work/policy.yaml"
fi

start_berth target/debug/berth "$work" "leak-$tag" || exit 1
pid=$BERTH_PID
url=$BERTH_WS_URL

rc=0
timeout --signal=TERM --kill-after=10 300 target/debug/examples/loadgen --url "$url" --namespace "$ns" \
  --mode leak --sessions 60 --concurrency 10 --timeout 240s || rc=$?
# A graceful stop removes berth's sentinel too: afterwards nothing of this namespace may be left.
kill -TERM "$pid"
for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
left="$( (docker_bounded ps -aq --filter "label=$ns.managed=true"; docker_bounded ps -aq --filter "label=$ns.peer"; docker_bounded ps -aq --filter "label=$ns.pool") | wc -l)"
log "leak run${BERTH_LEAK_RUNTIME:+ on ${BERTH_LEAK_RUNTIME}}${BERTH_LEAK_POOL:+ with a pool of ${BERTH_LEAK_POOL}}: loadgen exit $rc, $left container(s) left (sessions, sentinel, claims, pool) after berth stopped"
if [ "$rc" -ne 0 ] || [ "$left" -ne 0 ]; then
  keep="${TMPDIR:-/tmp}/berth-leak-$tag.log"
  cp "$work/berth.log" "$keep" 2>/dev/null && log "berth's log kept at $keep"
fi
if [ "$left" -ne 0 ]; then
  # What was left, and what berth said about sentinels, claims and removals: enough to tell the cause from CI's log.
  (docker_bounded ps -a --filter "label=$ns.managed=true" --format '{{.ID}} {{.Names}} {{.Status}} {{.Labels}}'
    docker_bounded ps -a --filter "label=$ns.peer" --format '{{.ID}} {{.Names}} {{.Status}} {{.Labels}}'
    docker_bounded ps -a --filter "label=$ns.pool" --format '{{.ID}} {{.Names}} {{.Status}} {{.Labels}}') >&2
  grep -iE 'sentinel|claim|remov|warn|error' "$work/berth.log" | tail -20 >&2
fi
if [ "$rc" -ne 0 ] || [ "$left" -ne 0 ]; then
  engine_report
fi
[ "$rc" -eq 0 ] && [ "$left" -eq 0 ]
