#!/usr/bin/env bash
# Start Airflow standalone for this checkout, deploy the demo stack's 1.0.0 through
# demo__deploy, take a first verified backup through demo__backup, and say where to look.
#   scripts/demo.sh          start (idempotent) and deploy
#   scripts/demo.sh --stop   stop every process of its Airflow standalone, and the demo stack
# OPSFLOW_STACK (demo) names another stack to do the same for: `make replica SYSTEM=<name>`
# (scripts/replica.py) runs it so for a replica, with every setting below its own, and
# OPSFLOW_STACK_LINKS (lines) saying where to look at the stack itself.
#
# Idempotent: a release already recorded in the stack's ledger is not deployed again (the
# script shows what runs instead), a backup is taken only when none exists, and an Airflow
# component that died (standalone neither restarts nor reaps it) is named and the whole
# standalone restarted.
#
# Where it runs; a test sets every one of these to run its own demo next to yours:
#   OPSFLOW_AIRFLOW_HOME  Airflow home (airflow-home/)     AIRFLOW__API__PORT  UI port (8080)
#   OPSFLOW_STATE_DIR     ledgers (.state/)                OPSFLOW_STACKS_DIR  include/stacks/
#   (demo.yaml there names the compose project, its health checks and backup directory)
#   DEMO_API_PORT, DEMO_POSTGRES_PORT, DEMO_REDIS_PORT, DEMO_IMAGE_PREFIX: the compose file's
#   DEMO_VERSION (1.0.0): the release a first run deploys
#   DEMO_STOP_GRACE (30): seconds between SIGTERM and SIGKILL when stopping Airflow
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
AF="$REPO/scripts/airflow"
PY="$REPO/.venv/bin/python"

HOME_DIR=$(realpath -m "${OPSFLOW_AIRFLOW_HOME:-$REPO/airflow-home}")
export OPSFLOW_AIRFLOW_HOME="$HOME_DIR"
export OPSFLOW_STATE_DIR="${OPSFLOW_STATE_DIR:-$REPO/.state}"
export OPSFLOW_STACKS_DIR="${OPSFLOW_STACKS_DIR:-$REPO/include/stacks}"
PIDFILE="$HOME_DIR/standalone.pid"
LOG="$HOME_DIR/standalone.log"
PASSWORD_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$HOME_DIR/simple_auth_manager_passwords.json.generated}"
STACK="${OPSFLOW_STACK:-demo}"
[[ $STACK =~ ^[a-z0-9][a-z0-9_-]*$ ]] || { echo "demo: OPSFLOW_STACK=$STACK is not a stack name" >&2; exit 2; }
DEPLOY_DAG="${STACK}__deploy" BACKUP_DAG="${STACK}__backup"
LINKS="${OPSFLOW_STACK_LINKS:-}"
if [[ $STACK == demo ]]; then STOP_HINT="make demo-stop"; else STOP_HINT="make replica-stop SYSTEM=$STACK"; fi
VERSION="${DEMO_VERSION:-1.0.0}"
UI="http://${AIRFLOW__API__HOST:-127.0.0.1}:${AIRFLOW__API__PORT:-8080}"
DEMO_API="http://127.0.0.1:${DEMO_API_PORT:-18080}"
STOP_GRACE="${DEMO_STOP_GRACE:-30}"
[[ $STOP_GRACE =~ ^[0-9]+$ ]] || { echo "demo: DEMO_STOP_GRACE=$STOP_GRACE is not a number of seconds" >&2; exit 2; }
MAX_RESTARTS=2
RESTARTS=0

say() { echo "$STACK: $*"; }

# Process, ledger and stack questions, answered in Python (one small program, argv in).
# Our standalone runs in a session of its own (its pid is in the pid file) and every process
# it starts inherits OPSFLOW_DEMO_OWNER=<Airflow home> in its environment, also those that
# leave the session (a task's `docker compose` runs): see owned() below.
read -r -d '' HELPER <<'PY' || true
import json, os, re, sys, urllib.request
from datetime import datetime, timezone

COMPONENTS = {  # name -> pattern on the command line (api-server retitles itself api_server)
    "scheduler": r"\bscheduler\b",
    "dag-processor": r"\bdag-processor\b",
    "triggerer": r"\btriggerer\b",
    "api-server": r"\bapi[-_]server\b",
}
HEARTBEAT = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
START_GRACE = 180  # s after standalone started before a missing component counts as dead
STALE = 120  # s without a heartbeat before a live-looking component counts as hung


def proc(pid):
    """state, ppid, sid, start (s since boot), cmdline, environ entries; None when gone."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    info = {"pid": int(pid), "state": fields[0], "ppid": int(fields[1]), "sid": int(fields[3]),
            "start": int(fields[19]) / os.sysconf("SC_CLK_TCK"), "cmd": "", "env": set()}
    try:
        with open(f"{base}/cmdline", "rb") as handle:
            info["cmd"] = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"{base}/environ", "rb") as handle:
            info["env"] = set(handle.read().split(b"\0"))
    except OSError:
        pass
    return info


def alive(info):
    return info is not None and info["state"] not in ("Z", "X")


def ours(home, info):
    """The standalone of this home (not a pid reused since, e.g. after a reboot)."""
    return alive(info) and f"AIRFLOW_HOME={home}".encode() in info["env"] and (
        f"OPSFLOW_DEMO_OWNER={home}".encode() in info["env"] or "standalone" in info["cmd"])


def boot_time():
    with open("/proc/stat") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("btime"))


def owned(home, sid):
    """Live processes of this home's standalone: its session, and every process carrying
    its marker. The session is what finds processes that retitled themselves (the API
    server, LocalExecutor workers, task processes: setproctitle wipes what
    /proc/<pid>/environ shows); the marker finds those that left the session (a task's
    `docker compose`). A session whose leader died is trusted for processes that started
    after it did (the pid file's time)."""
    mark = f"OPSFLOW_DEMO_OWNER={home}".encode()
    leader = proc(sid) if sid > 0 else None
    session, since = None, 0.0
    if sid > 0 and ours(home, leader):
        session = sid
    elif sid > 0 and not alive(leader):
        try:
            session, since = sid, os.stat(f"{home}/standalone.pid").st_mtime - 2 - boot_time()
        except OSError:
            session = None
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        info = proc(name)
        if not alive(info):
            continue
        if mark in info["env"] or (info["sid"] == session and info["start"] >= since):
            found.append(info)
    return found


def uptime_of(info):
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0]) - info["start"]


def cmd_pids(home, sid):
    for info in owned(home, int(sid)):
        print(f"{info['pid']}\t{info['cmd'][:160]}")


def cmd_leader(home, pid):
    """Exit 0 when pid is this home's standalone."""
    sys.exit(0 if pid.isdigit() and ours(home, proc(pid)) else 1)


def cmd_check(home, pid, ui):
    """One line per dead component of the standalone ``pid``; nothing when all are alive."""
    leader = proc(pid)
    if not alive(leader):
        print(f"Airflow standalone (pid {pid}) is not running")
        return
    up = uptime_of(leader)
    children = [i for i in map(proc, filter(str.isdigit, os.listdir("/proc")))
                if i is not None and i["ppid"] == int(pid)]
    # A dead child that standalone did not reap has lost its command line: which component
    # it was is the one no live child is.
    zombies = ", ".join(str(c["pid"]) for c in children if not alive(c))
    procs = {}
    for name, pattern in COMPONENTS.items():
        live = [c for c in children if alive(c) and re.search(pattern, c["cmd"])]
        if live:
            procs[name] = live[0]
    # Standalone starts all four at once: one missing beside others that run is dead.
    started = any(uptime_of(c) > 10 for c in procs.values())
    for name in COMPONENTS:
        if name in procs:
            continue
        if zombies:
            print(f"the {name} of Airflow standalone died; standalone neither restarted nor"
                  f" reaped it (zombie pid {zombies})")
        elif started or up > START_GRACE:
            print(f"the {name} of Airflow standalone is not running ({up:.0f}s after it started)")
    if up <= START_GRACE:
        return
    try:
        with urllib.request.urlopen(f"{ui}/api/v2/monitor/health", timeout=10) as answer:
            health = json.load(answer)
    except (OSError, ValueError):
        return  # the API server's process is checked above; it may just be busy
    now = datetime.now(timezone.utc)
    for name, key in HEARTBEAT.items():
        beat = (health.get(key) or {}).get(f"latest_{key}_heartbeat")
        if name not in procs or not beat:
            continue
        last = datetime.fromisoformat(beat)
        last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
        age = (now - last).total_seconds()
        if age > STALE:
            print(f"the {name} (pid {procs[name]['pid']}) has sent no heartbeat for {age:.0f}s"
                  f" (last {beat}): it hangs")


def cmd_password_file(path, users):
    """Give every configured user a password in a 0600 file before Airflow starts: the
    simple auth manager then uses it and prints no generated password into the log."""
    import secrets
    alphabet = "abcdefghkmnpqrstuvwxyzABCDEFGHKMNPQRSTUVWXYZ23456789"
    try:
        with open(path) as handle:
            passwords = json.loads(handle.read().strip() or "{}")
    except FileNotFoundError:
        passwords = {}
    except ValueError as err:
        sys.exit(f"demo: {path} is not JSON ({err}); remove it to get a new admin password")
    names = [u.split(":")[0] for u in users.split(",") if u.strip()]
    missing = [n.strip() for n in names if n.strip() not in passwords]
    if missing or not os.path.exists(path):
        for name in missing:
            passwords[name] = "".join(secrets.choice(alphabet) for _ in range(16))
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(passwords) + "\n")
        os.replace(tmp, path)
    os.chmod(path, 0o600)


def cmd_password(path):
    with open(path) as handle:
        print(json.load(handle).get("admin", "?"))


def cmd_stack(name):
    """Project, backup directory, backup schedule, then the `docker compose` argv."""
    from opsflow.runtimes.compose import ComposeProject
    from opsflow.stack.loader import load_stack
    try:
        stack = load_stack(name)
        project = ComposeProject.for_stack(stack)
    except Exception as err:  # the loader's message names the file, field and value
        sys.exit(f"demo: {err}")
    print(project.name)
    print(stack.backup.local_dir or "")
    print(stack.schedules.backup or "")
    print("\n".join(project.base_argv()[2:]))


def cmd_current(name):
    """The release the ledger records as running: version, dag, run id, when."""
    from opsflow.releases.ledger import Ledger
    release = Ledger(name).current()
    if release is not None:
        dag = release.entry.dag_id if release.entry else "?"
        print(f"{release.version}\t{dag}\t{release.run_id}\t{release.recorded_at.isoformat()}")


def cmd_backups(root):
    """Newest published backup of the local store, if any."""
    from opsflow.backup.stores import LocalStore
    found = sorted(LocalStore(root).list_manifests(), key=lambda m: m.started_at)
    if found:
        print(f"{found[-1].backup_id}\t{found[-1].started_at}")


def cmd_runs():
    """`airflow dags list-runs -o json` on stdin -> run_id, state per line."""
    lines = [line for line in sys.stdin.read().splitlines() if line.startswith("[")]
    for run in json.loads(lines[-1]) if lines else []:
        print(f"{run['run_id']}\t{run['state']}")


command, *args = sys.argv[1:]
globals()[f"cmd_{command.replace('-', '_')}"](*args)
PY

helper() { PYTHONPATH="$REPO/plugins${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "$HELPER" "$@"; }

recorded_pid() { local pid; pid=$(cat "$PIDFILE" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && echo "$pid"; }
leader_pid() { local pid; pid=$(recorded_pid) && helper leader "$HOME_DIR" "$pid" && echo "$pid"; }
owned_pids() { helper pids "$HOME_DIR" "$(recorded_pid || echo 0)"; }

# End every process of this home's standalone: SIGTERM, then SIGKILL after the grace
# period (LocalExecutor workers ignore SIGTERM), then prove that none is left.
stop_airflow() {
  local -a procs
  mapfile -t procs < <(owned_pids)
  if ((${#procs[@]} == 0)); then
    rm -f "$PIDFILE"
    return 0
  fi
  say "stopping Airflow standalone: SIGTERM to its ${#procs[@]} processes, SIGKILL after ${STOP_GRACE}s"
  kill -TERM "${procs[@]%%$'\t'*}" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE; i++)); do
    mapfile -t procs < <(owned_pids)
    ((${#procs[@]})) || break
    sleep 1
  done
  if ((${#procs[@]})); then
    say "${#procs[@]} processes ignored SIGTERM for ${STOP_GRACE}s; sending SIGKILL to:"
    printf '  %s\n' "${procs[@]}" | head -n 12
    for ((i = 0; i < 10 && ${#procs[@]}; i++)); do
      kill -KILL "${procs[@]%%$'\t'*}" 2>/dev/null || true
      sleep 1
      mapfile -t procs < <(owned_pids)
    done
  fi
  if ((${#procs[@]})); then
    say "these processes of $HOME_DIR survived SIGKILL:"
    printf '  %s\n' "${procs[@]}"
    return 1
  fi
  rm -f "$PIDFILE"
  say "Airflow stopped; no process of $HOME_DIR is left"
}

# A fresh log and the password file, both 0600, before standalone starts: the admin
# password is then read from the file, never generated and printed into the log.
prepare_home() {
  mkdir -p "$HOME_DIR"
  chmod 700 "$HOME_DIR"
  helper password-file "$PASSWORD_FILE" "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
  if [[ -e $LOG ]]; then
    # The previous run's log, kept for a post-mortem, with any password line masked.
    rm -f "$LOG.1"
    (umask 077 && sed -E 's/([Pp]assword[^:]*: ).*/\1********/' "$LOG" >"$LOG.1")
    rm -f "$LOG"
  fi
  (umask 077 && : >"$LOG")
}

start_airflow() {
  prepare_home
  rm -f "$PIDFILE"
  say "starting Airflow standalone (log: $LOG)"
  # setsid: its own session, so a terminal's Ctrl-C or hang-up does not reach it. The
  # session leader writes its own pid (setsid forks when it cannot become leader itself).
  OPSFLOW_DEMO_OWNER="$HOME_DIR" setsid bash -c 'echo $$ >"$1"; exec "$2" standalone' \
    demo-standalone "$PIDFILE" "$AF" >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 50); do [[ -s $PIDFILE ]] && break; sleep 0.1; done
}

restart_airflow() {
  RESTARTS=$((RESTARTS + 1))
  if ((RESTARTS > MAX_RESTARTS)); then
    say "Airflow did not stay up after $MAX_RESTARTS restarts; last lines of $LOG:"
    tail -n 30 "$LOG"
    exit 1
  fi
  say "restarting the whole Airflow standalone"
  stop_airflow || exit 1
  start_airflow
  wait_api
}

# Running, with every component alive; otherwise say what is dead and (re)start cleanly.
ensure_airflow() {
  local leader problems left
  if leader=$(leader_pid); then
    problems=$(helper check "$HOME_DIR" "$leader" "$UI")
    if [[ -z $problems ]]; then
      say "Airflow standalone is running (pid $leader)"
      return 0
    fi
    while IFS= read -r line; do say "$line"; done <<<"$problems"
    restart_airflow
    return 0
  fi
  left=$(owned_pids | wc -l)
  if ((left > 0)); then
    say "Airflow standalone is gone but $left of its processes are left; stopping them first"
    stop_airflow || exit 1
  fi
  start_airflow
}

# Restart when a component died while we wait for something (a run, the API).
watch_airflow() {
  local leader problems
  leader=$(leader_pid) || { say "Airflow standalone exited; last lines of $LOG:"; tail -n 30 "$LOG"; restart_airflow; return 0; }
  problems=$(helper check "$HOME_DIR" "$leader" "$UI")
  [[ -z $problems ]] && return 0
  while IFS= read -r line; do say "$line"; done <<<"$problems"
  restart_airflow
}

wait_api() {
  echo -n "$STACK: waiting for the API server at $UI "
  for _ in $(seq 1 180); do
    curl -fsS "$UI/api/v2/monitor/health" >/dev/null 2>&1 && { echo " up"; return 0; }
    leader_pid >/dev/null || { echo; say "Airflow exited; last lines of $LOG:"; tail -n 30 "$LOG"; exit 1; }
    echo -n .
    sleep 2
  done
  echo
  say "the API server did not answer at $UI; last lines of $LOG:"
  tail -n 30 "$LOG"
  exit 1
}

run_states() { "$AF" dags list-runs "$1" -o json 2>/dev/null | helper runs || true; }

# RUN_STATE: final state of one run (success/failed), "" if still running after ~30 min.
wait_run() {
  local dag=$1 run_id=$2
  RUN_STATE=""
  for _ in $(seq 1 360); do
    RUN_STATE=$(run_states "$dag" | awk -F'\t' -v id="$run_id" '$1 == id {print $2}')
    [[ $RUN_STATE == success || $RUN_STATE == failed ]] && return 0
    watch_airflow
    sleep 5
  done
}

# A queued or running run of the DAG (an earlier `make demo` interrupted while it waited).
active_run() { run_states "$1" | awk -F'\t' '$2 == "queued" || $2 == "running" {print $1; exit}'; }

compose() { OPSFLOW_VERSION="$1" docker compose "${COMPOSE[@]}" "${@:2}"; }

read_stack() {
  local -a lines
  mapfile -t lines < <(helper stack "$STACK") || true
  if ((${#lines[@]} < 4)); then
    say "could not read the $STACK stack file in $OPSFLOW_STACKS_DIR"
    return 1
  fi
  PROJECT=${lines[0]} BACKUP_DIR=${lines[1]} BACKUP_SCHEDULE=${lines[2]} COMPOSE=("${lines[@]:3}")
}

# A data volume older than the stack's .env was initialised with another password (another
# checkout's demo on this machine uses the same compose project): say so before the
# migration fails with "password authentication failed".
warn_foreign_volume() {
  local env_file="" created volume older="" i
  for ((i = 0; i < ${#COMPOSE[@]} - 1; i++)); do
    [[ ${COMPOSE[i]} == --env-file ]] && env_file=${COMPOSE[i + 1]}
  done
  [[ -n $env_file && -e $env_file ]] || return 0
  local -a volumes
  mapfile -t volumes < <(docker volume ls --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
  for volume in "${volumes[@]}"; do
    created=$(docker volume inspect --format '{{.CreatedAt}}' "$volume" 2>/dev/null) || continue
    if (($(date -d "$created" +%s) < $(stat -c %Y "$env_file"))); then older="$volume (created $created)"; fi
  done
  if [[ -n $older ]]; then
    say "WARNING: volume $older is older than $env_file, so its"
    say "  database password is probably another checkout's. Use that checkout's .env, or"
    say "  remove the old data: docker volume rm ${volumes[*]}"
  fi
}

# ---------------------------------------------------------------------------------- --stop
if [[ ${1:-} == --stop ]]; then
  status=0
  stop_airflow || status=1
  if read_stack; then
    compose 0 down --remove-orphans
    say "$STACK stack $PROJECT stopped (its volumes are kept)"
  else
    status=1
  fi
  exit "$status"
elif [[ -n ${1:-} ]]; then
  echo "usage: scripts/demo.sh [--stop]" >&2
  exit 2
fi

# ---------------------------------------------------------------------------------- start
read_stack || exit 1
ensure_airflow
wait_api

echo -n "$STACK: waiting for $DEPLOY_DAG to be parsed "
parsed=no
for _ in $(seq 1 90); do
  "$AF" dags details "$DEPLOY_DAG" >/dev/null 2>&1 && { parsed=yes; break; }
  echo -n .
  sleep 2
done
echo
if [[ $parsed == no ]]; then
  say "$DEPLOY_DAG did not appear; see ./scripts/airflow dags list-import-errors"
  exit 1
fi
"$AF" dags unpause "$DEPLOY_DAG" >/dev/null

# Deploy only when the ledger records no release: run again after an upgrade, `make demo`
# must not put 1.0.0 back (its migration fails on the newer schema).
release=$(helper current "$STACK")
if [[ -n $release ]]; then
  IFS=$'\t' read -r VERSION by_dag by_run at <<<"$release"
  say "release $VERSION of stack $STACK is deployed (recorded $at by $by_dag run $by_run); not deploying again"
  deploy_line="already deployed: release $VERSION"
  deployed=yes
  mapfile -t want < <(compose "$VERSION" config --services | sort)
  mapfile -t have < <(compose "$VERSION" ps --status running --services | sort)
  if [[ "${want[*]}" != "${have[*]}" ]]; then
    say "not every container of $VERSION runs (running: ${have[*]:-none}); starting them"
    if ! compose "$VERSION" up --detach --no-build --pull never --remove-orphans --wait; then
      say "could not start release $VERSION; deploy it again: ./scripts/airflow dags trigger $DEPLOY_DAG --conf '{\"version\": \"$VERSION\"}'"
      deployed=no
    fi
  fi
else
  RUN_ID=$(active_run "$DEPLOY_DAG")
  if [[ -n $RUN_ID ]]; then
    say "$DEPLOY_DAG run $RUN_ID is not finished yet; waiting for it"
  else
    warn_foreign_volume
    RUN_ID="${STACK}-deploy-$VERSION-$(date -u +%Y%m%dT%H%M%S)"
    "$AF" dags trigger "$DEPLOY_DAG" --run-id "$RUN_ID" --conf "{\"version\": \"$VERSION\"}" >/dev/null
    say "triggered $DEPLOY_DAG ($RUN_ID) for version $VERSION; the first build takes a few minutes"
  fi
  wait_run "$DEPLOY_DAG" "$RUN_ID"
  deploy_line="$DEPLOY_DAG run $RUN_ID: ${RUN_STATE:-still running}"
  deployed=$([[ $RUN_STATE == success ]] && echo yes || echo no)
fi

# The nightly backup is scheduled from now on; take a first one by hand, verified, unless
# one exists already.
backup_line="$BACKUP_DAG: skipped (the stack is not deployed)"
backup_ok=no
if [[ $deployed == yes ]]; then
  "$AF" dags unpause "$BACKUP_DAG" >/dev/null
  newest=$([[ -n $BACKUP_DIR ]] && helper backups "$BACKUP_DIR" || true)
  if [[ -n $newest ]]; then
    backup_line="$BACKUP_DAG: backup ${newest%%$'\t'*} exists (taken ${newest#*$'\t'}); not taking another"
    backup_ok=yes
  else
    BACKUP_RUN=$(active_run "$BACKUP_DAG")
    if [[ -z $BACKUP_RUN && -n $BACKUP_SCHEDULE ]]; then
      # Unpausing a scheduled DAG makes the scheduler start the run of its latest slot at
      # once (catchup is off): that is the first backup, not a second one beside it.
      for _ in $(seq 1 6); do
        sleep 5
        BACKUP_RUN=$(active_run "$BACKUP_DAG")
        [[ -n $BACKUP_RUN ]] && break
      done
    fi
    if [[ -z $BACKUP_RUN ]]; then
      BACKUP_RUN="${STACK}-backup-$(date -u +%Y%m%dT%H%M%S)"
      "$AF" dags trigger "$BACKUP_DAG" --run-id "$BACKUP_RUN" >/dev/null
    fi
    say "$BACKUP_DAG ($BACKUP_RUN): dump, restore into a scratch server, compare, publish"
    wait_run "$BACKUP_DAG" "$BACKUP_RUN"
    backup_line="$BACKUP_DAG run $BACKUP_RUN: ${RUN_STATE:-still running}"
    [[ $RUN_STATE == success ]] && backup_ok=yes
  fi
fi

if [[ $STACK == demo && -z $LINKS ]]; then
  LINKS="  Demo API   : $DEMO_API/version   $DEMO_API/health/ready"
fi
PASSWORD=$(helper password "$PASSWORD_FILE" 2>/dev/null || echo "see $PASSWORD_FILE")
BACKUPS_IN=${BACKUP_DIR:-"the S3 destination of the stack file"}
echo
say "what runs in compose project $PROJECT (release $VERSION):"
compose "$VERSION" ps || true
cat <<MSG

$deploy_line
$backup_line (backups in $BACKUPS_IN)
  Airflow UI : $UI/dags/$DEPLOY_DAG   (login: admin / $PASSWORD)
$LINKS
  Stop all   : $STOP_HINT
MSG
[[ $deployed == yes && $backup_ok == yes ]]
