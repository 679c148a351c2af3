#!/usr/bin/env bash
# Installs what the dashboard's browser test needs: Chromium, Node.js and the pinned
# playwright-core in e2e/node_modules. Idempotent: when all is present it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-e2e-deps: %s\n' "$*"; }
die() {
    printf 'install-e2e-deps: error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

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
