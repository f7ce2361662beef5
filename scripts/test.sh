#!/usr/bin/env bash
# The one command that runs the whole test suite on a fresh machine:
# dependencies, formatting, lints, build, throwaway servers, tests.
#
#   scripts/test.sh                       # everything
#   scripts/test.sh -p syncdata-testkit --test it -- apply::  # extra arguments go to `cargo test`
#   SYNCDATA_SKIP_LINT=1 scripts/test.sh  # skip fmt and clippy (local runs)
set -euo pipefail

cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1

step() {
    echo "==> $*"
}

step "dependencies"
bash scripts/deps.sh

if [ "${SYNCDATA_SKIP_LINT:-0}" = 1 ]; then
    step "skipping fmt and clippy (SYNCDATA_SKIP_LINT=1)"
else
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --workspace --all-targets -- -D warnings
fi

# Integration tests run the binaries (syncdata, syncdata-producer,
# syncdata-demo) from the target directory; cargo test does not build them.
step "cargo build --bins"
cargo build --workspace --bins

SERVERS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-test.XXXXXX")
cleanup() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        for log in "$SERVERS_DIR"/pg.log "$SERVERS_DIR"/nats.log; do
            [ -s "$log" ] || continue
            echo "--- last lines of $log" >&2
            tail -n 20 "$log" >&2 || true
        done
    fi
    bash scripts/servers.sh stop "$SERVERS_DIR" || true
    rm -rf "$SERVERS_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting PostgreSQL and nats-server in $SERVERS_DIR"
bash scripts/servers.sh start "$SERVERS_DIR"
# shellcheck source=/dev/null
source "$SERVERS_DIR/env"

step "cargo test $*"
cargo test --workspace "$@"
if [ $# -eq 0 ]; then
    # Every fuzz target for a few seconds (docs/fuzzing.md); a longer run is
    # `bash scripts/fuzz.sh [SECONDS]`.
    step "fuzz smoke"
    bash scripts/fuzz.sh --smoke
    # The local stack on the Docker engine: images built once per run
    # (cached between runs), then one end-to-end run of compose/compose.yaml.
    step "stack images (scripts/stack-images.sh)"
    bash scripts/stack-images.sh
    step "stack test (scripts/stack-test.sh)"
    bash scripts/stack-test.sh
fi
step "all tests passed"
