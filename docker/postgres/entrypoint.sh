#!/bin/sh
# The official image's contract. First start: create the cluster in PGDATA with
# POSTGRES_USER as superuser (password auth over TCP) and the database POSTGRES_DB, then
# run the files in /docker-entrypoint-initdb.d (*.sql with psql, *.sh with sh) in name
# order, as the official image does. Every start: postgres in the foreground, with any
# arguments that start with "-" (or follow "postgres") passed on to it. Any other command
# (`docker compose run postgres sh -c ...`) runs as given, with no server started.
set -eu

case "${1:-}" in
    postgres) shift ;;
    "" | -*) ;;
    *) exec "$@" ;;
esac

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${POSTGRES_DB:?POSTGRES_DB is required}"

INITDB_D=/docker-entrypoint-initdb.d

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
        >>"$PGDATA/pg_hba.conf"
    inits=$(find "$INITDB_D" -maxdepth 1 \( -name '*.sql' -o -name '*.sh' \) 2>/dev/null | sort)
    if [ "$POSTGRES_DB" != postgres ] || [ -n "$inits" ]; then
        # Socket-only while setting up: nothing connects before the database exists.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        if [ "$POSTGRES_DB" != postgres ]; then
            createdb --username="$POSTGRES_USER" --host=/run/postgresql "$POSTGRES_DB"
        fi
        for f in $inits; do
            echo "postgres-entrypoint: running $f"
            case "$f" in
                *.sql) psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --host=/run/postgresql \
                    --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" -f "$f" ;;
                *.sh) sh "$f" ;;
            esac
        done
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "postgres-entrypoint: cluster initialised (user $POSTGRES_USER, db $POSTGRES_DB)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql \
    -c logging_collector=off "$@"
