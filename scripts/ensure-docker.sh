#!/usr/bin/env bash
# Makes sure a Docker engine answers on the default socket: installs Debian's docker.io when dockerd is
# missing and starts dockerd when nothing answers. Leaves an engine that is already running alone.
source "$(dirname "$0")/lib.sh"

if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v dockerd >/dev/null 2>&1 || need_packages docker.io
command -v docker >/dev/null 2>&1 || need_packages docker.io
need_packages iptables ca-certificates

if ! docker info >/dev/null 2>&1; then
  logfile="${BERTH_DOCKERD_LOG:-/tmp/berth-dockerd.log}"
  log "starting dockerd (log: $logfile)"
  # Start it in a session of its own (setsid -f forks first, so it is never a group leader of ours): a signal
  # sent to the caller's process group, by `timeout scripts/serve.sh` or a supervisor stopping berth, does not
  # reach the engine. Its pid is in /var/run/docker.pid.
  setsid -f dockerd >"$logfile" 2>&1 </dev/null
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info >/dev/null 2>&1 || { log "dockerd did not come up; see ${BERTH_DOCKERD_LOG:-/tmp/berth-dockerd.log}"; exit 1; }
if [ -n "${logfile:-}" ] && [ -s /var/run/docker.pid ]; then
  # The engine this script started must not share the caller's session (see above).
  [ "$(ps -o sid= -p "$(cat /var/run/docker.pid)" | tr -d ' ')" != "$(ps -o sid= -p $$ | tr -d ' ')" ] ||
    { log "dockerd runs in the caller's session; a signal to this group would stop it"; exit 1; }
fi
log "docker engine $(docker version --format '{{.Server.Version}}') is up"
