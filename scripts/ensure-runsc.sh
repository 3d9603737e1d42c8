#!/usr/bin/env bash
# Installs gVisor's runsc (Debian package `runsc`) and registers it with the Docker engine as the runtime
# `runsc`, for profiles with `runtime: runsc` (docs/policy.md, manifests/examples/gvisor.yaml).
#
# The registration is merged into /etc/docker/daemon.json (BERTH_DOCKER_DAEMON_JSON overrides the path): every
# other setting an operator put there is kept, and an existing `runtimes.runsc` entry is left as it is. The
# engine is then told to reload its configuration with SIGHUP (dockerd reloads `runtimes` without a restart;
# running containers are not touched). An engine that is not running reads the file when it starts.
# Idempotent: a second run changes nothing and sends no signal.
#
# runsc's `--network=none`: sessions run with Docker's network "none" by default, and gVisor's own network
# stack (the default, `--network=sandbox`) needs the veth that Docker did not create then; with `none` gVisor
# sets up only loopback, for any Docker network mode. A profile on runsc therefore has no outside network.
source "$(dirname "$0")/lib.sh"

DAEMON_JSON="${BERTH_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}"

need_packages runsc python3
RUNSC="$(command -v runsc)"

# Merge; prints "changed" when the file was written.
changed="$(
  python3 - "$DAEMON_JSON" "$RUNSC" <<'EOF'
import json, os, sys, tempfile
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        text = f.read()
    conf = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    conf = {}
except json.JSONDecodeError as e:
    sys.exit(f"{path} is not valid JSON ({e}); fix it by hand, berth will not overwrite it")
if not isinstance(conf, dict):
    sys.exit(f"{path} does not hold a JSON object; fix it by hand, berth will not overwrite it")
runtimes = conf.setdefault("runtimes", {})
if not isinstance(runtimes, dict):
    sys.exit(f"{path}: \"runtimes\" is not an object; fix it by hand, berth will not overwrite it")
if "runsc" in runtimes:
    sys.exit(0)  # an operator's (or an earlier run's) registration stays as it is
runtimes["runsc"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
if os.path.exists(path):
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
else:
    os.chmod(tmp, 0o644)
os.replace(tmp, path)
print("changed")
EOF
)"

registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

if [ "$changed" = changed ]; then
  log "registered runsc in $DAEMON_JSON"
fi
if registered; then
  log "runsc ($(runsc --version | head -1)) is registered with the engine"
  exit 0
fi
pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
if ! docker info >/dev/null 2>&1; then
  log "no engine answers; it registers runsc from $DAEMON_JSON when it starts"
  exit 0
fi
if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! grep -q dockerd "/proc/$pid/comm" 2>/dev/null; then
  log "runsc is in $DAEMON_JSON but the engine has not loaded it, and no dockerd pid is in /var/run/docker.pid:"
  log "reload the engine's configuration (SIGHUP to dockerd) by hand"
  exit 1
fi
log "reloading the engine's configuration (SIGHUP to dockerd, pid $pid)"
kill -HUP "$pid"
for _ in $(seq 1 20); do
  registered && { log "runsc is registered with the engine"; exit 0; }
  sleep 0.5
done
log "the engine did not load runsc from $DAEMON_JSON within 10 s; see its log (a dockerd started with"
log "--config-file elsewhere, or a daemon.json it cannot read, ignores this file)"
exit 1
