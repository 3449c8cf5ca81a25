#!/usr/bin/env bash
# Everything opsflow needs on a fresh Debian-family machine, idempotent and quick on re-runs:
# Docker Engine + Compose v2 + the local base image, host packages the tests use,
# the Python environment, and the demo stack's generated secrets.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages used on the host: real PostgreSQL and Redis servers for the health-check
# tests, the clients the runbooks call (pg_dump, redis-cli, redis-check-rdb, zstd) and GNU
# time (peak memory in make bench-logs), iproute2 (the edge-worker tests' network namespaces).
HOST_PACKAGES=(postgresql-15 postgresql-client-15 redis-server redis-tools zstd time iproute2)

missing=()
for pkg in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root on Debian, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged cluster is not used: tests start their own servers on free ports.
  command -v pg_ctlcluster >/dev/null && pg_ctlcluster --skip-systemctl-redirect 15 main stop 2>/dev/null || true
fi

scripts/setup-docker.sh
scripts/setup-old-pg-client.sh
scripts/setup-python.sh
include/demo/make-env.sh
echo "setup: ready"
