#!/usr/bin/env bash
# Installs what the test suite needs and is missing: nats-server (JetStream),
# PostgreSQL 15 server binaries, the wal2json plugin and psql. Idempotent:
# silent when everything is present; prints what it installs. Runs apt-get
# as root (no sudo); as another user it explains what is missing and fails.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin

die() {
    echo "deps.sh: error: $*" >&2
    exit 1
}

if ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found on PATH. Install Rust (https://rustup.rs) and make sure ~/.cargo/bin is on PATH."
fi
# scripts/test.sh runs fmt and clippy unless SYNCDATA_SKIP_LINT=1.
if [ "${SYNCDATA_SKIP_LINT:-0}" != 1 ]; then
    for tool in fmt clippy; do
        if ! cargo "$tool" --version >/dev/null 2>&1; then
            die "cargo $tool is not installed: rustup component add rustfmt clippy"
        fi
    done
fi

missing=()
if ! command -v nats-server >/dev/null 2>&1; then
    missing+=(nats-server)
fi
if [ ! -x "$PG_BIN/initdb" ]; then
    missing+=(postgresql-15)
fi
# wal2json installs its plugin under the server's pkglibdir.
if ! ls /usr/lib/postgresql/15/lib/wal2json.so >/dev/null 2>&1; then
    missing+=(postgresql-15-wal2json)
fi
if ! command -v psql >/dev/null 2>&1 && [ ! -x "$PG_BIN/psql" ]; then
    missing+=(postgresql-client-15)
fi

# The local stack's offline images (scripts/stack-images.sh): a Debian root
# made with debootstrap; jq reads cargo metadata there and in stack-test.sh.
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v jq >/dev/null 2>&1 || missing+=(jq)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    die "missing packages: ${missing[*]}. Install them as root, e.g.
    sudo apt-get update && sudo apt-get install -y ${missing[*]}
or rerun this script as root."
fi

if ! command -v apt-get >/dev/null 2>&1; then
    die "missing packages: ${missing[*]}, and apt-get is not available to install them."
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
if ! apt-get update -q >"$apt_log" 2>&1 \
    || ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    die "apt-get failed to install: ${missing[*]}"
fi

# Check the result rather than trusting apt-get's exit status alone.
command -v nats-server >/dev/null 2>&1 || die "nats-server still missing after install"
[ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb still missing after install"
ls /usr/lib/postgresql/15/lib/wal2json.so >/dev/null 2>&1 || die "wal2json still missing after install"
echo "deps.sh: installed ${missing[*]}"
