#!/bin/sh
# The password goes into a 0600 config file, never argv (argv shows in ps on the host).
# RDB snapshots always; REDIS_APPENDONLY=yes adds the AOF (the Airflow broker wants it; the
# demo keeps RDB only, so a restore is "replace dump.rdb and restart").
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is required}"
umask 077
conf=/tmp/redis.conf
cat >"$conf" <<CONF
bind 0.0.0.0
protected-mode no
port 6379
dir /data
dbfilename dump.rdb
save 300 1 60 100
appendonly ${REDIS_APPENDONLY:-no}
requirepass "$REDIS_PASSWORD"
CONF
exec redis-server "$conf" "$@"
