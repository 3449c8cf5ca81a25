#!/bin/sh
# One-shot setup of the production stack: migrate the metadata database, then write the
# admin password for the simple auth manager (Airflow 3's default). That manager takes its
# users from [core] simple_auth_manager_users and their passwords from a JSON file, which
# lives on a volume shared with the api-server; re-running this rotates the password.
set -eu

: "${AIRFLOW_ADMIN_USER:?AIRFLOW_ADMIN_USER is required}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is required}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the passwords file path is required}"

airflow db migrate

umask 077
python3 - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
tmp = f"{path}.tmp"
with open(tmp, "w", encoding="utf-8") as handle:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, handle)
    handle.write("\n")
os.replace(tmp, path)
print(f"airflow-init: password of {os.environ['AIRFLOW_ADMIN_USER']!r} written to {path}")
PY
echo "airflow-init: done"
