#!/usr/bin/env bash
# The benchmark, in one command: syncdata against PostgreSQL's own logical
# replication, side by side on this machine, in one run.
#
#   bash scripts/bench.sh            # full sizes (about 15-30 minutes on 2 cores)
#   bash scripts/bench.sh --quick    # small sizes, a few minutes
#   bash scripts/bench.sh --only latency --latency-secs 60
#   bash scripts/bench.sh scaling [ROWS]   # 1, 2, 4 consumers, target at 2 ms (root)
#
# Installs what is missing (scripts/deps.sh), builds the release binaries,
# starts two throwaway PostgreSQL 15 clusters (a source with
# wal_level=logical and wal2json, a target) and a JetStream nats-server on
# free loopback ports, runs `syncdata-bench` (extra arguments go to it; see
# `cargo run --release -p syncdata-bench -- --help`), and stops the servers. The table
# is printed and written to bench/results.md (or $SYNCDATA_BENCH_RESULTS).
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
# The target PostgreSQL runs in a network namespace behind a veth pair with
# `tc netem delay 1ms` on each end (2 ms round trip, as a database on
# another machine); nats-server stays on loopback. ROWS (default 200000)
# INSERTs of one table are published once (until the producer's counter of
# records published and acknowledged, `syncdata_producer_records_total` on
# its metrics port, reaches ROWS: a message is a chunk of many records);
# then the catch-up of that table
# into a fresh database is timed with 1, 2 and 4 `syncdata start` processes
# sharing its durable. Prints the rates and the 4-vs-1 ratio (target >= 3x).
# Needs root (ip netns, tc).
scaling() {
    local rows=${1:-200000}
    [ "$(id -u)" -eq 0 ] || { echo "bench.sh scaling: needs root (ip netns, tc)" >&2; return 1; }
    command -v tc >/dev/null && command -v ip >/dev/null && command -v jq >/dev/null \
        || { echo "bench.sh scaling: needs ip, tc and jq (scripts/deps.sh)" >&2; return 1; }
    step "cargo build --release (syncdata, syncdata-producer)"
    cargo build --release -p syncdata-consumer -p syncdata-producer --bins
    local bin
    bin=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
    local dir ns veth net pgbin=/usr/lib/postgresql/15/bin
    dir=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-scaling.XXXXXX")
    chmod 755 "$dir"
    ns=sdscale$$
    veth=sds$$
    net=10.213.$((RANDOM % 250)).
    local pids=()
    scaling_cleanup() {
        local p
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        ip netns exec "$ns" runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/tpg" -m immediate stop \
            >/dev/null 2>&1 || true
        ip link del "${veth}a" 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        bash scripts/servers.sh stop "$dir/srv" >/dev/null 2>&1 || true
        rm -rf "$dir"
    }
    trap scaling_cleanup EXIT

    step "network namespace $ns: target PostgreSQL at ${net}2, netem 1 ms each way"
    ip netns add "$ns"
    ip link add "${veth}a" type veth peer name "${veth}b"
    ip link set "${veth}b" netns "$ns"
    ip addr add "${net}1/30" dev "${veth}a"
    ip link set "${veth}a" up
    ip netns exec "$ns" ip addr add "${net}2/30" dev "${veth}b"
    ip netns exec "$ns" ip link set "${veth}b" up
    ip netns exec "$ns" ip link set lo up
    tc qdisc add dev "${veth}a" root netem delay 1ms
    ip netns exec "$ns" tc qdisc add dev "${veth}b" root netem delay 1ms

    mkdir -p "$dir/tpg" "$dir/tpgsock"
    chown postgres:postgres "$dir/tpg" "$dir/tpgsock"
    runuser -u postgres -- "$pgbin/initdb" -D "$dir/tpg" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    {
        printf "listen_addresses = '%s2'\nport = 5432\nunix_socket_directories = '%s'\n" "$net" "$dir/tpgsock"
        cat scripts/postgresql-test.conf
    } | runuser -u postgres -- tee -a "$dir/tpg/postgresql.conf" >/dev/null
    echo "host all all ${net}0/30 trust" | runuser -u postgres -- tee -a "$dir/tpg/pg_hba.conf" >/dev/null
    ip netns exec "$ns" runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/tpg" -l "$dir/tpg.log" -w start >/dev/null
    local pg="postgres://postgres@${net}2:5432"
    echo 'select 1;' >"$dir/select1.sql"
    local rtt
    rtt=$("$pgbin/pgbench" -n -t 200 -f "$dir/select1.sql" "$pg/postgres" 2>/dev/null \
        | awk '/latency average/ {print $4}')
    echo "round trip of one query to the target: ${rtt} ms (pgbench, select 1)"

    step "nats-server"
    bash scripts/servers.sh start "$dir/srv" >/dev/null
    # shellcheck source=/dev/null
    source "$dir/srv/env"
    printf '%s' "$SYNCDATA_TEST_NATS_CONSUMER_PASSWORD" >"$dir/nats-consumer.password"
    printf '%s' "$SYNCDATA_TEST_SIGNING_KEY" >"$dir/signing.key"
    chmod 600 "$dir/nats-consumer.password" "$dir/signing.key"

    local stream=SCALING_$$ prefix=scaling$$.changes
    config() { # config FILE DATABASE [PRODUCER SETTING]
        cat >"$1" <<EOF
pg_host = "${net}2"
pg_port = 5432
pg_user = "postgres"
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
    local mport i
    for i in $(seq 1 200); do
        mport=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null || break
    done
    config "$dir/producer.toml" postgres "metrics_addr = \"127.0.0.1:$mport\""
    NATS_USER=$SYNCDATA_TEST_NATS_PRODUCER_USER NATS_PASSWORD=$SYNCDATA_TEST_NATS_PRODUCER_PASSWORD \
        DATA_SYNC_CONFIG="$dir/producer.toml" RUST_LOG=warn "$bin/syncdata-producer" run >"$dir/producer.log" 2>&1 &
    pids+=($!)
    local stored=0
    for i in $(seq 1 1200); do
        stored=$(curl -fsS "http://127.0.0.1:$mport/metrics" 2>/dev/null \
            | awk '$1 == "syncdata_producer_records_total" { n = $2 } END { printf "%d", n }') || stored=0
        [ "${stored:-0}" -ge "$rows" ] && break
        sleep 0.5
    done
    [ "$stored" -ge "$rows" ] || { echo "bench.sh scaling: only $stored of $rows published" >&2; return 1; }
    kill -TERM "${pids[0]}" 2>/dev/null || true
    pids=()

    local k rate1="" results=()
    for k in 1 2 4; do
        local db=scale_$k
        "$pgbin/psql" -q "$pg/postgres" -c "create database $db" >/dev/null
        "$pgbin/psql" -q "$pg/$db" -c "create table big (id bigint primary key, a int, b text, c timestamptz)" >/dev/null
        config "$dir/consumer$k.toml" "$db"
        DATA_SYNC_CONFIG="$dir/consumer$k.toml" RUST_LOG=warn "$bin/syncdata" add-tables big >/dev/null
        local t0 t1 n=0 p
        t0=$(date +%s.%N)
        for p in $(seq 1 "$k"); do
            DATA_SYNC_CONFIG="$dir/consumer$k.toml" RUST_LOG=warn "$bin/syncdata" start \
                >"$dir/consumer$k-$p.log" 2>&1 &
            pids+=($!)
        done
        for i in $(seq 1 6000); do
            n=$("$pgbin/psql" -qtA "$pg/$db" -c "select count(*) from big")
            [ "$n" -ge "$rows" ] && break
            sleep 0.1
        done
        t1=$(date +%s.%N)
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
        pids=()
        [ "$n" -ge "$rows" ] || { echo "bench.sh scaling: $k consumers applied only $n of $rows" >&2; return 1; }
        local rate
        rate=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
        [ -n "$rate1" ] || rate1=$rate
        results+=("$k consumers: $rate records/s ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s)")
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
