#!/usr/bin/env bash
# End-to-end test of the local stack (compose/compose.yaml) on a real Docker
# engine, with the images scripts/stack-images.sh built (run it first;
# scripts/test.sh does). Fails, never skips, when no engine is reachable.
#
#   bash scripts/stack-images.sh && bash scripts/stack-test.sh
#
# It runs the commands docs/compose.md gives users, with the offline
# override (compose/compose.offline.yaml) and its own project name:
#
#  1. `config` of compose.yaml alone is clean; the two .dockerignore files
#     list the same patterns;
#  2. `up -d --build`: every service healthy (one-shots exited 0, Grafana
#     left out), 2 consumers; the seed's changes reach the local tables;
#  3. `up -d --scale consumer=4`; then one consumer container and the NATS
#     container are killed while the seed writes, and brought back;
#  4. Prometheus (its HTTP API, on the published port) scrapes all 4 consumer
#     replicas, found through DNS, and the producer;
#  5. the seed stops; `syncdata verify` (exec'd in a consumer) says the local
#     tables equal the source;
#  6. `syncdata resync orders` through exec, then verify again; a dead letter
#     (a CHECK constraint only the local table has) listed with `dlq list`,
#     replayed with `dlq replay` once the constraint is gone, then verify;
#  7. the named volumes belong to the non-root users of their images;
#  8. `down -v` leaves no container, network or volume of the project.
#
# Prints the time of each step (the first `up` until all healthy included).
#
# On a machine that can pull the official images, the same test runs them
# unchanged, Grafana included (its health and its provisioned dashboard):
#
#   SYNCDATA_STACK_IMAGES=official bash scripts/stack-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/compose-lib.sh
source scripts/compose-lib.sh

PROJECT=${SYNCDATA_STACK_PROJECT:-syncdata-stacktest}
SOURCE_URL=postgres://postgres:postgres@source-db:5432/app
# Columns compose/config/rules.toml changes on the way (masked or nulled):
# verify compares everything else.
SANITIZED=customers.email,customers.name,customers.bio,orders.note
IMAGES=${SYNCDATA_STACK_IMAGES:-offline}

require_docker
find_compose
case "$IMAGES" in
offline) DC=("${COMPOSE[@]}" -p "$PROJECT" -f compose/compose.yaml -f compose/compose.offline.yaml) ;;
official) DC=("${COMPOSE[@]}" -p "$PROJECT" -f compose/compose.yaml) ;;
*) die "SYNCDATA_STACK_IMAGES must be offline or official, not $IMAGES" ;;
esac
dc() {
    "${DC[@]}" "$@"
}

started=$(date +%s)
step_started=$started
step() {
    local now
    now=$(date +%s)
    echo "==> [$((now - started)) s, previous step $((now - step_started)) s] $*"
    step_started=$now
}

# Poll `cmd` once a second until it succeeds; fail after `timeout` seconds.
wait_for() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$(($(date +%s) + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "--- last attempt of: $*" >&2
            "$@" >&2 || true
            die "timed out after ${timeout} s waiting for $what"
        fi
        sleep 1
    done
}

# Container ids of a service of this project (-a: stopped ones too).
cids() {
    local all=
    if [ "${1:-}" = -a ]; then
        all=-a
        shift
    fi
    docker ps $all -q --no-trunc --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1"
}

# Exactly `count` containers of the service, all running and healthy.
healthy() {
    local service=$1 count=$2 ids n=0 id
    ids=$(cids "$service")
    for id in $ids; do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || return 1
        n=$((n + 1))
    done
    [ "$n" = "$count" ]
}

# A one-shot service ran and exited 0.
completed() {
    local id
    id=$(cids -a "$1")
    [ -n "$id" ] || return 1
    [ "$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$id")" = "exited 0" ]
}

stack_healthy() {
    local consumers=$1
    completed setup-source && completed consumer-init &&
        healthy source-db 1 && healthy local-db 1 && healthy nats 1 &&
        healthy archiver 1 && healthy producer 1 && healthy prometheus 1 &&
        healthy consumer "$consumers" &&
        [ -n "$(cids seed)" ] &&
        { [ "$IMAGES" = offline ] || healthy grafana 1; }
}

psql_in() {
    dc exec -T "$1" psql -U postgres -d app -v ON_ERROR_STOP=1 -qtAX -c "$2"
}

counts() {
    psql_in "$1" "select (select count(*) from customers) || ' ' || (select count(*) from orders) || ' ' || (select count(*) from order_lines)"
}

# Every table has rows locally.
local_has_rows() {
    local c o l
    read -r c o l <<<"$(counts local-db)"
    [ "$c" -gt 0 ] && [ "$o" -gt 0 ] && [ "$l" -gt 0 ]
}

# Every seed transaction sets a customer's updated_at to now(): the newest
# one in `$1` (source-db or local-db) is later than `$2`.
changed_since() {
    [ "$(psql_in "$1" "select coalesce(max(updated_at) > '$2', false) from customers")" = t ]
}

source_now() {
    psql_in source-db "select now()"
}

verify_equal() {
    dc exec -T consumer syncdata verify --source "$SOURCE_URL" --exclude-columns "$SANITIZED"
}

prometheus_query() {
    curl -fsS --max-time 5 "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query" \
        --data-urlencode "query=$1"
}

# The consumer instances Prometheus scrapes with up == 1 are exactly the
# running consumer containers' addresses, and there are `$1` of them.
prometheus_scrapes_consumers() {
    local want=$1 got expected id
    got=$(prometheus_query 'up{job="syncdata-consumer"} == 1' |
        jq -r '.data.result[].metric.instance' | sort)
    expected=$(for id in $(cids consumer); do
        docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}:9187' "$id"
    done | sort)
    [ "$(wc -l <<<"$expected")" = "$want" ] && [ "$got" = "$expected" ]
}

prometheus_scrapes_producer() {
    [ "$(prometheus_query 'up{job="syncdata-producer"}' | jq -r '.data.result[0].value[1]')" = 1 ]
}

dead_letters_are() {
    [ "$(dc exec -T consumer syncdata dlq list --table orders --json | jq length)" = "$1" ]
}

probe_applied() {
    [ "$(psql_in local-db "select status from orders where id = 900001")" = dlq-probe ]
}

project_leftovers() {
    docker ps -a -q --filter "label=com.docker.compose.project=$PROJECT"
    docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
    docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"
    docker volume ls -q | grep "^${PROJECT}_" || true
    docker network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true
}

finished=0
on_exit() {
    local rc=$?
    if [ "$finished" != 1 ]; then
        echo "--- stack test failed (exit $rc); state and logs:" >&2
        dc ps >&2 || true
        dc logs --no-color --tail=30 >&2 || true
        dc down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

# --- 1. the files ------------------------------------------------------------
step "compose ${COMPOSE[*]}: config of compose/compose.yaml"
config_err=$("${COMPOSE[@]}" -f compose/compose.yaml config -q 2>&1) ||
    die "compose.yaml does not pass config: $config_err"
[ -z "$config_err" ] || die "config of compose.yaml is not clean: $config_err"
"${DC[@]}" config -q
patterns() { grep -v -e '^#' -e '^$' "$1"; }
diff <(patterns .dockerignore) <(patterns compose/Dockerfile.dockerignore) ||
    die ".dockerignore and compose/Dockerfile.dockerignore list different patterns"
if [ "$IMAGES" = offline ]; then
    for image in syncdata-offline/rust:bookworm syncdata-offline/debian:bookworm-slim \
        syncdata-offline/postgres:15-bookworm syncdata-offline/nats:bookworm \
        syncdata-offline/prometheus:bookworm; do
        docker image inspect "$image" >/dev/null 2>&1 ||
            die "image $image is missing: run scripts/stack-images.sh first"
    done
fi

trap on_exit EXIT
# A stack left over by an interrupted run.
dc down -v --remove-orphans >/dev/null 2>&1 || true
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PROMETHEUS_PORT=$(free_port)
GRAFANA_PORT=$(free_port)
export PROMETHEUS_PORT GRAFANA_PORT

# --- 2. first up ----------------------------------------------------------------
step "up -d --build"
up_started=$(date +%s)
dc up -d --build
wait_for "every service healthy, 2 consumers" 300 stack_healthy 2
up_secs=$(($(date +%s) - up_started))
step "first up: all healthy after $up_secs s"
if [ "$IMAGES" = offline ]; then
    [ -z "$(cids -a grafana)" ] || die "grafana started: the offline override must leave it out"
else
    curl -fsS --max-time 5 "http://127.0.0.1:$GRAFANA_PORT/api/search?query=syncdata" |
        jq -e 'map(.title) | index("syncdata") != null' >/dev/null ||
        die "Grafana does not serve the provisioned syncdata dashboard"
fi
wait_for "the seed's changes in the local tables" 120 local_has_rows
echo "local rows (customers orders order_lines): $(counts local-db)"

# --- 3. scale, kill, bring back ---------------------------------------------------
step "up -d --scale consumer=4"
dc up -d --scale consumer=4
wait_for "4 healthy consumers" 180 stack_healthy 4

step "kill one consumer and nats mid-stream"
victim=$(cids consumer | head -n 1)
docker kill "$victim" >/dev/null
dc kill nats
killed_at=$(source_now)
wait_for "the seed writing while nats is down" 30 changed_since source-db "$killed_at"
step "bring them back: up -d --scale consumer=4"
dc up -d --scale consumer=4
wait_for "the stack healthy again, 4 consumers" 180 stack_healthy 4
wait_for "changes made while nats was down applied locally" 180 changed_since local-db "$killed_at"

# --- 4. Prometheus ------------------------------------------------------------------
step "Prometheus scrapes every consumer replica (DNS) and the producer"
wait_for "Prometheus scraping the 4 consumers" 120 prometheus_scrapes_consumers 4
wait_for "Prometheus scraping the producer" 60 prometheus_scrapes_producer
prometheus_query 'up{job="syncdata-consumer"}' | jq -c '[.data.result[] | {instance: .metric.instance, up: .value[1]}]'

# --- 5. the copy is right -------------------------------------------------------------
step "stop the seed; verify from inside the stack"
dc stop seed
wait_for "syncdata verify: local tables equal the source" 300 verify_equal
verify_equal
echo "source rows: $(counts source-db); local rows: $(counts local-db)"
[ "$(counts source-db)" = "$(counts local-db)" ] || die "row counts differ"
read -r c o l <<<"$(counts source-db)"
[ "$c" -gt 0 ] && [ "$o" -gt 0 ] && [ "$l" -gt 0 ] || die "the seed wrote nothing"

# --- 6. the user's path: resync and a dead letter --------------------------------------
step "exec consumer syncdata resync orders --yes"
dc exec -T consumer syncdata resync orders --yes
wait_for "verify after the resync" 120 verify_equal

step "a dead letter: dlq list, replay"
psql_in local-db "alter table orders add constraint stack_test_no_probe check (status is distinct from 'dlq-probe')"
psql_in source-db "insert into orders (id, customer_id, amount, status) values (900001, 1, 1.5, 'dlq-probe')"
wait_for "the probe record in the DLQ" 180 dead_letters_are 1
dc exec -T consumer syncdata dlq list --table orders
[ "$(psql_in local-db 'select count(*) from orders where id = 900001')" = 0 ] ||
    die "the dead-lettered row was applied"
psql_in local-db "alter table orders drop constraint stack_test_no_probe"
dc exec -T consumer syncdata dlq replay --table orders
wait_for "the replayed row applied" 120 probe_applied
dead_letters_are 0 || die "dead letters left after the replay"
wait_for "verify after the replay" 120 verify_equal

# --- 7. volume ownership ------------------------------------------------------------------
step "named volumes owned by the images' non-root users"
owners=$(dc exec -T producer stat -c '%n %U' /var/lib/syncdata/archive /var/lib/syncdata/producer)
echo "$owners"
[ "$(awk '$2 == "syncdata"' <<<"$owners" | wc -l)" = 2 ] || die "syncdata volumes not owned by syncdata: $owners"
prom_owner=$(dc exec -T prometheus stat -c '%U' /prometheus)
[ "$prom_owner" = nobody ] || die "/prometheus owned by $prom_owner"

# --- 8. down -v --------------------------------------------------------------------------
step "down -v"
dc down -v
leftovers=$(project_leftovers)
[ -z "$leftovers" ] || die "down -v left behind: $leftovers"
finished=1
step "stack test passed (first up: $up_secs s)"
