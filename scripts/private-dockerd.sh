#!/usr/bin/env bash
# Runs a second, private Docker engine beside the machine's shared one, so a test can kill and restart an
# engine without disturbing anyone else. Everything it owns lives under DIR:
#   DIR/data  data root      DIR/exec  exec root (its managed containerd lives in DIR/exec/containerd)
#   DIR/docker.sock  API     DIR/docker.pid  pid file     DIR/dockerd.log  log
# No bridge network and no iptables rules: session containers run with network "none".
#
# Usage:
#   private-dockerd.sh start DIR         starts it (or restarts it on the same dirs), waits until it answers
#                                        (at most 60 s), loads the session image from the shared engine,
#                                        and prints its address (unix://DIR/docker.sock) on stdout
#   private-dockerd.sh stop DIR          SIGTERM, SIGKILL after 10 s; then cleans up what a crash left
#                                        (its containerd, container shims, mounts under DIR)
#   private-dockerd.sh stop DIR --kill   SIGKILL now, like a crash: shims and mounts are left for the next start
#
# Processes are only ever signalled by the pid in a pid file, after checking that their command line names
# DIR; never by name. Needs root.
source "$(dirname "$0")/lib.sh"

# Images copied from the shared engine into the private one (it cannot pull: no registry is reachable).
IMAGES="${BERTH_PRIVATE_DOCKERD_IMAGES:-berth-session:latest}"
START_WAIT_SECS=60
TERM_WAIT_SECS=10

usage() {
  echo "usage: $0 start DIR | stop DIR [--kill]" >&2
  exit 64
}

# True when PID exists and is neither a zombie nor dead. (`kill -0` succeeds on a zombie, and dockerd
# refuses to start while its pid file names one.)
alive() {
  local pid="$1" state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  state="$(sed -E 's/^.*\) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# True when PID's command line mentions DIR: it is ours, not a recycled pid.
ours() {
  local pid="$1"
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

# Reads a pid file; prints nothing when it is missing or malformed.
pid_in() {
  local f="$1" pid=""
  [ -f "$f" ] && pid="$(tr -dc '0-9' <"$f")"
  printf '%s' "$pid"
}

# Waits until PID is gone (or a zombie) for at most SECS seconds.
wait_gone() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  ! alive "$pid"
}

# Signals the process in pid file F (only if it is alive and ours), escalating to SIGKILL after
# TERM_WAIT_SECS; removes the pid file once the process is gone. Usage: end_pidfile F SIGNAL WHAT
end_pidfile() {
  local f="$1" sig="$2" what="$3" pid
  pid="$(pid_in "$f")"
  if [ -n "$pid" ] && alive "$pid"; then
    if ! ours "$pid"; then
      log "$what: pid $pid in $f is not this engine's; leaving it alone"
      rm -f "$f"
      return 0
    fi
    log "$what: SIG$sig to pid $pid"
    kill "-$sig" "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$TERM_WAIT_SECS"; then
      log "$what: pid $pid still up after ${TERM_WAIT_SECS}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || { log "$what: pid $pid survived SIGKILL"; return 1; }
    fi
  fi
  rm -f "$f"
}

# After the engine is down: kills the containers a crash left running, and their shims. containerd 1.6 keeps
# no shim pid file; a container's init pid is in init.pid and its parent is the shim. (A shim whose container
# already exited while the engine was down has no such trail, and is left.)
end_shims() {
  local tasks="$DIR/exec/containerd/daemon/io.containerd.runtime.v2.task" d init shim
  [ -d "$tasks" ] || return 0
  for d in "$tasks"/*/*/; do
    [ -d "$d" ] || continue
    init="$(pid_in "$d/init.pid")"
    if [ -z "$init" ] || ! alive "$init"; then continue; fi
    shim="$(sed -E 's/^.*\) //' "/proc/$init/stat" 2>/dev/null | cut -d' ' -f2)"
    if [ -z "$shim" ] || ! alive "$shim" || ! ours "$shim"; then continue; fi
    log "container init $init and its shim $shim: SIGKILL"
    kill -KILL "$init" 2>/dev/null || true
    wait_gone "$init" 5 || true
    kill -KILL "$shim" 2>/dev/null || true
    wait_gone "$shim" 5 || true
  done
}

# Unmounts everything mounted under DIR, deepest first.
unmount_all() {
  local m
  awk -v p="$DIR/" 'index($5, p) == 1 || $5 == substr(p, 1, length(p) - 1) { print $5 }' /proc/self/mountinfo \
    | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- \
    | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done
}

answers() {
  timeout 5 docker -H "$HOST" info >/dev/null 2>&1
}

start() {
  [ "$(id -u)" -eq 0 ] || { log "private-dockerd: needs root"; exit 1; }
  mkdir -p "$DIR/data" "$DIR/exec"
  local pid
  pid="$(pid_in "$DIR/docker.pid")"
  if [ -n "$pid" ] && alive "$pid"; then
    log "private dockerd already runs as pid $pid ($DIR)"
    exit 1
  fi
  # Stale pid files from a crash: dockerd refuses to start over its own, and would reuse a stale containerd's.
  rm -f "$DIR/docker.pid"
  pid="$(pid_in "$DIR/exec/containerd/containerd.pid")"
  if [ -n "$pid" ] && ! alive "$pid"; then
    rm -f "$DIR/exec/containerd/containerd.pid"
  fi
  # Its own (empty) config, so a daemon.json meant for the shared engine (hosts, bridge) does not apply.
  [ -f "$DIR/daemon.json" ] || echo '{}' >"$DIR/daemon.json"

  log "starting private dockerd in $DIR"
  # setsid: its own session, so signals aimed at the caller's process group do not reach it.
  setsid dockerd \
    --config-file "$DIR/daemon.json" \
    --data-root "$DIR/data" \
    --exec-root "$DIR/exec" \
    --pidfile "$DIR/docker.pid" \
    -H "$HOST" \
    --bridge=none \
    --iptables=false \
    --ip6tables=false \
    --ip-masq=false \
    --shutdown-timeout 5 \
    >>"$DIR/dockerd.log" 2>&1 </dev/null &
  local launched=$! i
  for ((i = 0; i < START_WAIT_SECS * 5; i++)); do
    answers && break
    if ! alive "$launched"; then
      log "private dockerd exited during start; last lines of $DIR/dockerd.log:"
      tail -n 20 "$DIR/dockerd.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  if ! answers; then
    log "private dockerd did not answer within ${START_WAIT_SECS}s; last lines of $DIR/dockerd.log:"
    tail -n 20 "$DIR/dockerd.log" >&2
    exit 1
  fi

  local image
  for image in $IMAGES; do
    if docker -H "$HOST" image inspect "$image" >/dev/null 2>&1; then
      continue
    fi
    docker image inspect "$image" >/dev/null 2>&1 \
      || { log "the shared engine has no $image; run scripts/build-images.sh"; exit 1; }
    docker save "$image" | docker -H "$HOST" load >/dev/null
    log "loaded $image"
  done
  log "private dockerd $(cat "$DIR/docker.pid") answers on $HOST"
  echo "$HOST"
}

stop() {
  local sig="$1"
  end_pidfile "$DIR/docker.pid" "$sig" dockerd
  # Its containerd normally goes with it; make sure, by its own pid file.
  end_pidfile "$DIR/exec/containerd/containerd.pid" "$sig" containerd
  if [ "$sig" = TERM ]; then
    end_shims
    unmount_all
  fi
}

[ $# -ge 2 ] || usage
cmd="$1"
[ -d "$2" ] || { log "no such directory: $2"; exit 1; }
DIR="$(cd "$2" && pwd -P)"
HOST="unix://$DIR/docker.sock"
# A unix socket path holds at most 107 bytes; containerd's sockets sit deepest.
[ ${#DIR} -le 60 ] || { log "DIR is too long for unix socket paths (keep it under 60 bytes): $DIR"; exit 1; }

case "$cmd" in
  start)
    [ $# -eq 2 ] || usage
    start
    ;;
  stop)
    case "${3:-}" in
      "") stop TERM ;;
      --kill) stop KILL ;;
      *) usage ;;
    esac
    ;;
  *) usage ;;
esac
