#!/usr/bin/env bash
# Install PostgreSQL client 13 (older than every server here) under /opt/opsflow/pg-client-13
# for the "dump client older than the server" fault test. Debian 12 has no client 13, so the
# .deb comes from bullseye through a throw-away apt config and is unpacked with dpkg -x
# (lib/debian-suite-fetch.sh, shared with setup-docker.sh for Compose v2): nothing is
# registered with dpkg and the host's own client 15 stays the default. The binaries run
# against the host's libpq5.
#
# Usage: sudo scripts/setup-old-pg-client.sh   (a quick no-op when already present)
#
# Exit codes: 0 present (or installed), 1 missing and cannot install here, 2 a step failed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/debian-suite-fetch.sh
source "$SCRIPT_DIR/lib/debian-suite-fetch.sh"

PREFIX=${OPSFLOW_PG_CLIENT_13:-/opt/opsflow/pg-client-13}
PG_DUMP="$PREFIX/usr/lib/postgresql/13/bin/pg_dump"

log() { printf '[setup-old-pg-client] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 2
}

works() { [[ -x "$PG_DUMP" ]] && "$PG_DUMP" --version 2>/dev/null | grep -q ' 13\.'; }

main() {
    if works; then
        log "present: $("$PG_DUMP" --version)"
        return 0
    fi
    if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install $PREFIX (needs root and apt-get)"
        return 1
    fi
    # Unpack beside the target, then swap in: a half-extracted tree is never at $PREFIX.
    mkdir -p "$(dirname "$PREFIX")"
    local staging="$PREFIX.new"
    rm -rf "$staging"
    debian_suite_unpack bullseye postgresql-client-13 "$staging"
    rm -rf "$PREFIX"
    mv "$staging" "$PREFIX"
    works || die "$PG_DUMP --version fails after unpacking postgresql-client-13 from bullseye"
    log "installed $("$PG_DUMP" --version) under $PREFIX"
}

main "$@"
