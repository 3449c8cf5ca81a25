#!/bin/sh
# The official redis image's entrypoint contract: a first argument that is an option or a
# *.conf file goes to redis-server; `redis-server ...` gets protected mode off (the
# official image compiles that default in: other containers must reach it); anything
# else runs as given. Data in the working dir /data.
set -eu

case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac
if [ "${1:-}" = redis-server ]; then
    shift
    case "${1:-}" in
        *.conf)
            conf=$1
            shift
            set -- redis-server "$conf" --protected-mode no "$@"
            ;;
        *) set -- redis-server --protected-mode no "$@" ;;
    esac
fi
umask 0077
exec "$@"
