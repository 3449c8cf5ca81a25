#!/bin/sh
# scripts/migrate.sh of the guide: golang-migrate against the app's database, the DSN from
# the DB_* variables. `up` applies every pending migration, `down` undoes the last one.
set -eu
cmd=${1:-up}
dsn="postgres://${DB_USER}:${DB_PASSWORD}@${DB_HOST}:${DB_PORT}/${DB_NAME}?sslmode=disable"
case "$cmd" in
  up) exec /app/bin/migrate -path /app/migrations/versioned -database "$dsn" up ;;
  down) exec /app/bin/migrate -path /app/migrations/versioned -database "$dsn" down 1 ;;
  version) exec /app/bin/migrate -path /app/migrations/versioned -database "$dsn" version ;;
  *) echo "usage: migrate.sh up|down|version" >&2; exit 2 ;;
esac
