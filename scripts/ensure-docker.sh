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
  # Start it detached from this shell so it outlives the script; its pid is in /var/run/docker.pid.
  nohup dockerd >"$logfile" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info >/dev/null 2>&1 || { log "dockerd did not come up; see ${BERTH_DOCKERD_LOG:-/tmp/berth-dockerd.log}"; exit 1; }
log "docker engine $(docker version --format '{{.Server.Version}}') is up"
