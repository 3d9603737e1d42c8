#!/usr/bin/env bash
# CI's Podman leg: berth against Podman's Docker-compatible API service, rootful and rootless.
#   - installs podman, runc, catatonit (Podman's --init), uidmap, slirp4netns, fuse-overlayfs;
#   - writes a containers.conf for each service: runtime runc (crun fails on this machine's hybrid cgroup layout),
#     default ulimits within the machine's hard limits (Podman's default nofile 1048576 and nproc fail with
#     "setrlimit: operation not permitted");
#   - starts `podman system service --time=0` as root, and as the user berth-podman (created here, with
#     subuid/subgid ranges) with its own XDG_RUNTIME_DIR; each by pid, stopped by pid at the end;
#   - loads the session images into both stores (`docker save | podman load`: no registry is reachable);
#   - runs against each: the session lifecycle and resume (tests/ws.rs), kill -9 adoption (tests/process.rs),
#     the leak run (scripts/leak-check.sh), the browser test (tests/browser.rs) and the warm pool (tests/pool.rs;
#     its list of pooled containers failed on Podman's `stopped` until it joined this leg), with DOCKER_HOST pointing
#     at the service's socket. Prints how long each part took. Bounded: each part has its own timeout.
# Expects scripts/setup.sh to have run (Docker with the session images, the browser tools). Usage:
#   scripts/test-podman.sh [rootful|rootless|both]   (default both)
source "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

which="${1:-both}"
user=berth-podman
work="$(mktemp -d "${TMPDIR:-/tmp}/berth-podman.XXXXXX")"
chmod 755 "$work"
pids=()
failed=()
began=$(date +%s)

cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# timed LABEL SECONDS COMMAND...: runs one part, bounded, and says how long it took.
timed() {
  local label="$1" secs="$2" t0 rc=0
  shift 2
  t0=$(date +%s)
  log "== podman: $label"
  timeout --signal=TERM --kill-after=15 "$secs" "$@" || rc=$?
  log "== podman: $label: $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(($(date +%s) - t0)) s"
  [ "$rc" -eq 0 ] || failed+=("$label")
}

t0=$(date +%s)
need_packages podman runc catatonit uidmap slirp4netns fuse-overlayfs containernetworking-plugins
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
chmod 644 "$work/containers.conf"
docker image inspect berth-session:latest berth-session:v2 >/dev/null 2>&1 || bash scripts/build-images.sh
docker save berth-session:latest berth-session:v2 >"$work/images.tar"
chmod 644 "$work/images.tar"
cargo build --quiet --bin berth --example loadgen --test ws --test process --test browser --test pool
log "== podman: install, images and build in $(($(date +%s) - t0)) s"

# start_service SOCKET [setpriv args...]: starts the API service and waits for it to answer; sets SERVICE_PID.
start_service() {
  local sock="$1"
  shift
  "$@" podman system service --time=0 "unix://$sock" >"$work/service-$(basename "$sock").log" 2>&1 &
  SERVICE_PID=$!
  pids+=("$SERVICE_PID")
  for _ in $(seq 1 60); do
    DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1 && return 0
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.5
  done
  log "podman system service on $sock did not answer"
  cat "$work/service-$(basename "$sock").log" >&2
  return 1
}

# run_suite NAME SOCKET: the parts of the suite that the Podman leg covers, against SOCKET.
run_suite() {
  local name="$1" sock="$2"
  export DOCKER_HOST="unix://$sock"
  timed "$name: lifecycle and resume (tests/ws.rs)" 240 cargo test --quiet --test ws
  timed "$name: kill -9 adoption (tests/process.rs)" 240 cargo test --quiet --test process after_a_kill_9
  timed "$name: leak run (scripts/leak-check.sh)" 330 bash scripts/leak-check.sh
  timed "$name: browser (tests/browser.rs)" 240 cargo test --quiet --test browser
  timed "$name: warm pool (tests/pool.rs)" 240 cargo test --quiet --test pool
  unset DOCKER_HOST
}

if [ "$which" = rootful ] || [ "$which" = both ]; then
  t0=$(date +%s)
  export CONTAINERS_CONF="$work/containers.conf"
  podman load -q -i "$work/images.tar" >/dev/null
  start_service "$work/rootful.sock" env CONTAINERS_CONF="$work/containers.conf"
  unset CONTAINERS_CONF
  log "== podman: rootful service (pid $SERVICE_PID) up in $(($(date +%s) - t0)) s"
  run_suite rootful "$work/rootful.sock"
fi

if [ "$which" = rootless ] || [ "$which" = both ]; then
  t0=$(date +%s)
  id "$user" >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin "$user"
  grep -q "^$user:" /etc/subuid || usermod --add-subuids 200000-265535 "$user"
  grep -q "^$user:" /etc/subgid || usermod --add-subgids 200000-265535 "$user"
  uid="$(id -u "$user")"
  home="$(getent passwd "$user" | cut -d: -f6)"
  run_dir="/run/user/$uid"
  install -d -m 700 -o "$user" -g "$user" "$run_dir"
  as_user=(setpriv --reuid="$user" --regid="$user" --init-groups
    env HOME="$home" XDG_RUNTIME_DIR="$run_dir" CONTAINERS_CONF="$work/containers.conf")
  (cd / && "${as_user[@]}" podman load -q -i "$work/images.tar" >/dev/null)
  start_service "$run_dir/berth-podman.sock" "${as_user[@]}"
  log "== podman: rootless service as $user (pid $SERVICE_PID) up in $(($(date +%s) - t0)) s"
  run_suite rootless "$run_dir/berth-podman.sock"
fi

log "== podman leg: $(($(date +%s) - began)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
