#!/usr/bin/env bash
# Installs the web page's npm packages (web/package-lock.json) and copies the xterm.js builds it loads into
# web/vendor/, which is kept in the repo so that `cargo build` never needs npm. Run it after changing
# web/package.json, and commit web/vendor/ with the lockfile.
source "$(dirname "$0")/lib.sh"

if ! command -v npm >/dev/null 2>&1; then
  need_packages nodejs
  # Debian's nodejs does not include npm; NodeSource's does.
  command -v npm >/dev/null 2>&1 || need_packages npm
fi

web="$BERTH_ROOT/web"
cd "$web"
# playwright-core (the browser test's driver) never downloads a browser: the test uses /usr/bin/chromium.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

mkdir -p vendor
install -m 0644 node_modules/@xterm/xterm/lib/xterm.js vendor/xterm.js
install -m 0644 node_modules/@xterm/xterm/css/xterm.css vendor/xterm.css
install -m 0644 node_modules/@xterm/addon-fit/lib/addon-fit.js vendor/addon-fit.js
install -m 0644 node_modules/@xterm/xterm/LICENSE vendor/xterm.LICENSE
install -m 0644 node_modules/@xterm/addon-fit/LICENSE vendor/addon-fit.LICENSE
log "web/vendor: xterm $(node -p 'require("@xterm/xterm/package.json").version'), addon-fit $(node -p 'require("@xterm/addon-fit/package.json").version')"
