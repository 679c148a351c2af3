#!/usr/bin/env bash
# Installs what the dashboard's browser test needs: Chromium, Node.js and the pinned
# playwright-core in e2e/node_modules. Idempotent: when all is present it only checks.
set -euo pipefail

NAME=install-e2e-deps
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

chromium_bin() {
    if [ -n "${CHROMIUM_BIN:-}" ] && [ -x "${CHROMIUM_BIN}" ]; then
        echo "${CHROMIUM_BIN}"
    else
        command -v chromium || command -v chromium-browser || true
    fi
}

[ -n "$(chromium_bin)" ] || apt_install chromium
[ -n "$(chromium_bin)" ] || die "chromium still not found after installing it"
say "chromium: $(chromium_bin)"

command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "${node_major}" -ge 18 ] || die "Node.js 18 or newer is needed, found $(node --version)"
say "node: $(node --version)"

# The lock file pins playwright-core; reinstall when it changed.
wanted="$(node -p 'require("./e2e/package-lock.json").packages["node_modules/playwright-core"].version')"
have="$(node -p 'try { require("./e2e/node_modules/playwright-core/package.json").version } catch { "" }')"
if [ "${have}" != "${wanted}" ]; then
    say "npm ci in e2e/ (playwright-core ${wanted})"
    (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
say "playwright-core: ${wanted}"
say "ok"
