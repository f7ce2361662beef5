#!/usr/bin/env bash
# The benchmark, in one command: syncdata against PostgreSQL's own logical
# replication, side by side on this machine, in one run.
#
#   bash scripts/bench.sh            # full sizes (about 15-30 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # small sizes, a few minutes
#   bash scripts/bench.sh --only latency --latency-secs 60
#   bash scripts/bench.sh scaling [ROWS]   # 1, 2, 4 consumers, target at 2 ms
#
# Installs what is missing (scripts/deps.sh), builds the release binaries,
# starts two throwaway PostgreSQL 15 clusters (a source with
# wal_level=logical and wal2json, a target) and a JetStream nats-server on
# free loopback ports, runs `syncdata-bench` (extra arguments go to it; see
# `cargo run --release -p syncdata-bench -- --help`), and stops the servers. The table
# is printed and written at the top of bench/results.md (or
# $SYNCDATA_BENCH_RESULTS), above the runs the file already holds.
#
# The pgbench section also times the same catch-up into a SQLite file
# (`target = "sqlite://…"`, docs/sqlite.md) and reports it as a ratio to the
# PostgreSQL target's one-consumer catch-up of the same run.
#
# A benchmark, not a test: it exits non-zero only when a measurement could
# not be taken at all, never because a number is slow.
set -euo pipefail

cd "$(dirname "$0")/.."

step() {
    echo "==> $*"
}

# ---------------------------------------------------------------------------
# Scaling section: `bash scripts/bench.sh scaling [ROWS]` (alone).
#
# The target PostgreSQL answers as a database about a 2 ms round trip away:
# the consumers reach it through `syncdata-bench delay-proxy`, a TCP proxy
# that holds every byte in each direction (500 µs asked, which tokio's
# millisecond timer makes about 1 ms; SYNCDATA_SCALING_DELAY_US changes it;
# the round trip it gives is measured and printed). Not `tc netem` in a network namespace: kernels
# without `sch_netem` (as the one this was first run on) refuse that qdisc,
# and the proxy needs no root. nats-server stays on loopback. ROWS (default
# 200000) INSERTs of one table are published once (until the producer's
# counter of records published and acknowledged,
# `syncdata_producer_records_total` on its metrics port, reaches ROWS: a
# message is a chunk of many records); then the catch-up of that table into
# a fresh database is timed with 1, 2 and 4 `syncdata start` processes
# sharing its durable, from launch until `count(*)` reaches ROWS. Prints the
# rates, how many cores the target PostgreSQL and the consumers used during
# each run, and
# the 4-vs-1 ratio (target >= 3x). SYNCDATA_SCALING_CONSUMER adds [consumer]
# settings to the consumers' configuration (e.g. "batch_size = 10").
SCALING_DIR=
SCALING_PROXY=
SCALING_PIDS=()
scaling_cleanup() {
    local p
    for p in "${SCALING_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [ -n "$SCALING_PROXY" ]; then kill -TERM "$SCALING_PROXY" 2>/dev/null || true; fi
    if [ -n "$SCALING_DIR" ]; then
        bash scripts/servers.sh stop "$SCALING_DIR/srv" >/dev/null 2>&1 || true
        rm -rf "$SCALING_DIR"
    fi
}

free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# CPU seconds (user + system, in clock ticks) used so far by process PID
# and its children: those alive (their own time) and those already reaped
# (PID's cumulative children's time). For the PostgreSQL postmaster that is
# every backend's time; read before and after a run, it says how many cores
# the database used, i.e. whether its CPU and not the round trip was the
# limit.
tree_ticks() { # tree_ticks PID
    local pid=$1 total c
    total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Busy clock ticks of the whole machine so far (user, nice, system, irq,
# softirq of /proc/stat's "cpu" line): read before and after a run, it says
# how many of the cores anything used, the delay proxy and nats-server
# included.
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

scaling() {
    local rows=${1:-200000}
    command -v jq >/dev/null && command -v curl >/dev/null \
        || { echo "bench.sh scaling: needs jq and curl (scripts/deps.sh)" >&2; return 1; }
    # The same three packages as the main run builds (the same features,
    # so nothing is compiled twice).
    step "cargo build --release (syncdata-bench, syncdata, syncdata-producer)"
    cargo build --release -p syncdata-bench -p syncdata-consumer -p syncdata-producer --bins
    local bin pgbin=/usr/lib/postgresql/15/bin
    bin=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
    SCALING_DIR=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-scaling.XXXXXX")
    local dir=$SCALING_DIR
    chmod 755 "$dir"
    trap scaling_cleanup EXIT

    step "throwaway PostgreSQL and nats-server"
    bash scripts/servers.sh start "$dir/srv" >/dev/null
    # shellcheck source=/dev/null
    source "$dir/srv/env"
    local pport i
    pport=$(free_port)
    "$bin/syncdata-bench" delay-proxy "127.0.0.1:$pport" "127.0.0.1:$SYNCDATA_TEST_PG_PORT" \
        "${SYNCDATA_SCALING_DELAY_US:-500}" \
        >"$dir/delay-proxy.log" 2>&1 &
    SCALING_PROXY=$!
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$pport") 2>/dev/null && break
        sleep 0.1
    done
    local pg="postgres://$SYNCDATA_TEST_PG_USER@127.0.0.1:$pport"
    echo 'select 1;' >"$dir/select1.sql"
    local rtt
    rtt=$("$pgbin/pgbench" -n -t 200 -f "$dir/select1.sql" "$pg/postgres" 2>/dev/null \
        | awk '/latency average/ {print $4}')
    echo "round trip of one query to the target through the delay proxy: ${rtt} ms (pgbench, select 1)"
    printf '%s' "$SYNCDATA_TEST_NATS_CONSUMER_PASSWORD" >"$dir/nats-consumer.password"
    printf '%s' "$SYNCDATA_TEST_SIGNING_KEY" >"$dir/signing.key"
    chmod 600 "$dir/nats-consumer.password" "$dir/signing.key"

    local stream=SCALING_$$ prefix=scaling$$.changes
    config() { # config FILE DATABASE [PRODUCER SETTING]
        cat >"$1" <<EOF
pg_host = "127.0.0.1"
pg_port = $pport
pg_user = "$SYNCDATA_TEST_PG_USER"
pg_database = "$2"
archive_dir = "$dir/archive"

[nats]
url = "$SYNCDATA_TEST_NATS_URL"
stream = "$stream"
subject_prefix = "$prefix"
dlq_stream = "${stream}_DLQ"
dlq_subject_prefix = "scaling$$.dlq"
user = "consumer"
password_file = "$dir/nats-consumer.password"
signing_key_file = "$dir/signing.key"

[producer]
allow_unsanitized = true
${3:-}
EOF
    }

    step "publishing $rows INSERTs of one table"
    mkdir -p "$dir/archive"
    awk -v n="$rows" 'BEGIN { for (i = 1; i <= n; i++)
        printf "{\"table\":\"big\",\"op\":\"INSERT\",\"data\":{\"id\":%d,\"a\":%d,\"b\":\"row %d of the scaling benchmark\",\"c\":\"2026-01-01 00:00:00+00\"},\"lsn\":\"0/%X\",\"seq\":0}\n", i, i * 7, i, 4096 + i }' \
        >"$dir/archive/.changes-000001.jsonl.tmp"
    mv "$dir/archive/.changes-000001.jsonl.tmp" "$dir/archive/changes-000001.jsonl"
    local mport
    mport=$(free_port)
    config "$dir/producer.toml" postgres "metrics_addr = \"127.0.0.1:$mport\""
    NATS_USER=$SYNCDATA_TEST_NATS_PRODUCER_USER NATS_PASSWORD=$SYNCDATA_TEST_NATS_PRODUCER_PASSWORD \
        DATA_SYNC_CONFIG="$dir/producer.toml" RUST_LOG=warn "$bin/syncdata-producer" run >"$dir/producer.log" 2>&1 &
    SCALING_PIDS+=($!)
    local stored=0
    for i in $(seq 1 1200); do
        stored=$(curl -fsS "http://127.0.0.1:$mport/metrics" 2>/dev/null \
            | awk '$1 == "syncdata_producer_records_total" { n = $2 } END { printf "%d", n }') || stored=0
        [ "${stored:-0}" -ge "$rows" ] && break
        sleep 0.5
    done
    [ "${stored:-0}" -ge "$rows" ] || {
        echo "bench.sh scaling: only $stored of $rows published" >&2
        tail -20 "$dir/producer.log" >&2
        return 1
    }
    kill -TERM "${SCALING_PIDS[0]}" 2>/dev/null || true
    wait "${SCALING_PIDS[0]}" 2>/dev/null || true
    SCALING_PIDS=()

    local k rate="" rate1="" results=()
    for k in 1 2 4; do
        local db=scale_$k
        "$pgbin/psql" -q "$pg/postgres" -c "create database $db" >/dev/null
        "$pgbin/psql" -q "$pg/$db" -c "create table big (id bigint primary key, a int, b text, c timestamptz)" >/dev/null
        config "$dir/consumer$k.toml" "$db"
        if [ -n "${SYNCDATA_SCALING_CONSUMER:-}" ]; then
            printf '\n[consumer]\n%s\n' "$SYNCDATA_SCALING_CONSUMER" >>"$dir/consumer$k.toml"
        fi
        DATA_SYNC_CONFIG="$dir/consumer$k.toml" RUST_LOG=warn "$bin/syncdata" add-tables big >/dev/null
        local t0 t1 n=0 p c0 c1 m0 m1 postmaster hz
        postmaster=$(head -1 "$dir/srv/pg/postmaster.pid")
        hz=$(getconf CLK_TCK)
        c0=$(tree_ticks "$postmaster")
        m0=$(machine_ticks)
        t0=$(date +%s.%N)
        for p in $(seq 1 "$k"); do
            DATA_SYNC_CONFIG="$dir/consumer$k.toml" RUST_LOG=warn "$bin/syncdata" start \
                >"$dir/consumer$k-$p.log" 2>&1 &
            SCALING_PIDS+=($!)
        done
        # Polled from the batch log (a row per batch), not by counting
        # `big` ten times a second: that count scans the growing table and
        # took CPU from the very database being measured (a few hundred
        # milliseconds a second at 800,000 rows). The log may count a
        # redelivered record twice, so the table is counted once it says
        # all are in.
        for i in $(seq 1 6000); do
            n=$("$pgbin/psql" -qtA "$pg/$db" -c "select coalesce(sum(rows_synced), 0) from data_sync_logs where status = 'SUCCESS'") || n=0
            if [ "${n:-0}" -ge "$rows" ]; then
                n=$("$pgbin/psql" -qtA "$pg/$db" -c "select count(*) from big") || n=0
                [ "${n:-0}" -ge "$rows" ] && break
            fi
            sleep 0.1
        done
        t1=$(date +%s.%N)
        c1=$(tree_ticks "$postmaster")
        m1=$(machine_ticks)
        local cc=0
        for p in "${SCALING_PIDS[@]}"; do cc=$((cc + $(tree_ticks "$p"))); done
        for p in "${SCALING_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${SCALING_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
        SCALING_PIDS=()
        [ "${n:-0}" -ge "$rows" ] || {
            echo "bench.sh scaling: $k consumers applied only $n of $rows" >&2
            tail -20 "$dir/consumer$k-1.log" >&2
            return 1
        }
        rate=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
        [ -n "$rate1" ] || rate1=$rate
        results+=("$k consumers: $rate records/s ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, PostgreSQL used $(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.2f", (b - a) / hz / (e - s) }') cores, the consumers $(awk -v c="$cc" -v hz="$hz" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.2f", c / hz / (e - s) }'), the whole machine $(awk -v a="$m0" -v b="$m1" -v hz="$hz" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.2f", (b - a) / hz / (e - s) }'), of $(nproc))")
        echo "${results[-1]}"
    done
    echo
    echo "scaling, one table of $rows rows, target PostgreSQL at ${rtt} ms round trip:"
    printf '  %s\n' "${results[@]}"
    awk -v a="$rate1" -v b="$rate" 'BEGIN { printf "  4 vs 1: %.2fx (target >= 3x)\n", b / a }'
}

if [ "${1:-}" = scaling ]; then
    shift
    scaling "$@"
    exit $?
fi

step "dependencies"
SYNCDATA_SKIP_LINT=1 bash scripts/deps.sh

step "cargo build --release (syncdata-bench, syncdata, syncdata-producer)"
cargo build --release -p syncdata-bench -p syncdata-consumer -p syncdata-producer --bins

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
# The binary built above, in cargo's target directory (CARGO_TARGET_DIR
# honoured). Not `cargo run -p syncdata-bench`: resolving the features of
# that one package alone would build the shared dependencies a second time.
BIN=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
set +e
"$BIN/syncdata-bench" \
    --bin-dir "$BIN" \
    --source-url "$SOURCE_URL" \
    --target-url "$TARGET_URL" \
    --nats-url "$NATS_URL" \
    --workdir "$DIR/work" \
    --results "$RESULTS" \
    "$@"
status=$?
set -e
exit "$status"
