#!/usr/bin/env bash
# Create or refresh <repo>/.venv with the pinned runtime and development dependencies.
#
# Idempotent: the pip step is skipped when .venv/.requirements.sha256 matches the
# current requirements files, so a re-run costs well under a second.
# Environment: PYTHON picks the interpreter (default: python3; needs >= 3.11).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
venv="$repo/.venv"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

die() { echo "setup-python: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 ||
  die "'$python' not found; install Python >= 3.11 (Debian 12: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "Python >= 3.11 required, '$python' is $("$python" -c 'import platform; print(platform.python_version())')"

want="$(cd "$repo" && sha256sum requirements.txt requirements-dev.txt)"
if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup-python: $venv is up to date"
  exit 0
fi

if [[ ! -x $venv/bin/python ]]; then
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ $(id -u) -eq 0 && -f /etc/debian_version ]] && command -v apt-get >/dev/null; then
      echo "setup-python: the venv module is missing; installing python3-venv with apt-get"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    fi
    "$python" -c 'import ensurepip, venv' 2>/dev/null ||
      die "the venv module (with ensurepip) is missing for '$python'; as root run: apt-get install python3-venv"
  fi
  echo "setup-python: creating $venv"
  "$python" -m venv "$venv"
fi

echo "setup-python: installing requirements-dev.txt (the first run takes a few minutes)"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet -r "$repo/requirements-dev.txt"
"$venv/bin/python" -m pip check
printf '%s\n' "$want" >"$stamp"
echo "setup-python: $venv is ready"
