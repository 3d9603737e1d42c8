#!/usr/bin/env bash
# Installs the web page's npm packages (web/package-lock.json) and copies the xterm.js builds it loads into
# web/vendor/, which is kept in the repo so that `cargo build` never needs npm. Run it after changing
# web/package.json, and commit web/vendor/ with the lockfile. With an unchanged lockfile the copies come out
# identical to the committed ones, so running it (scripts/setup.sh does, for the browser test) leaves the git
# tree clean.
source "$(dirname "$0")/lib.sh"

# playwright-core (the browser test's driver) declares node >= 20.
NODE_MAJOR_MIN=20

if ! command -v npm >/dev/null 2>&1; then
  need_packages nodejs
  # Debian's nodejs does not include npm; NodeSource's does.
  command -v npm >/dev/null 2>&1 || need_packages npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt "$NODE_MAJOR_MIN" ]; then
  log "node $(node --version) is too old: web/ needs node >= $NODE_MAJOR_MIN (Debian 13's nodejs, or NodeSource's)"
  exit 1
fi

web="$BERTH_ROOT/web"
cd "$web"
# `npm ci` starts from an empty node_modules every time; skip it when node_modules was installed from this
# very lockfile (the stamp is written only after a successful install).
stamp="node_modules/.berth-package-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d node_modules/playwright-core ] \
  && [ -d node_modules/@xterm/xterm ] && [ -d node_modules/@xterm/addon-fit ]; then
  log "web/node_modules is up to date with web/package-lock.json"
else
  # playwright-core never downloads a browser: the test uses /usr/bin/chromium.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
fi

mkdir -p vendor
install -m 0644 node_modules/@xterm/xterm/lib/xterm.js vendor/xterm.js
install -m 0644 node_modules/@xterm/xterm/css/xterm.css vendor/xterm.css
install -m 0644 node_modules/@xterm/addon-fit/lib/addon-fit.js vendor/addon-fit.js
install -m 0644 node_modules/@xterm/xterm/LICENSE vendor/xterm.LICENSE
install -m 0644 node_modules/@xterm/addon-fit/LICENSE vendor/addon-fit.LICENSE
log "web/vendor: xterm $(node -p 'require("@xterm/xterm/package.json").version'), addon-fit $(node -p 'require("@xterm/addon-fit/package.json").version')"
