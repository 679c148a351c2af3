# Shared by the install scripts: messages prefixed with the script's name, running as root,
# and apt-get install with one update per run. Source it after setting NAME.

say() { printf '%s: %s\n' "${NAME}" "$*"; }
warn() { printf '%s: warning: %s\n' "${NAME}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${NAME}" "$*" >&2
    exit 1
}

# Root runs apt directly; others need sudo.
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
