#!/usr/bin/env bash
# Build the local base image debian:bookworm-slim with debootstrap, because no container
# registry is reachable from this machine. Skips when the image already exists.
#
# Usage: sudo scripts/build-base-image.sh [--force] [MIRROR]
#   --force  rebuild and re-tag even when the image exists
#   MIRROR   defaults to the machine's Debian mirror from its apt sources.
set -euo pipefail

IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=bookworm

log() { printf '[build-base-image] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 2
}

FORCE=0
if [[ "${1:-}" == --force ]]; then
    FORCE=1
    shift
fi

docker info >/dev/null 2>&1 || die "Docker daemon does not answer (run scripts/setup-docker.sh)"

if ((FORCE == 0)) && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE present, nothing to do"
    exit 0
fi

((EUID == 0)) || die "image $IMAGE missing and building it needs root (debootstrap)"

debian_mirror() {
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# The security archive is a separate mirror; none is fine (images then lack fixes).
security_mirror() {
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ && $2 ~ /security/ { print $2; exit }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($i ~ /security/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    printf '%s\n' "$uri"
}

MIRROR=${1:-$(debian_mirror)}
SECURITY_MIRROR=$(security_mirror)

if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -x /usr/sbin/debootstrap ]]; then
    log "installing debootstrap via apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap \
        >/dev/null
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)

ROOTFS=$(mktemp -d /var/tmp/opsflow-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

log "debootstrap --variant=minbase $SUITE from $MIRROR"
start=$SECONDS
"$DEBOOTSTRAP" --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >/var/log/opsflow-debootstrap.log 2>&1 ||
    {
        tail -n 20 /var/log/opsflow-debootstrap.log >&2
        die "debootstrap failed (full log: /var/log/opsflow-debootstrap.log)"
    }

# Slim it like the official image: no apt lists or package caches, no docs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/usr/share/doc/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
# Like the official image: point releases and security fixes, not just the release.
{
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE"
    printf 'deb %s %s-updates main\n' "$MIRROR" "$SUITE"
    if [[ -n "$SECURITY_MIRROR" ]]; then
        printf 'deb %s %s-security main\n' "$SECURITY_MIRROR" "$SUITE"
    fi
} >"$ROOTFS/etc/apt/sources.list"
# Keep images small: never pull recommends into containers built on this base.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$ROOTFS/etc/apt/apt.conf.d/99opsflow-no-recommends"

tar -C "$ROOTFS" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$IMAGE" >/dev/null
log "imported $IMAGE in $((SECONDS - start))s"
if ((FORCE == 1)); then
    # Seen with dockerd 20.10: its BuildKit kept resolving the previous image of this tag
    # for several minutes; the classic builder sees the new one at once.
    log "note: BuildKit may use the previous $IMAGE for a few minutes;" \
        "DOCKER_BUILDKIT=0 docker compose build --no-cache uses the new one now"
fi
