#!/bin/bash
# Entrypoint of the offline PostgreSQL image (postgres.Dockerfile): the part
# of the official image's docker-entrypoint.sh this stack relies on.
#
# - `postgres ARGS…` (or just `-c …` flags): as root, make PGDATA and the
#   socket directory the postgres user's and re-run as that user; on an empty
#   PGDATA, initdb with POSTGRES_USER / POSTGRES_PASSWORD (scram-sha-256 over
#   TCP from anywhere, trust on the socket), create POSTGRES_DB, run
#   /docker-entrypoint-initdb.d/*.sql and *.sh on a temporary server that
#   listens on the socket only, stop it; then exec postgres ARGS with
#   listen_addresses='*'.
# - anything else (pgbench, psql, bash) is exec'd as given.
set -euo pipefail

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    chown -R postgres:postgres "$PGDATA"
    install -d -o postgres -g postgres -m 2777 /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "docker-entrypoint.sh: POSTGRES_PASSWORD is not set" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"

    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sql)
            echo "docker-entrypoint.sh: running $f"
            "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f"
            ;;
        *.sh)
            echo "docker-entrypoint.sh: sourcing $f"
            # shellcheck source=/dev/null
            . "$f"
            ;;
        *) [ -e "$f" ] && echo "docker-entrypoint.sh: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "docker-entrypoint.sh: PostgreSQL init process complete; ready for start up."
fi

exec "$@"
