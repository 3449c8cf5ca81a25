#!/usr/bin/env bash
# Install PostgreSQL client 13 (older than every server here) under /opt/opsflow/pg-client-13
# for the "dump client older than the server" fault test. Debian 12 has no client 13, so the
# .deb comes from bullseye through a throw-away apt config (the technique setup-docker.sh
# uses for Compose v2) and is unpacked with dpkg -x: nothing is registered with dpkg and the
# host's own client 15 stays the default. The binaries run against the host's libpq5.
#
# Usage: sudo scripts/setup-old-pg-client.sh   (a quick no-op when already present)
#
# Exit codes: 0 present (or installed), 1 missing and cannot install here, 2 a step failed.
set -euo pipefail

PREFIX=${OPSFLOW_PG_CLIENT_13:-/opt/opsflow/pg-client-13}
PG_DUMP="$PREFIX/usr/lib/postgresql/13/bin/pg_dump"

log() { printf '[setup-old-pg-client] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 2
}

works() { [[ -x "$PG_DUMP" ]] && "$PG_DUMP" --version 2>/dev/null | grep -q ' 13\.'; }

# The machine's Debian mirror (same logic as setup-docker.sh): deb822 sources first, then
# one-line sources.list; security mirrors are skipped.
debian_mirror() {
    local file uri=""
    for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r "$file" ]] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )[a-z]+( |$)/ && u !~ /security/) { print u; exit } u=""; s="" }
            /^URIs:/   { u=$2 }
            /^Suites:/ { $1=""; s=$0 }
            END        { if (u != "" && s ~ /(^| )[a-z]+( |$)/ && u !~ /security/) print u }
        ' "$file" | head -n1)
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

main() {
    if works; then
        log "present: $("$PG_DUMP" --version)"
        return 0
    fi
    if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install $PREFIX (needs root and apt-get)"
        return 1
    fi
    local mirror tmp
    mirror=$(debian_mirror)
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
    # apt downloads as user _apt; mktemp's 0700 would force an unsandboxed fetch.
    chmod -R go+rx "$tmp"
    chown _apt "$tmp/lists/partial" "$tmp/deb" 2>/dev/null || true
    printf 'deb %s bullseye main\n' "$mirror" >"$tmp/sources.list"
    local -a apt_opts=(
        -o "Dir::Etc::SourceList=$tmp/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$tmp/lists"
        -o "Dir::Cache=$tmp/cache"
    )
    log "fetching postgresql-client-13 from $mirror bullseye"
    apt-get "${apt_opts[@]}" update -qq || die "apt-get update for bullseye failed"
    (cd "$tmp/deb" && apt-get "${apt_opts[@]}" download postgresql-client-13) ||
        die "apt-get download postgresql-client-13 failed"
    local deb
    deb=$(find "$tmp/deb" -maxdepth 1 -name 'postgresql-client-13_*.deb' | head -n1)
    [[ -n "$deb" ]] || die "no postgresql-client-13 .deb downloaded"
    # Unpack beside the target, then swap in: a half-extracted tree is never at $PREFIX.
    mkdir -p "$(dirname "$PREFIX")"
    local staging="$PREFIX.new"
    rm -rf "$staging"
    dpkg -x "$deb" "$staging"
    rm -rf "$PREFIX"
    mv "$staging" "$PREFIX"
    works || die "$PG_DUMP --version fails after unpacking $(basename "$deb")"
    log "installed $("$PG_DUMP" --version) under $PREFIX"
}

main "$@"
