#!/usr/bin/env bash
# The benchmark, in one command: syncdata against PostgreSQL's own logical
# replication, side by side on this machine, in one run.
#
#   bash scripts/bench.sh            # full sizes (about 15-30 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # small sizes, a few minutes
#   bash scripts/bench.sh --only latency --latency-secs 60
#
# Installs what is missing (scripts/deps.sh), builds the release binaries,
# starts two throwaway PostgreSQL 15 clusters (a source with
# wal_level=logical and wal2json, a target) and a JetStream nats-server on
# free loopback ports, runs `syncdata-bench` (extra arguments go to it; see
# `cargo run --release -p syncdata-bench -- --help`), and stops the servers. The table
# is printed and written to bench/results.md (or $SYNCDATA_BENCH_RESULTS).
#
# A benchmark, not a test: it exits non-zero only when a measurement could
# not be taken at all, never because a number is slow.
set -euo pipefail

cd "$(dirname "$0")/.."

step() {
    echo "==> $*"
}

step "dependencies"
SYNCDATA_SKIP_LINT=1 bash scripts/deps.sh

step "cargo build --release --workspace --bins"
cargo build --release --workspace --bins

DIR=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-bench.XXXXXX")
# The clusters live in subdirectories: PostgreSQL (run as user postgres
# when we are root) must be able to reach them.
chmod 755 "$DIR"
status=1
cleanup() {
    bash scripts/servers.sh stop "$DIR/target" >/dev/null 2>&1 || true
    bash scripts/servers.sh stop "$DIR/source" >/dev/null 2>&1 || true
    if [ "$status" -eq 0 ]; then
        rm -rf "$DIR"
    else
        echo "bench work directory kept for inspection (logs in $DIR/work/logs): $DIR" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting throwaway servers in $DIR"
# Source cluster + the nats-server the benchmark uses.
bash scripts/servers.sh start "$DIR/source"
# Target cluster; servers.sh also starts a nats-server there, which the
# benchmark does not use: stop it so it takes no CPU.
bash scripts/servers.sh start "$DIR/target"
# shellcheck source=/dev/null
source "$DIR/target/env"
TARGET_URL=$SYNCDATA_TEST_PG_URL
# Last, so the NATS users and signing key in the environment (which
# syncdata-bench passes on to each binary by role) are the source's.
# shellcheck source=/dev/null
source "$DIR/source/env"
SOURCE_URL=$SYNCDATA_TEST_PG_URL
NATS_URL=$SYNCDATA_TEST_NATS_URL
if [ -f "$DIR/target/nats.pid" ]; then
    kill -TERM "$(cat "$DIR/target/nats.pid")" 2>/dev/null || true
fi

RESULTS=${SYNCDATA_BENCH_RESULTS:-bench/results.md}
step "syncdata-bench $*"
set +e
# `cargo run` finds the binary in cargo's target directory (CARGO_TARGET_DIR
# honoured); everything is already built, so it only runs it.
cargo run --release --quiet -p syncdata-bench -- \
    --source-url "$SOURCE_URL" \
    --target-url "$TARGET_URL" \
    --nats-url "$NATS_URL" \
    --workdir "$DIR/work" \
    --results "$RESULTS" \
    "$@"
status=$?
set -e
exit "$status"
