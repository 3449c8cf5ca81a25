#!/bin/sh
# The password goes into a 0600 config file, never argv (argv shows in ps on the host).
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is required}"
umask 077
conf=/tmp/redis.conf
cat >"$conf" <<CONF
bind 0.0.0.0
protected-mode no
port 6379
dir /data
appendonly yes
requirepass "$REDIS_PASSWORD"
CONF
exec redis-server "$conf" "$@"
