#!/usr/bin/env bash
# The one command that shows syncdata working on a fresh machine:
#
#   bash scripts/demo.sh                     # about 20,000 changes, 2 consumers
#   bash scripts/demo.sh --changes 100000 --consumers 4
#   bash scripts/demo.sh --keep              # leave PostgreSQL and NATS running,
#                                            # print what to try next
#
# Installs what is missing (nats-server, PostgreSQL 15, wal2json), builds the
# workspace, starts a throwaway PostgreSQL and JetStream nats-server on free
# loopback ports, and runs `syncdata-demo` against them: a source database
# with a wal2json slot (`syncdata-producer setup-source --create-slot`), the
# archiver (`syncdata-producer archive`), a SQL workload of inserts, updates
# and deletes, `syncdata-producer run` with the shipped sanitization rules,
# `syncdata` consumers applying into a local database, and `syncdata verify`
# until source and local copy are equal outside the sanitized columns
# (`--synthetic`: a generated history as change files instead). The producer
# and every consumer serve Prometheus metrics on free loopback ports; the
# demo scrapes them at the end and prints a summary line. Extra arguments
# go to syncdata-demo (see `cargo run -p syncdata-demo -- --help`). The
# binaries are built and found wherever cargo puts them (CARGO_TARGET_DIR or
# build.target-dir honoured).
#
# Exits with the demo's status: 0 only when every table matches. The servers
# are always stopped; on failure the work directory (config, change files,
# logs) is kept for inspection.
set -euo pipefail

cd "$(dirname "$0")/.."

KEEP=0
ARGS=()
for a in "$@"; do
    if [ "$a" = --keep ]; then KEEP=1; else ARGS+=("$a"); fi
done
set -- "${ARGS[@]+"${ARGS[@]}"}"

step() {
    echo "==> $*"
}

step "dependencies"
bash scripts/deps.sh

step "cargo build --workspace --bins"
cargo build --workspace --bins

DIR=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-demo.XXXXXX")
status=1
cleanup() {
    if [ "$KEEP" -eq 1 ] && [ "$status" -eq 0 ]; then
        next_steps
        return
    fi
    bash scripts/servers.sh stop "$DIR" >/dev/null 2>&1 || true
    if [ "$status" -eq 0 ]; then
        rm -rf "$DIR"
    else
        echo "demo work directory kept for inspection: $DIR" >&2
    fi
}
next_steps() {
    local target
    target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    cat <<NEXT

The demo's PostgreSQL and nats-server keep running (--keep). Try:

  export PATH="$target/debug:\$PATH" DATA_SYNC_CONFIG="$DIR/demo/config.toml"
  syncdata status                  # per table: state, backlog, freshness
  syncdata status --check; echo \$?
  syncdata start &                 # a daemon; picks add-tables/remove-tables up by itself
  syncdata-producer status         # the producer's checkpoint and backlog
  psql "$SYNCDATA_TEST_PG_URL" -l  # the demo's databases

Stop everything: bash scripts/servers.sh stop "$DIR" && rm -rf "$DIR"
NEXT
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "starting throwaway PostgreSQL and nats-server in $DIR"
bash scripts/servers.sh start "$DIR"
# shellcheck source=/dev/null
source "$DIR/env"

step "syncdata-demo $*"
set +e
# `cargo run` finds the binary in cargo's target directory, wherever that
# is; everything is already built, so it only runs it.
cargo run --quiet -p syncdata-demo -- \
    --pg-url "$SYNCDATA_TEST_PG_URL" \
    --nats-url "$SYNCDATA_TEST_NATS_URL" \
    --workdir "$DIR/demo" \
    "$@"
status=$?
set -e
exit "$status"
