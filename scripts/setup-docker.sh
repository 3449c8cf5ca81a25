#!/usr/bin/env bash
# Bring a fresh Debian-family machine (no systemd, no container registry) to a working
# Docker Engine + Compose v2 + local base image. Safe to run any number of times: each
# step checks first and only acts on what is missing.
#
# Usage: sudo scripts/setup-docker.sh
#
# Exit codes: 0 everything present (or installed), 1 something is missing and this
# machine/user cannot install it (not root or not Debian), 2 a step failed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib/debian-suite-fetch.sh
source "$SCRIPT_DIR/lib/debian-suite-fetch.sh"
DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_WAIT_SECONDS=${DOCKERD_WAIT_SECONDS:-60}
PLUGIN_DIR=/usr/libexec/docker/cli-plugins
BASE_IMAGE=debian:bookworm-slim

log() { printf '[setup-docker] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 2
}

# dockerd is /usr/sbin/dockerd from docker.io but may live in /usr/bin elsewhere; root's
# PATH has both, a non-root PATH often lacks /usr/sbin.
find_dockerd() {
    local candidate
    for candidate in "$(command -v dockerd 2>/dev/null || true)" /usr/sbin/dockerd /usr/bin/dockerd; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

have_docker_cli() { command -v docker >/dev/null 2>&1; }
docker_answers() { have_docker_cli && docker info >/dev/null 2>&1; }
have_compose_v2() { have_docker_cli && docker compose version >/dev/null 2>&1; }
have_base_image() { docker_answers && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; }
# A real image registry for stacks whose images are pulled (the EchoMind replica's test
# runs its own on 127.0.0.1): Debian's docker-registry (distribution 2.8).
REGISTRY_BIN=/usr/bin/docker-registry
have_registry() { [[ -x $REGISTRY_BIN ]]; }

is_debian() {
    [[ -r /etc/os-release ]] || return 1
    local id id_like
    id=$(awk -F= '$1 == "ID" { gsub(/"/, "", $2); print $2 }' /etc/os-release)
    id_like=$(awk -F= '$1 == "ID_LIKE" { gsub(/"/, "", $2); print $2 }' /etc/os-release)
    [[ "$id" == debian || " $id_like " == *" debian "* ]] && command -v apt-get >/dev/null 2>&1
}

missing_items() {
    find_dockerd >/dev/null || echo "dockerd (Debian package docker.io)"
    have_docker_cli || echo "docker CLI (Debian package docker.io)"
    docker_answers || echo "a running Docker daemon (docker info does not answer)"
    have_compose_v2 || echo "Docker Compose v2 plugin (docker compose version fails)"
    have_base_image || echo "base image $BASE_IMAGE"
    have_registry || echo "image registry $REGISTRY_BIN (Debian package docker-registry)"
}

install_docker_engine() {
    if find_dockerd >/dev/null && have_docker_cli; then
        log "dockerd present at $(find_dockerd); docker CLI at $(command -v docker)"
        return 0
    fi
    log "installing docker.io via apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    find_dockerd >/dev/null || die "docker.io installed but no dockerd found"
}

start_dockerd() {
    if docker_answers; then
        log "Docker daemon answers"
        return 0
    fi
    local dockerd
    dockerd=$(find_dockerd)
    log "starting $dockerd in the background (log: $DOCKERD_LOG)"
    # setsid: the daemon must outlive this script and its terminal.
    setsid "$dockerd" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local waited=0
    until docker_answers; do
        if ((waited >= DOCKERD_WAIT_SECONDS)); then
            tail -n 20 "$DOCKERD_LOG" >&2 || true
            die "dockerd did not answer within ${DOCKERD_WAIT_SECONDS}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "Docker daemon answers after ${waited}s"
}

# Debian 12 ships only Compose v1; Debian 13's docker-compose is v2 and needs only libc6.
install_compose_v2() {
    if have_compose_v2; then
        log "Compose present: $(docker compose version)"
        return 0
    fi
    local root
    root=$(mktemp -d)
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    debian_suite_unpack trixie docker-compose "$root"
    [[ -x "$root/usr/libexec/docker/cli-plugins/docker-compose" ]] ||
        die "docker-compose from trixie has no usr/libexec/docker/cli-plugins/docker-compose"
    install -D -m 0755 "$root/usr/libexec/docker/cli-plugins/docker-compose" \
        "$PLUGIN_DIR/docker-compose"
    have_compose_v2 || die "docker compose still fails after installing $PLUGIN_DIR/docker-compose"
    log "installed $(docker compose version)"
}

# The package's own service would listen on :5000 on every interface: a policy-rc.d that
# refuses every start keeps it stopped while it installs (one already there is left alone).
install_registry() {
    if have_registry; then
        log "image registry present: $REGISTRY_BIN"
        return 0
    fi
    log "installing docker-registry via apt (its service is not started)"
    local policy=/usr/sbin/policy-rc.d ours=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# setup-docker.sh: no service starts while packages install\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        ours=1
    fi
    local status=0
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker-registry >/dev/null || status=$?
    [[ -z $ours ]] || rm -f "$policy"
    ((status == 0)) || die "apt-get install docker-registry failed (exit $status)"
    have_registry || die "docker-registry installed but $REGISTRY_BIN is missing"
}

main() {
    local -a missing
    mapfile -t missing < <(missing_items)
    if ((${#missing[@]} == 0)); then
        log "nothing missing: $(docker compose version), image $BASE_IMAGE present"
        return 0
    fi
    local reason=""
    ((EUID == 0)) || reason="not running as root"
    is_debian || reason="${reason:+$reason; }not a Debian-family system with apt-get"
    if [[ -n "$reason" ]]; then
        log "cannot install ($reason). Missing:"
        printf '  - %s\n' "${missing[@]}" >&2
        return 1
    fi
    log "missing: $(IFS=,; echo "${missing[*]}")"
    install_docker_engine
    start_dockerd
    install_compose_v2
    install_registry
    "$SCRIPT_DIR/build-base-image.sh"
    mapfile -t missing < <(missing_items)
    if ((${#missing[@]} > 0)); then
        log "still missing after setup:"
        printf '  - %s\n' "${missing[@]}" >&2
        return 2
    fi
    log "done: $(docker compose version), image $BASE_IMAGE present"
}

main "$@"
