#!/usr/bin/env bash
# Start Airflow standalone for this checkout, deploy the demo stack's 1.0.0 through
# demo__deploy, take a first verified backup through demo__backup, and say where to look.
#   scripts/demo.sh          start (idempotent) and deploy
#   scripts/demo.sh --stop   stop Airflow and the demo stack
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
HOME_DIR="$REPO/airflow-home"
PIDFILE="$HOME_DIR/standalone.pid"
LOG="$HOME_DIR/standalone.log"
VERSION="${DEMO_VERSION:-1.0.0}"
UI="http://127.0.0.1:8080"
AF="$REPO/scripts/airflow"

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [[ ${1:-} == --stop ]]; then
  if running; then
    pgid=$(cat "$PIDFILE")
    kill -- -"$pgid" 2>/dev/null || kill "$pgid"
    # Airflow's components shut down gracefully; give them 30 s, then force.
    for _ in $(seq 1 30); do pgrep -g "$pgid" >/dev/null || break; sleep 1; done
    pkill -KILL -g "$pgid" 2>/dev/null || true
    echo "demo: Airflow stopped"
  fi
  rm -f "$PIDFILE"
  OPSFLOW_VERSION=0 docker compose --project-name opsflow-demo --project-directory include/demo \
    --env-file include/demo/.env down --remove-orphans
  exit 0
fi

mkdir -p "$HOME_DIR"
if ! running; then
  echo "demo: starting Airflow standalone (log: $LOG)"
  setsid "$AF" standalone >"$LOG" 2>&1 < /dev/null &
  echo $! >"$PIDFILE"
fi

echo -n "demo: waiting for the API server at $UI "
for _ in $(seq 1 180); do
  curl -fsS "$UI/api/v2/monitor/health" >/dev/null 2>&1 && break
  running || { echo; echo "demo: Airflow exited; last lines of $LOG:"; tail -30 "$LOG"; exit 1; }
  echo -n .; sleep 2
done
curl -fsS "$UI/api/v2/monitor/health" >/dev/null || { echo; echo "demo: API server did not answer"; exit 1; }
echo " up"

echo -n "demo: waiting for demo__deploy to be parsed "
for _ in $(seq 1 90); do
  "$AF" dags details demo__deploy >/dev/null 2>&1 && break
  echo -n .; sleep 2
done
echo
"$AF" dags unpause demo__deploy >/dev/null

# Final state of one run (success/failed), or "" if it is still running after ~30 min.
wait_run() {
  local dag=$1 run_id=$2 state=""
  for _ in $(seq 1 360); do
    # The JSON document is the last stdout line; Airflow may print warnings before it.
    state=$("$AF" dags list-runs "$dag" -o json 2>/dev/null | tail -n 1 | "$REPO/.venv/bin/python" -c \
      'import json,sys; print(next((r["state"] for r in json.load(sys.stdin) if r["run_id"]==sys.argv[1]), ""))' "$run_id" 2>/dev/null || true)
    [[ $state == success || $state == failed ]] && break
    sleep 5
  done
  echo "$state"
}

RUN_ID="demo-deploy-$VERSION-$(date -u +%Y%m%dT%H%M%S)"
"$AF" dags trigger demo__deploy --run-id "$RUN_ID" --conf "{\"version\": \"$VERSION\"}" >/dev/null
echo "demo: triggered demo__deploy ($RUN_ID) for version $VERSION; the first build takes a few minutes"
state=$(wait_run demo__deploy "$RUN_ID")

# The nightly backup is scheduled from now on; take a first one by hand, verified.
backup_state="skipped (deploy did not succeed)"
if [[ $state == success ]]; then
  "$AF" dags unpause demo__backup >/dev/null
  BACKUP_RUN="demo-backup-$(date -u +%Y%m%dT%H%M%S)"
  "$AF" dags trigger demo__backup --run-id "$BACKUP_RUN" >/dev/null
  echo "demo: triggered demo__backup ($BACKUP_RUN): dump, restore into a scratch server, compare, publish"
  backup_state=$(wait_run demo__backup "$BACKUP_RUN")
fi

PASSWORD_FILE="$HOME_DIR/simple_auth_manager_passwords.json.generated"
PASSWORD=$([[ -f $PASSWORD_FILE ]] && "$REPO/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("admin", "?"))' "$PASSWORD_FILE" || echo "see $LOG")
cat <<MSG

demo__deploy run $RUN_ID: ${state:-still running}
demo__backup run ${BACKUP_RUN:-}: ${backup_state:-still running} (backups in /var/backups/opsflow/demo)
  Airflow UI : $UI/dags/demo__deploy   (login: admin / $PASSWORD)
  Demo API   : http://127.0.0.1:18080/version   http://127.0.0.1:18080/health/ready
  Stop all   : make demo-stop
MSG
[[ $state == success && $backup_state == success ]]
