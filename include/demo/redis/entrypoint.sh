#!/bin/sh
# The password goes into a 0600 config file, not argv (argv is visible in ps).
# RDB snapshots only (no AOF): a restore then means "replace dump.rdb and restart".
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
appendonly no
save 300 1 60 100
requirepass "$REDIS_PASSWORD"
CONF
exec redis-server "$conf" "$@"
