#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL 15 and a JetStream nats-server for the
# test suite, both on free loopback ports, everything kept under DIR:
#
#   scripts/servers.sh start DIR   # then: source DIR/env
#   scripts/servers.sh start DIR --cluster   # three-node NATS cluster
#   scripts/servers.sh stop DIR    # safe to repeat
#
# With --cluster (or SYNCDATA_NATS_CLUSTER=1), three nats-server processes
# (n1, n2, n3) with JetStream form one cluster over routes on loopback, each
# with its own store (DIR/nats1 ...), log (DIR/nats1.log ...) and the same
# users; SYNCDATA_TEST_NATS_URL names n1, SYNCDATA_TEST_NATS_URLS all three.
# Streams on it take `nats.replicas = 3` (docs/production.md).
#
# DIR/pg        PostgreSQL data directory (trust auth, 127.0.0.1 only)
# DIR/pgsock    its unix socket directory
# DIR/nats      JetStream store directory
# DIR/*.log     server logs
# DIR/nats-auth.conf  the nats-server account, users and permissions (0600)
# DIR/env       sourceable SYNCDATA_TEST_* variables for the tests (0600:
#               it holds the NATS passwords and the message signing key)
#
# NATS is never open: one account (SYNCDATA, JetStream enabled) with three
# users, random passwords per start: `producer` may publish changes and put
# large records into object store buckets, `consumer` may pull and ack,
# read large records, dead-letter and send stop requests but never
# publish a change or put an object, `admin` (for tests that inspect or hand-craft streams)
# may do anything. No anonymous access. See docs/trust.md.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
# Server settings shared with the test harness's private servers.
PG_SETTINGS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/postgresql-test.conf

die() {
    echo "servers.sh: error: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 start DIR [--cluster] | stop DIR" >&2
    exit 2
}

CLUSTER=${SYNCDATA_NATS_CLUSTER:-0}
if [ $# -eq 3 ] && [ "$3" = --cluster ]; then
    CLUSTER=1
    set -- "$1" "$2"
fi
[ $# -eq 2 ] || usage
cmd=$1
if [ "$cmd" = stop ] && [ ! -d "$2" ]; then
    exit 0
fi
mkdir -p "$2"
DIR=$(cd "$2" && pwd)

is_root() { [ "$(id -u)" -eq 0 ]; }

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port below Linux's ephemeral range (32768+), so outgoing connections
# never happen to hold it, and not listening right now.
pick_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if [ "$p" != "${1:-}" ] && ! port_in_use "$p"; then
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# GET on the nats monitoring port, with curl if present, else bash's /dev/tcp.
http_get() {
    local port=$1 path=$2
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "http://127.0.0.1:$port$path"
    else
        (
            exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
            printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
            timeout 2 cat <&3
        ) 2>/dev/null | tr -d '\r' | {
            read -r _ code _ || exit 1
            [ "$code" = 200 ] || exit 1
            cat
        }
    fi
}

pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null
}

pg_running() {
    [ -f "$DIR/pg/postmaster.pid" ] && pid_alive "$(head -1 "$DIR/pg/postmaster.pid")"
}

nats_running() {
    local f
    for f in "$DIR"/nats.pid "$DIR"/nats[123].pid; do
        [ -f "$f" ] && pid_alive "$(cat "$f")" && return 0
    done
    return 1
}

start_pg() {
    local port attempt
    rm -rf "$DIR/pg" "$DIR/pgsock"
    mkdir -p "$DIR/pg" "$DIR/pgsock"
    : >"$DIR/pg.log"
    if is_root; then
        # postgres must be able to reach DIR (mktemp -d makes it 0700).
        chmod a+rx "$DIR"
        chown postgres:postgres "$DIR/pg" "$DIR/pgsock" "$DIR/pg.log"
        runuser -u postgres -- test -w "$DIR/pg" \
            || die "user postgres cannot write $DIR/pg: a parent directory is not accessible to it; use a directory under /tmp"
    fi
    chmod 700 "$DIR/pg"

    if ! as_pg "$PG_BIN/initdb" -D "$DIR/pg" -U postgres --auth=trust -E UTF8 --locale=C \
        >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed (log: $DIR/initdb.log)"
    fi
    # initdb --auth=trust already trusts local sockets and 127.0.0.1 / ::1.
    echo "include 'syncdata.conf'" | as_pg tee -a "$DIR/pg/postgresql.conf" >/dev/null

    for attempt in 1 2 3 4 5; do
        port=$(pick_port)
        {
            printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
                "$port" "$DIR/pgsock"
            cat "$PG_SETTINGS"
        } | as_pg tee "$DIR/pg/syncdata.conf" >/dev/null
        if as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w -t 60 start >/dev/null 2>&1; then
            PG_PORT=$port
            break
        fi
        if pg_running; then
            as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        if ! grep -qi "could not bind\|address already in use" "$DIR/pg.log"; then
            cat "$DIR/pg.log" >&2
            die "PostgreSQL failed to start (log: $DIR/pg.log)"
        fi
        echo "servers.sh: port $port was taken, retrying PostgreSQL (attempt $attempt)" >&2
    done
    [ -n "${PG_PORT:-}" ] || die "PostgreSQL could not bind a free port (log: $DIR/pg.log)"

    local i
    for i in $(seq 1 300); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres; then
            return 0
        fi
        sleep 0.1
    done
    cat "$DIR/pg.log" >&2
    die "PostgreSQL on port $PG_PORT is not ready after 30 s (log: $DIR/pg.log)"
}

random_hex() {
    head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# The account and users; subjects with a leading `*.` cover the default
# `syncdata.changes` / `syncdata.dlq` prefixes and the tests' own
# (`t_<name>.changes`). Stream names are wildcards because every test makes
# its own streams; docs/trust.md has the production version, which names
# them.
write_nats_auth() {
    (
        umask 077
        cat >"$DIR/nats-auth.conf" <<EOF
accounts {
  SYNCDATA {
    jetstream: enabled
    users = [
      { user: admin, password: "$NATS_ADMIN_PASSWORD" }
      {
        user: producer, password: "$NATS_PRODUCER_PASSWORD"
        permissions: {
          publish: {
            allow: [
              "*.changes.>",
              "\$JS.API.INFO",
              "\$JS.API.STREAM.INFO.*",
              "\$JS.API.STREAM.CREATE.*",
              "\$JS.API.STREAM.NAMES",
              "\$O.*.>",
              "\$KV.*.>",
              "\$JS.API.DIRECT.GET.*.>",
            ]
          }
          subscribe: { allow: ["_INBOX.>"] }
        }
      }
      {
        user: consumer, password: "$NATS_CONSUMER_PASSWORD"
        permissions: {
          publish: {
            allow: [
              "\$JS.API.INFO",
              "\$JS.API.STREAM.INFO.*",
              "\$JS.API.STREAM.CREATE.*",
              "\$JS.API.STREAM.NAMES",
              "\$JS.API.STREAM.MSG.GET.*",
              "\$JS.API.STREAM.MSG.DELETE.*",
              "\$JS.API.CONSUMER.CREATE.>",
              "\$JS.API.CONSUMER.DURABLE.CREATE.*.*",
              "\$JS.API.CONSUMER.INFO.*.*",
              "\$JS.API.CONSUMER.DELETE.*.*",
              "\$JS.API.CONSUMER.NAMES.*",
              "\$JS.API.CONSUMER.MSG.NEXT.*.*",
              "\$JS.ACK.>",
              "\$JS.API.DIRECT.GET.*.>",
              "\$JS.FC.>",
              "*.dlq.>",
              "_SYNCDATA.control.>",
            ]
            deny: ["*.changes.>", "\$O.>", "\$KV.>"]
          }
          subscribe: { allow: ["_INBOX.>", "_SYNCDATA.control.>"] }
        }
      }
    ]
  }
}
EOF
    )
}

start_nats() {
    local port mport attempt pid i
    command -v nats-server >/dev/null 2>&1 || die "nats-server not found; run scripts/deps.sh"
    rm -rf "$DIR/nats"
    mkdir -p "$DIR/nats"
    NATS_ADMIN_PASSWORD=$(random_hex 16)
    NATS_PRODUCER_PASSWORD=$(random_hex 16)
    NATS_CONSUMER_PASSWORD=$(random_hex 16)
    SIGNING_KEY=$(random_hex 32)
    write_nats_auth
    # Records up to 8 MB must fit in one message (the server default is 1 MB).
    printf 'max_payload: 8388608\ninclude nats-auth.conf\n' >"$DIR/nats.conf"
    : >"$DIR/nats.log"

    for attempt in 1 2 3 4 5; do
        port=$(pick_port)
        mport=$(pick_port "$port")
        # All stdio to files: a caller capturing our output must not wait on
        # the server holding the pipe open.
        nats-server -c "$DIR/nats.conf" -js -a 127.0.0.1 -p "$port" -m "$mport" \
            -sd "$DIR/nats" -P "$DIR/nats.pid" -l "$DIR/nats.log" \
            </dev/null >>"$DIR/nats.out" 2>&1 &
        pid=$!
        echo "$pid" >"$DIR/nats.pid"
        for i in $(seq 1 300); do
            if ! pid_alive "$pid"; then
                break
            fi
            if http_get "$mport" "/healthz?js-enabled-only=true" >/dev/null 2>&1 \
                && port_in_use "$port"; then
                NATS_PORT=$port
                NATS_MPORT=$mport
                return 0
            fi
            sleep 0.1
        done
        if pid_alive "$pid"; then
            kill -9 "$pid" 2>/dev/null || true
            cat "$DIR/nats.log" >&2
            die "nats-server is not ready after 30 s (log: $DIR/nats.log)"
        fi
        wait "$pid" 2>/dev/null || true
        rm -f "$DIR/nats.pid"
        if ! grep -qi "address already in use" "$DIR/nats.log" "$DIR/nats.out"; then
            cat "$DIR/nats.log" "$DIR/nats.out" >&2
            die "nats-server failed to start (log: $DIR/nats.log)"
        fi
        echo "servers.sh: port $port or $mport was taken, retrying nats-server (attempt $attempt)" >&2
    done
    die "nats-server could not bind a free port (log: $DIR/nats.log)"
}

# Three nodes n1..n3 with JetStream and routes to each other on loopback.
start_nats_cluster() {
    local i t ok pid routes="" taken=""
    local -a ports mports cports
    command -v nats-server >/dev/null 2>&1 || die "nats-server not found; run scripts/deps.sh"
    NATS_ADMIN_PASSWORD=$(random_hex 16)
    NATS_PRODUCER_PASSWORD=$(random_hex 16)
    NATS_CONSUMER_PASSWORD=$(random_hex 16)
    SIGNING_KEY=$(random_hex 32)
    write_nats_auth
    for i in 1 2 3; do
        ports[i]=$(pick_port "$taken")
        taken=${ports[i]}
        mports[i]=$(pick_port "$taken")
        taken=${mports[i]}
        cports[i]=$(pick_port "$taken")
        taken=${cports[i]}
        routes="$routes${routes:+, }nats-route://127.0.0.1:${cports[i]}"
    done
    for i in 1 2 3; do
        rm -rf "$DIR/nats$i"
        mkdir -p "$DIR/nats$i"
        {
            printf 'server_name: n%s\nlisten: 127.0.0.1:%s\nhttp: 127.0.0.1:%s\n' "$i" "${ports[i]}" "${mports[i]}"
            printf 'max_payload: 8388608\njetstream { store_dir: "%s" }\n' "$DIR/nats$i"
            printf 'cluster {\n  name: syncdata\n  listen: 127.0.0.1:%s\n  routes: [%s]\n}\n' "${cports[i]}" "$routes"
            printf 'include nats-auth.conf\n'
        } >"$DIR/nats-n$i.conf"
        : >"$DIR/nats$i.log"
        nats-server -c "$DIR/nats-n$i.conf" -P "$DIR/nats$i.pid" -l "$DIR/nats$i.log" \
            </dev/null >>"$DIR/nats$i.out" 2>&1 &
        echo "$!" >"$DIR/nats$i.pid"
    done
    for i in 1 2 3; do
        pid=$(cat "$DIR/nats$i.pid")
        ok=0
        for t in $(seq 1 600); do
            pid_alive "$pid" || break
            # healthz answers 200 once JetStream has a meta leader.
            if http_get "${mports[i]}" "/healthz" >/dev/null 2>&1 && port_in_use "${ports[i]}"; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ "$ok" = 0 ]; then
            cat "$DIR/nats$i.log" "$DIR/nats$i.out" >&2
            die "cluster node n$i is not ready after 60 s (log: $DIR/nats$i.log); a port may have been taken: run stop, then start again"
        fi
    done
    NATS_PORT=${ports[1]}
    NATS_MPORT=${mports[1]}
    NATS_URLS="nats://127.0.0.1:${ports[1]},nats://127.0.0.1:${ports[2]},nats://127.0.0.1:${ports[3]}"
}

stop_pg() {
    if pg_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w -t 60 stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m immediate -w stop >/dev/null 2>&1 \
            || true
        echo "servers.sh: stopped PostgreSQL ($DIR/pg)"
    fi
}

stop_nats() {
    local pid i f
    for f in "$DIR"/nats.pid "$DIR"/nats[123].pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if pid_alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for i in $(seq 1 100); do
                pid_alive "$pid" || break
                sleep 0.1
            done
            if pid_alive "$pid"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "servers.sh: stopped nats-server (pid $pid)"
        fi
        rm -f "$f"
    done
}

case "$cmd" in
start)
    if pg_running || nats_running; then
        die "servers already running in $DIR; run: $0 stop $DIR"
    fi
    [ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb not found; run scripts/deps.sh"
    rm -f "$DIR/env"
    start_pg
    NATS_URLS=""
    if [ "$CLUSTER" = 1 ]; then
        start_nats_cluster
    else
        start_nats
    fi
    : >"$DIR/env"
    chmod 600 "$DIR/env"
    cat >"$DIR/env" <<EOF
export SYNCDATA_TEST_PG_HOST=127.0.0.1
export SYNCDATA_TEST_PG_PORT=$PG_PORT
export SYNCDATA_TEST_PG_USER=postgres
export SYNCDATA_TEST_PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export SYNCDATA_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT
export SYNCDATA_TEST_NATS_URLS=${NATS_URLS:-nats://127.0.0.1:$NATS_PORT}
export SYNCDATA_TEST_NATS_MONITOR=http://127.0.0.1:$NATS_MPORT
export SYNCDATA_TEST_NATS_AUTH_CONF=$DIR/nats-auth.conf
export SYNCDATA_TEST_NATS_ADMIN_USER=admin
export SYNCDATA_TEST_NATS_ADMIN_PASSWORD=$NATS_ADMIN_PASSWORD
export SYNCDATA_TEST_NATS_PRODUCER_USER=producer
export SYNCDATA_TEST_NATS_PRODUCER_PASSWORD=$NATS_PRODUCER_PASSWORD
export SYNCDATA_TEST_NATS_CONSUMER_USER=consumer
export SYNCDATA_TEST_NATS_CONSUMER_PASSWORD=$NATS_CONSUMER_PASSWORD
export SYNCDATA_TEST_SIGNING_KEY=$SIGNING_KEY
EOF
    cat <<EOF
servers.sh: PostgreSQL 15 on 127.0.0.1:$PG_PORT (data $DIR/pg, socket $DIR/pgsock, log $DIR/pg.log)
servers.sh: nats-server on 127.0.0.1:$NATS_PORT, monitoring :$NATS_MPORT (store $DIR/nats, log $DIR/nats.log; users admin, producer, consumer; no anonymous access)
servers.sh: environment in $DIR/env  (source it; stop with: $0 stop $DIR)
EOF
    if [ -n "$NATS_URLS" ]; then
        echo "servers.sh: NATS cluster of three nodes: $NATS_URLS (stores $DIR/nats1..3, logs $DIR/nats1..3.log; use nats.replicas = 3)"
    fi
    ;;
stop)
    stop_nats
    stop_pg
    ;;
*)
    usage
    ;;
esac
