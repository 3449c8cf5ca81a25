#!/usr/bin/env python
"""Parse-time benchmark of the DAG files at fleet scale, next to Airflow's own figures.

``--stacks`` generated stack files (default 100; each a distinct stack: services, backup
sources, schedules, timezone, alerts and, when the stack model has ``placement``, the
``host-NN`` queue vary) and their thin DAG files (a copy of ``dags/demo.py`` each, six
DAGs per stack) are written to a temporary directory with its own Airflow home (SQLite,
migrated first and timed apart). Each DAG file is then measured four ways:

* **warm**: how Airflow's DAG processor parses a file. Its manager process has Airflow
  imported and forks one child per file; the child builds a ``BundleDagBag`` for that file.
  A worker process here imports the same Airflow modules once, then forks one child per file
  and repetition. ``import`` is the exec of the DAG file's module (everything it imports,
  opsflow included, since the manager never imports opsflow); ``parse`` is the whole
  ``BundleDagBag`` for the file (import, validation, bagging).
* **cold**: wall time of a fresh interpreter that imports Airflow's DagBag and parses the
  one file: what a one-off ``python dags/x.py`` or a test process pays. Measured on an
  evenly spread sample of files (``--cold-sample``), since each costs seconds of import.
* **airflow**: ``airflow dags report -o json`` for the folder. It parses every file in one
  process, so the first file it reads also pays for importing opsflow.
* **processor**: Airflow's real DAG processor, ``airflow dag-processor --num-runs 1``, makes
  one full pass over the folder: its wall time (from its log), the per-file durations it
  records (``dag.last_parse_duration``), the DAGs it serialized, its parallelism
  (``[dag_processor] parsing_processes``) and the CPU of its process tree (GNU time, less a
  pass over an empty folder: the fixed cost of starting it).

Figures are printed as distributions over the files (min, median, p95, max), with the worst
files; ``--per-file`` prints every file. A closing fleet estimate scales the measured
figures to ``--fleet-hosts`` x ``--fleet-stacks-per-host`` stack files: DAG-processor CPU
per pass, the shortest refresh interval it allows against ``min_file_process_interval``,
scheduled runs and tasks per day from the generated DAGs' schedules, and the first limit.

A guard runs in each warm child: an audit hook records network, subprocess and SQLite
events, and the modules first imported, while the DAG file's module executes inside
Airflow's importer (the window opens when Airflow's ``SourceFileLoader`` starts executing
that file and closes when it returns; DagBag setup, validation and bagging are outside).
C libraries that open sockets themselves (libpq, hiredis) raise no audit event, so the
client modules that would drive them are checked as imports instead.

A file passes when its warm parse median and Airflow's figure are both under the target,
it yields its six DAGs without import errors (in the warm parse, the cold sample, the
report and the DAG processor), and the guard saw nothing. The exit status is 1 when any
file fails, 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from benchlib import GNU_TIME, BenchError, gnu_time_argv, gnu_time_result, machine_line

REPO = Path(__file__).resolve().parents[1]
DEMO_DAG_FILE = REPO / "dags" / "demo.py"
DEMO_WORKING_DIR = REPO / "include" / "demo"
BUNDLE_NAME = "dags-folder"

TARGET_S = 0.5
# register_stack_dags builds deploy, upgrade, rollback, log cleanup, backup and restore
# (the last two because every generated stack has a backup destination).
DAGS_PER_STACK = 6
STACKS_PER_HOST = 6
# [core] executor when the stacks are placed (their tasks name the EdgeExecutor).
PLACED_EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"
WORST_SHOWN = 5
# Airflow settings the fleet estimate reads (section, key), as the bench's Airflow sees them.
AIRFLOW_SETTINGS = (
    ("dag_processor", "parsing_processes"),
    ("dag_processor", "min_file_process_interval"),
    ("dag_processor", "dag_file_processor_timeout"),
    ("core", "parallelism"),
)

# Audit events (https://docs.python.org/3/library/audit_events.html) that mean network,
# database or subprocess work.
FORBIDDEN_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "http.client.connect",
        "urllib.Request",
        "smtplib.connect",
        "ftplib.connect",
        "imaplib.open",
        "poplib.connect",
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "sqlite3.connect",
        "sqlite3.connect/handle",
        "webbrowser.open",
    }
)

# Client libraries whose connections happen in C (no audit event) or that are heavy; a DAG
# file must not be the first to import them.
HEAVY_MODULES = frozenset(
    {
        "docker",
        "grpc",
        "psycopg",
        "psycopg2",
        "redis",
        "boto3",
        "botocore",
        "aiohttp",
        "httpx",
        "requests",
        "kubernetes",
        "paramiko",
    }
)


def log(message: str) -> None:
    print(f"bench-parse: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Fixture: generated stack files, DAG files, Airflow environment
# --------------------------------------------------------------------------------------

TIMEZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
# Service layouts a fleet has: (name, role, serves HTTP); datastores are added per layout.
LAYOUTS: tuple[tuple[str, tuple[tuple[str, str, bool], ...], tuple[str, ...]], ...] = (
    ("api-worker", (("api", "app", True), ("worker", "worker", False)), ("postgres", "redis")),
    ("api", (("api", "app", True),), ("postgres",)),
    (
        "web",
        (("frontend", "frontend", True), ("api", "app", True), ("worker", "worker", False)),
        ("postgres", "redis", "minio"),
    ),
    (
        "jobs",
        (("api", "app", True), ("worker", "worker", False), ("scheduler", "worker", False)),
        ("postgres",),
    ),
    ("gateway-cache", (("gateway", "gateway", True), ("api", "app", True)), ("redis",)),
)
MIGRATIONS = ("alembic", "golang-migrate", "yoyo")


def stack_names(count: int) -> list[str]:
    return [f"bench{i:03d}" for i in range(1, count + 1)]


def host_of(index: int) -> str:
    """The host a generated stack runs on: six stacks per host, as in the fleet estimate."""
    return f"host-{(index - 1) // STACKS_PER_HOST + 1:02d}"


def generate_stack(index: int, name: str, placement: bool) -> dict[str, Any]:
    """Stack file ``index`` (1-based): what a fleet varies, from services to schedules."""
    layout, apps, stores = LAYOUTS[(index - 1) % len(LAYOUTS)]
    project = f"opsflow-{name}"
    base_port = 20000 + index * 10
    registry = f"registry.example.test/{name}"
    pull = index % 2 == 0
    services: list[dict[str, Any]] = []
    for offset, (service, role, http) in enumerate(apps):
        entry: dict[str, Any] = {"name": service, "role": role, "image": f"{registry}/{service}"}
        if not pull:
            entry["build"] = {"context": "app"}
        health: list[dict[str, Any]] = [{"kind": "container", "service": service}]
        if http:
            port = base_port + offset
            entry["ports"] = [f"127.0.0.1:{port}:8080"]
            health = [
                {
                    "kind": "http",
                    "url": f"http://127.0.0.1:{port}/health/ready",
                    "expect_status": 200,
                    "timeout": "5s",
                },
                *health,
                {"kind": "tcp", "port": port},
            ]
        entry["writes_data"] = role in ("app", "worker")
        entry["health"] = health
        services.append(entry)
    sources: dict[str, list[dict[str, Any]]] = {}
    pg_version = 13 + index % 4
    for offset, store in enumerate(stores, start=5):
        conn_id = f"{name}_{store}"
        port = base_port + offset
        image = {
            "postgres": f"registry.example.test/library/postgres:{pg_version}",
            "redis": "registry.example.test/library/redis:7",
            "minio": "registry.example.test/minio/minio",
        }[store]
        role = {"postgres": "database", "redis": "cache", "minio": "object_store"}[store]
        inner = {"postgres": 5432, "redis": 6379, "minio": 9000}[store]
        check: dict[str, Any] = (
            {"kind": "tcp", "port": port}
            if store == "minio"
            else {"kind": store, "conn_id": conn_id}
        )
        services.append(
            {
                "name": store,
                "role": role,
                "image": image,
                "versioned": False,
                "ports": [f"127.0.0.1:{port}:{inner}"],
                "health": [{"kind": "container", "service": store}, check],
            }
        )
        if store == "postgres":
            sources["postgres"] = [
                {
                    "name": "app_db",
                    "conn_id": conn_id,
                    "service": store,
                    "database": "app",
                    "major_version": pg_version,
                }
            ]
        elif store == "redis":
            sources["redis"] = [{"name": "cache", "conn_id": conn_id, "service": store}]
        else:
            sources["buckets"] = [
                {"name": "assets", "conn_id": conn_id, "bucket": f"{name}-assets"}
            ]
    # Most stacks back up nightly at a staggered time; every tenth one every six hours.
    often = index % 10 == 0
    backup_schedule = "0 */6 * * *" if often else f"{index * 7 % 60} {1 + index % 4} * * *"
    # Log cleanup nightly; every eighth stack (a chatty service) hourly.
    cleanup_schedule = "15 * * * *" if index % 8 == 0 else f"{index * 11 % 60} 4 * * *"
    alerts: list[dict[str, Any]] = [{"kind": "webhook", "conn_id": f"{name}_alert_webhook"}]
    if index % 2:
        alerts.append({"kind": "email", "conn_id": "smtp_default", "to": [f"{name}@example.test"]})
    if index % 3 == 0:
        alerts.append({"kind": "slack", "conn_id": f"{name}_slack", "channel": f"#ops-{name}"})
    stack: dict[str, Any] = {
        "name": name,
        "description": f"generated benchmark stack {index} ({layout}) on {host_of(index)}",
        "owner": f"team-{'abcdef'[index % 6]}",
        "timezone": TIMEZONES[index % len(TIMEZONES)],
        "tags": ["bench", layout, host_of(index)],
        "runtime": {
            "kind": "compose",
            "project": project,
            "working_dir": str(DEMO_WORKING_DIR),
            "files": ["docker-compose.yml"],
            "env_file": ".env",
            "images": "pull" if pull else "build",
            "version_variable": "OPSFLOW_VERSION",
        },
    }
    if placement:
        stack["placement"] = {"queue": host_of(index)}
    stack["services"] = services
    if "postgres" in stores:
        tool = MIGRATIONS[index % len(MIGRATIONS)]
        stack["migration"] = {
            "tool": tool,
            "service": "api",
            "command": {
                "alembic": ["alembic", "upgrade", "head"],
                "golang-migrate": ["migrate", "-path", "/migrations", "up"],
                "yoyo": ["yoyo", "apply", "--batch"],
            }[tool],
            "timeout": f"{5 + index % 10}m",
        }
    stack["health_gate"] = {
        "consecutive": 2 + index % 3,
        "interval": "3s",
        "timeout": f"{2 + index % 4}m",
    }
    stack["backup"] = {
        "local_dir": f"/var/backups/opsflow/{name}",
        "retention": {"local_days": 3 + index % 12, "keep_last_verified": 2 + index % 3},
        "max_age": "8h" if often else "26h",
        "sources": sources,
    }
    stack["logs"] = {
        "roots": [
            {
                "volume": f"{project}_applogs",
                "patterns": ["*.log", "*.log.*"],
                "compress_after_days": 1,
                "delete_after_days": 7 + index % 21,
                "max_total_size": f"{100 * (1 + index % 5)}MB",
            }
        ],
        "container_limits": {"required": True, "max_size": "10m", "max_file": 3},
        "keep_images_releases": 2 + index % 4,
    }
    stack["alerts"] = alerts
    stack["schedules"] = {"backup": backup_schedule, "log_cleanup": cleanup_schedule}
    return stack


def import_opsflow() -> None:
    """Make ``opsflow`` importable here (this process only generates and checks stacks)."""
    plugins = str(REPO / "plugins")
    if plugins not in sys.path:
        sys.path.insert(0, plugins)


def placement_supported() -> bool:
    """Whether the stack model takes ``placement: {queue: ...}`` (it is being added)."""
    import_opsflow()
    from opsflow.stack.model import Stack

    return "placement" in Stack.model_fields


def write_fixture(root: Path, names: Sequence[str], placement: bool) -> tuple[Path, Path]:
    """One generated stack file and one thin DAG file per name, each stack file validated."""
    import yaml

    import_opsflow()
    from opsflow.stack.loader import StackFileError, load_stack_file

    stacks_dir = root / "stacks"
    dags_dir = root / "dags"
    stacks_dir.mkdir()
    dags_dir.mkdir()
    dag_template = DEMO_DAG_FILE.read_text(encoding="utf-8")
    for index, name in enumerate(names, start=1):
        path = stacks_dir / f"{name}.yaml"
        stack = generate_stack(index, name, placement)
        path.write_text(yaml.safe_dump(stack, sort_keys=False), encoding="utf-8")
        try:
            load_stack_file(path)
        except StackFileError as exc:
            raise BenchError(f"a generated stack file does not validate: {exc}") from None
        # dags/demo.py names its stack only as "demo"; the copy keeps its exact shape.
        dag_text = dag_template.replace("demo", name)
        if f'register_stack_dags("{name}", globals())' not in dag_text:
            raise BenchError(f"{DEMO_DAG_FILE} no longer has the expected shape")
        (dags_dir / f"{name}.py").write_text(dag_text, encoding="utf-8")
    return stacks_dir, dags_dir


def airflow_env(home: Path, stacks_dir: Path, dags_dir: Path) -> dict[str, str]:
    """The environment scripts/airflow sets, pointed at the temporary home, stacks and DAGs."""
    env = dict(os.environ)
    env.update(
        OPSFLOW_AIRFLOW_HOME=str(home),
        OPSFLOW_STACKS_DIR=str(stacks_dir),
        # Never the caller's database: this benchmark migrates the one it points at.
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
    )
    out = subprocess.run(
        [str(REPO / "scripts" / "airflow"), "--print-env"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    # scripts/airflow always points Airflow at this checkout's dags/; the copies live here.
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_dir)
    return env


def run_checked(
    argv: list[str], env: Mapping[str, str], what: str, timeout: float, *, stderr: bool = False
) -> str:
    """``argv``'s stdout (with its stderr when ``stderr``); BenchError if it fails."""
    try:
        proc = subprocess.run(
            argv,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
        raise BenchError(f"{what} exited {proc.returncode}:\n{tail}")
    return proc.stdout


# --------------------------------------------------------------------------------------
# Airflow's figure
# --------------------------------------------------------------------------------------


def parse_timedelta(text: str) -> float:
    """Seconds of ``str(timedelta)`` as ``dags report -o json`` prints it (``0:00:00.155901``)."""
    match = re.fullmatch(r"(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", text.strip())
    if not match:
        raise BenchError(f"unexpected duration {text!r} in dags report")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def airflow_report(
    airflow_bin: Path, env: Mapping[str, str], timeout: float
) -> dict[str, tuple[float, int]]:
    """File name -> (duration s, DAG count) from ``airflow dags report -o json``."""
    argv = [str(airflow_bin), "dags", "report", "-o", "json"]
    out = run_checked(argv, env, "airflow dags report", timeout)
    rows: list[dict[str, Any]] | None = None
    for line in out.splitlines():
        if line.startswith("["):
            rows = json.loads(line)
    if rows is None:
        raise BenchError(f"no JSON in airflow dags report output:\n{out[-2000:]}")
    return {
        Path(row["file"]).name: (parse_timedelta(str(row["duration"])), int(row["dag_num"]))
        for row in rows
    }


# --------------------------------------------------------------------------------------
# Warm worker: Airflow imported once, one forked child per file and repetition
# --------------------------------------------------------------------------------------


@dataclass
class Guard:
    """Audit hook state of one forked child; only the DAG file's module exec is watched."""

    project_roots: tuple[str, ...]
    active: bool = False
    events: list[str] = field(default_factory=list)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in FORBIDDEN_EVENTS:
            return
        # Environments (Popen, exec, spawn) are left out: they hold secrets.
        shown = tuple(a for a in args if not isinstance(a, Mapping))
        detail = repr(shown)
        if len(detail) > 120:
            detail = detail[:117] + "..."
        self.events.append(f"{event}{detail} at {self.where(sys._getframe(1))}")

    def where(self, frame: FrameType | None) -> str:
        """The deepest frame in this project's code: the line to fix."""
        innermost = frame
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.project_roots):
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return innermost.f_code.co_filename if innermost else "?"


def last_exception(stacktrace: str) -> str:
    """The final exception line of a traceback with its continuation lines, on one line."""
    lines = stacktrace.strip().splitlines()
    start = max((i for i, ln in enumerate(lines) if ln and not ln[0].isspace()), default=0)
    return " ".join(ln.strip() for ln in lines[start:])


def dag_info(dag: Any) -> dict[str, Any]:
    """What the fleet estimate needs of a DAG: its schedule, timezone and task count."""
    schedule = dag.schedule
    return {
        "schedule": schedule if isinstance(schedule, str | None) else repr(schedule),
        "timezone": str(dag.timezone),
        "tasks": len(dag.tasks),
    }


def measure_in_child(dag_file: Path, dags_dir: Path) -> dict[str, Any]:
    """Parse one DAG file as the DAG processor's child does, guarding the module exec."""
    from importlib.machinery import SourceFileLoader

    from airflow.dag_processing.dagbag import BundleDagBag

    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "client"  # as _parse_file_entrypoint sets it
    target = os.path.realpath(dag_file)
    guard = Guard(project_roots=(str(REPO / "plugins"), str(dags_dir), str(REPO / "dags")))
    window: dict[str, Any] = {}
    sys.addaudithook(guard.hook)
    original = SourceFileLoader.exec_module

    def exec_module(self: Any, module: ModuleType) -> None:
        if os.path.realpath(self.path) != target:
            original(self, module)
            return
        before = set(sys.modules)
        guard.active = True
        start = time.perf_counter()
        try:
            original(self, module)
        finally:
            window["import_s"] = time.perf_counter() - start
            guard.active = False
            window["new_modules"] = set(sys.modules) - before

    SourceFileLoader.exec_module = exec_module  # type: ignore[method-assign]
    start = time.perf_counter()
    bag = BundleDagBag(
        dag_folder=str(dag_file),
        bundle_path=dags_dir,
        bundle_name=BUNDLE_NAME,
        load_op_links=False,
    )
    parse_s = time.perf_counter() - start
    SourceFileLoader.exec_module = original  # type: ignore[method-assign]

    errors = [f"{path}: {last_exception(text)}" for path, text in bag.import_errors.items()]
    if "import_s" not in window:
        errors.append("Airflow did not import the file (safe-mode heuristic skipped it?)")
    new_modules: set[str] = window.get("new_modules", set())
    heavy = sorted(m for m in new_modules if m.partition(".")[0] in HEAVY_MODULES)
    return {
        "import_s": window.get("import_s"),
        "parse_s": parse_s,
        "dags": sorted(bag.dag_ids),
        "dag_info": {dag_id: dag_info(dag) for dag_id, dag in bag.dags.items()},
        "errors": errors,
        "events": guard.events,
        "heavy": sorted({m.partition(".")[0] for m in heavy}),
    }


def fork_measure(dag_file: Path, dags_dir: Path) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report through the pipe, never return into the caller
        os.close(read_fd)
        code = 0
        try:
            payload = json.dumps(measure_in_child(dag_file, dags_dir))
        except BaseException as exc:
            payload = json.dumps({"crash": f"{type(exc).__name__}: {exc}"})
            code = 1
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        return {"crash": "the measuring child died without a result"}
    result: dict[str, Any] = json.loads(data)
    return result


def warm_worker(dags_dir: Path, repeats: int, out: Path) -> None:
    # What the DAG processor's manager has imported before it forks a parser child.
    import airflow.dag_processing.processor  # noqa: F401
    from airflow.configuration import conf
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.utils.file import iter_airflow_imports

    files = sorted(dags_dir.glob("*.py"))
    with tempfile.TemporaryDirectory() as empty:  # warm the DagBag machinery itself
        BundleDagBag(dag_folder=empty, bundle_path=Path(empty), bundle_name="warmup")
    results: dict[str, list[dict[str, Any]]] = {f.name: [] for f in files}
    for _ in range(repeats):
        for dag_file in files:  # interleaved, so a burst of load spreads over the files
            # The manager pre-imports the airflow modules a file names (parsing_pre_import_modules).
            for module in iter_airflow_imports(str(dag_file)):
                __import__(module)
            results[dag_file.name].append(fork_measure(dag_file, dags_dir))
    # Heavy modules Airflow already imported cannot be seen as a DAG file's first import.
    preloaded = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    settings = {f"{s}.{k}": conf.getint(s, k) for s, k in AIRFLOW_SETTINGS}
    out.write_text(
        json.dumps({"files": results, "preloaded": preloaded, "settings": settings}),
        encoding="utf-8",
    )


def cold_worker(dag_file: Path, dags_dir: Path, out: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(
        dag_folder=str(dag_file), bundle_path=dags_dir, bundle_name=BUNDLE_NAME, load_op_links=False
    )
    out.write_text(json.dumps({"dags": len(bag.dags), "errors": len(bag.import_errors)}))


# --------------------------------------------------------------------------------------
# Airflow's DAG processor: one full pass over the folder
# --------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z? \[\s*\w+\s*\] (.*)$")


@dataclass
class ProcessorPass:
    """What one ``airflow dag-processor --num-runs 1`` did, from its log, DB and GNU time."""

    process_s: float
    pass_s: float | None
    processes: int | None
    interval_s: int | None
    cpu_s: float | None
    max_rss_mb: float | None
    durations: dict[str, float] = field(default_factory=dict)
    dags: dict[str, int] = field(default_factory=dict)
    serialized: int = 0
    import_errors: dict[str, str] = field(default_factory=dict)


def log_times(text: str, pattern: str) -> list[datetime]:
    """Timestamps of the DAG processor's log lines whose message matches ``pattern``."""
    found: list[datetime] = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match and re.search(pattern, match.group(2)):
            found.append(datetime.fromisoformat(match.group(1)))
    return found


def run_dag_processor(
    airflow_bin: Path, env: Mapping[str, str], root: Path, timeout: float, label: str
) -> ProcessorPass:
    """One pass of the real DAG processor over ``env``'s DAG folder."""
    time_out = root / f"processor-{label}.time"
    argv = [str(airflow_bin), "dag-processor", "--num-runs", "1"]
    if GNU_TIME.exists():
        argv = gnu_time_argv(argv, time_out)
    start = time.perf_counter()
    output = run_checked(argv, env, f"airflow dag-processor ({label})", timeout, stderr=True)
    process_s = time.perf_counter() - start
    (root / f"processor-{label}.log").write_text(output, encoding="utf-8")
    if not log_times(output, r"Exiting dag parsing loop"):
        raise BenchError(
            f"airflow dag-processor ({label}) did not finish its pass:\n{output[-2000:]}"
        )
    # The pass: files queued after the folder scan, to the loop's exit once each was parsed.
    begin = log_times(output, r"new files to the front of the queue") or log_times(
        output, r"Searching for files in"
    )
    end = log_times(output, r"Exiting dag parsing loop")
    processes = re.search(r"Processing files using up to (\d+) processes", output)
    interval = re.search(r"Process each file at most once every (\d+) seconds", output)
    measured = gnu_time_result(time_out) if GNU_TIME.exists() else None
    return ProcessorPass(
        process_s=process_s,
        pass_s=(end[-1] - begin[0]).total_seconds() if begin and end else None,
        processes=int(processes.group(1)) if processes else None,
        interval_s=int(interval.group(1)) if interval else None,
        cpu_s=measured[1] if measured else None,
        max_rss_mb=measured[0] if measured else None,
    )


def read_processor_db(db: Path, result: ProcessorPass) -> None:
    """Per-file durations and DAG counts, serialized DAGs and import errors it recorded."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT relative_fileloc, COUNT(*), MAX(last_parse_duration) FROM dag "
            "WHERE NOT is_stale GROUP BY relative_fileloc"
        ).fetchall()
        result.serialized = conn.execute(
            "SELECT COUNT(DISTINCT dag_id) FROM serialized_dag"
        ).fetchone()[0]
        errors = conn.execute("SELECT filename, stacktrace FROM import_error").fetchall()
    for fileloc, count, duration in rows:
        name = Path(str(fileloc)).name
        result.dags[name] = int(count)
        if duration is not None:
            result.durations[name] = float(duration)
    result.import_errors = {Path(str(f)).name: last_exception(str(t)) for f, t in errors}


# --------------------------------------------------------------------------------------
# Results and their distribution
# --------------------------------------------------------------------------------------


@dataclass
class FileResult:
    name: str
    dags: list[str] = field(default_factory=list)
    dag_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    import_s: list[float] = field(default_factory=list)
    parse_s: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)
    airflow_s: float | None = None
    airflow_dags: int | None = None
    processor_s: float | None = None
    processor_dags: int | None = None
    problems: list[str] = field(default_factory=list)

    def verdict(self) -> bool:
        return not self.problems

    def add_problem(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def judge(result: FileResult, target: float, processor_ran: bool) -> None:
    warm = median(result.parse_s)
    if not result.dags:
        result.add_problem("no DAG built")
    elif len(result.dags) != DAGS_PER_STACK:
        result.add_problem(f"warm parse built {len(result.dags)} DAGs, expected {DAGS_PER_STACK}")
    if warm is None or warm >= target:
        result.add_problem(f"warm parse median {fmt(warm)} s >= {target} s")
    if result.airflow_s is None:
        result.add_problem("missing from airflow dags report")
    elif result.airflow_s >= target:
        result.add_problem(f"airflow dags report {fmt(result.airflow_s)} s >= {target} s")
    if result.airflow_dags is not None and result.airflow_dags != len(result.dags):
        result.add_problem(
            f"airflow dags report found {result.airflow_dags} DAGs, warm parse {len(result.dags)}"
        )
    if processor_ran and result.processor_dags != len(result.dags):
        result.add_problem(
            f"DAG processor stored {result.processor_dags or 0} DAGs, warm parse {len(result.dags)}"
        )


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    footer: int = 0,
    indent: str = "",
    left: tuple[int, ...] = (0,),
) -> None:
    """Columns padded to width, those in ``left`` left-aligned; a rule above the last
    ``footer`` rows."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return (
            indent
            + "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )

    rule = line(["-" * w for w in widths])
    print(line(headers))
    print(rule)
    for index, row in enumerate(rows):
        if footer and index == len(rows) - footer:
            print(rule)
        print(line(row))


def file_row(r: FileResult, target: float) -> tuple[str, ...]:
    return (
        r.name,
        str(len(r.dags)),
        fmt(median(r.import_s)),
        fmt(median(r.parse_s)),
        fmt(median(r.cold_s)),
        fmt(r.airflow_s),
        fmt(r.processor_s),
        f"{target:g}",
        "PASS" if r.verdict() else "FAIL",
    )


FILE_HEADERS = (
    "file",
    "dags",
    "warm import s",
    "warm parse s",
    "cold s",
    "airflow s",
    "processor s",
    "target s",
    "result",
)


def print_distribution(results: list[FileResult], target: float) -> None:
    metrics: list[tuple[str, Callable[[FileResult], float | None]]] = [
        ("warm import (median per file)", lambda r: median(r.import_s)),
        ("warm parse (median per file)", lambda r: median(r.parse_s)),
        ("cold interpreter (sample)", lambda r: median(r.cold_s)),
        ("airflow dags report", lambda r: r.airflow_s),
        ("DAG processor last_parse_duration", lambda r: r.processor_s),
    ]
    rows: list[tuple[str, ...]] = []
    for label, pick in metrics:
        values = [v for v in (pick(r) for r in results) if v is not None]
        if not values:
            rows.append((label, "0", "-", "-", "-", "-", "-", "-"))
            continue
        rows.append(
            (
                label,
                str(len(values)),
                fmt(min(values)),
                fmt(statistics.median(values)),
                fmt(percentile(values, 0.95)),
                fmt(max(values)),
                fmt(statistics.fmean(values)),
                f"{sum(values):.1f}",
            )
        )
    print(f"per-file parse time over {len(results)} files (seconds; p95 = nearest rank):")
    table(("figure", "files", "min", "median", "p95", "max", "mean", "sum"), rows)
    print()
    worst = sorted(results, key=lambda r: median(r.parse_s) or math.inf, reverse=True)
    print(f"worst {min(WORST_SHOWN, len(results))} files by warm parse median:")
    table(FILE_HEADERS, [file_row(r, target) for r in worst[:WORST_SHOWN]])


def print_per_file(results: list[FileResult], target: float) -> None:
    def total(pick: Callable[[FileResult], float | None]) -> str:
        values = [pick(r) for r in results]
        return "-" if any(v is None for v in values) else fmt(sum(v for v in values if v))

    failed = sum(not r.verdict() for r in results)
    rows = [file_row(r, target) for r in results]
    rows.append(
        (
            "TOTAL",
            str(sum(len(r.dags) for r in results)),
            total(lambda r: median(r.import_s)),
            total(lambda r: median(r.parse_s)),
            total(lambda r: median(r.cold_s)),
            total(lambda r: r.airflow_s),
            total(lambda r: r.processor_s),
            "",
            f"{len(results) - failed}/{len(results)} PASS",
        )
    )
    table(FILE_HEADERS, rows, footer=1)


# --------------------------------------------------------------------------------------
# Schedules and the fleet estimate
# --------------------------------------------------------------------------------------

# A Monday; no daylight-saving change in the week after it in the generated timezones.
WEEK_START = datetime(2026, 1, 5)


def fire_minutes(schedule: str, timezone: str) -> list[int] | None:
    """UTC minute of the day of each run ``schedule`` starts in one week; None: not a cron."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    if schedule == "@once" or not croniter.is_valid(schedule):
        return None
    start = WEEK_START.replace(tzinfo=ZoneInfo(timezone))
    end = start + timedelta(days=7)
    runs = croniter(schedule, start - timedelta(microseconds=1))
    minutes: list[int] = []
    while (at := runs.get_next(datetime)) < end:
        utc = at.astimezone(UTC)
        minutes.append(utc.hour * 60 + utc.minute)
    return minutes


@dataclass
class Kind:
    """The DAGs of one kind (``<stack>__backup``...) over the measured stacks."""

    dags: int = 0
    scheduled: int = 0
    runs_per_day: float = 0.0
    tasks_per_day: float = 0.0
    tasks: list[int] = field(default_factory=list)
    schedules: Counter[str] = field(default_factory=Counter)


def schedule_load(results: list[FileResult]) -> tuple[dict[str, Kind], Counter[int], list[str]]:
    """Per DAG kind: runs and tasks per day; run starts per UTC minute of a day; non-crons."""
    kinds: dict[str, Kind] = {}
    per_minute: Counter[int] = Counter()
    unknown: list[str] = []
    for result in results:
        for dag_id, info in sorted(result.dag_info.items()):
            kind = kinds.setdefault(dag_id.partition("__")[2] or dag_id, Kind())
            kind.dags += 1
            kind.tasks.append(int(info["tasks"]))
            schedule = info["schedule"]
            if schedule is None:
                continue
            minutes = fire_minutes(str(schedule), str(info["timezone"]))
            if minutes is None:
                unknown.append(f"{dag_id}: {schedule}")
                continue
            kind.scheduled += 1
            kind.schedules[str(schedule)] += 1
            kind.runs_per_day += len(minutes) / 7
            kind.tasks_per_day += len(minutes) / 7 * int(info["tasks"])
            for minute in minutes:
                per_minute[minute] += 1
    return kinds, per_minute, unknown


def print_fleet_estimate(
    results: list[FileResult],
    processor: ProcessorPass | None,
    baseline: ProcessorPass | None,
    settings: Mapping[str, int],
    hosts: int,
    per_host: int,
) -> None:
    """Scale the measured figures to ``hosts`` x ``per_host`` stack files, arithmetic shown."""
    measured = len(results)
    fleet = hosts * per_host
    scale = fleet / measured
    dags_measured = sum(len(r.dags) for r in results)
    dags_per_file = dags_measured / measured
    fleet_dags = fleet * dags_per_file
    cores = os.cpu_count() or 1
    processes = settings["dag_processor.parsing_processes"]
    interval = settings["dag_processor.min_file_process_interval"]
    timeout = settings["dag_processor.dag_file_processor_timeout"]
    parallelism = settings["core.parallelism"]
    print(
        f"fleet estimate: {hosts} hosts x {per_host} stacks = {fleet} stack files x "
        f"{dags_per_file:.2f} DAGs/file = {fleet_dags:.0f} DAGs (measured here: {measured} "
        f"files, {dags_measured} DAGs; the generated mix is taken as the fleet's, x{scale:g})"
    )
    limits: list[tuple[str, float]] = []

    # --- DAG processor
    warm = [v for v in (median(r.parse_s) for r in results) if v is not None]
    walls = [r.processor_s for r in results if r.processor_s is not None]
    wall_source = "its last_parse_duration"
    if not walls:
        walls, wall_source = warm, "warm parse median"
    parsers = min(processes, cores)
    print("  DAG processor, one full pass over the fleet's files:")
    # CPU: what the process tree used per file beyond its fixed start-up cost.
    warm_cpu = fleet * statistics.fmean(warm)
    cpu_pass = warm_cpu
    cpu_line = (
        f"{fleet} files x {statistics.fmean(warm):.3f} s warm parse (mean) = {warm_cpu:.1f} CPU-s"
    )
    if processor and baseline and processor.cpu_s is not None and baseline.cpu_s is not None:
        cpu_file = max(processor.cpu_s - baseline.cpu_s, 0.0) / measured
        cpu_pass = max(fleet * cpu_file, warm_cpu)
        print(
            f"    CPU per file = ({processor.cpu_s:.1f} CPU-s of its process tree for {measured} "
            f"files - {baseline.cpu_s:.1f} for none) / {measured} = {cpu_file:.3f} CPU-s "
            "(fork, parse, serialization, DB writes)"
        )
        print(
            f"    CPU per pass = {fleet} files x {cpu_file:.3f} = {fleet * cpu_file:.1f} CPU-s "
            f"(the parse alone: {cpu_line})"
        )
    else:
        print(f"    CPU per pass = {cpu_line} (no GNU time: process tree CPU not measured)")
    passes: list[tuple[str, float]] = [
        (
            f"CPU-bound: {cpu_pass:.1f} CPU-s / min(parsing_processes {processes}, cores "
            f"{cores}) = {parsers}",
            cpu_pass / parsers,
        ),
        (
            f"slots: {fleet} files x {statistics.fmean(walls):.3f} s ({wall_source}, mean) / "
            f"{processes} processes",
            fleet * statistics.fmean(walls) / processes,
        ),
    ]
    if processor and processor.pass_s is not None:
        passes.append(
            (
                f"measured: {processor.pass_s:.1f} s for {measured} files x{scale:g}",
                processor.pass_s * scale,
            )
        )
    for label, seconds in passes:
        print(f"    pass, {label} = {seconds:.1f} s")
    fleet_pass = max(seconds for _, seconds in passes)
    refresh = max(interval, fleet_pass)
    print(
        f"    vs min_file_process_interval {interval} s: the longest pass, {fleet_pass:.1f} s "
        f"/ {interval} = {fleet_pass / interval:.2f} -> each file re-parsed every "
        f"{refresh:.0f} s; {cpu_pass / refresh:.2f} of {cores} cores busy parsing all the time"
    )
    limits.append(("DAG-processor pass vs min_file_process_interval", fleet_pass / interval))
    slowest = max(walls)
    print(
        f"    vs dag_file_processor_timeout {timeout} s: slowest file {slowest:.3f} s = "
        f"{slowest / timeout:.3f} of it (per file: does not grow with the file count)"
    )
    limits.append(("dag_file_processor_timeout (slowest file)", slowest / timeout))
    print(
        f"    metadata DB from parsing: {fleet_dags:.0f} DAG rows rewritten per pass / "
        f"{refresh:.0f} s = {fleet_dags / refresh:.1f} row updates/s (plus serialized DAGs "
        "when a file changes)"
    )

    # --- schedules
    kinds, per_minute, unknown = schedule_load(results)
    print(f"  schedules (from the {measured} generated stacks' DAGs; fleet = x{scale:g}):")
    rows: list[tuple[str, ...]] = []
    for name, kind in sorted(kinds.items()):
        shown = ", ".join(f"{s!r} x{n}" for s, n in kind.schedules.most_common(2))
        more = len(kind.schedules) - 2
        rows.append(
            (
                name,
                str(kind.dags),
                str(kind.scheduled),
                f"{statistics.fmean(kind.tasks):.1f}",
                f"{kind.runs_per_day:.1f}",
                f"{kind.tasks_per_day:.0f}",
                f"{kind.runs_per_day * scale:.0f}",
                f"{kind.tasks_per_day * scale:.0f}",
                (shown + (f", +{more} more" if more > 0 else "")) or "manual",
            )
        )
    runs = sum(k.runs_per_day for k in kinds.values())
    tasks = sum(k.tasks_per_day for k in kinds.values())
    rows.append(
        (
            "total",
            str(sum(k.dags for k in kinds.values())),
            str(sum(k.scheduled for k in kinds.values())),
            "",
            f"{runs:.1f}",
            f"{tasks:.0f}",
            f"{runs * scale:.0f}",
            f"{tasks * scale:.0f}",
            "",
        )
    )
    headers: tuple[str, ...] = ("DAG kind", "DAGs", "scheduled", "tasks/run", "runs/day")
    headers += ("tasks/day", "fleet runs/day", "fleet tasks/day", "schedules")
    table(headers, rows, footer=1, indent="    ", left=(0, len(headers) - 1))
    if unknown:
        print(f"    not counted (not a cron): {', '.join(unknown[:5])}")
    fleet_runs = runs * scale
    fleet_tasks = tasks * scale
    print(
        f"    fleet: {fleet_runs:.0f} scheduled runs/day = {fleet_runs / 1440:.2f}/min; "
        f"{fleet_tasks:.0f} task instances/day = {fleet_tasks / 86400:.3f}/s on average"
    )
    if per_minute:
        minute, starts = per_minute.most_common(1)[0]
        peak = starts / 7 * scale
        print(
            f"    busiest UTC minute {minute // 60:02d}:{minute % 60:02d}: {starts / 7:.1f} run "
            f"starts/day here -> x{scale:g} = {peak:.0f} runs starting at once vs [core] "
            f"parallelism {parallelism} (a lower bound on the slots they need: each holds "
            "one while it runs, and runs last longer than a minute)"
        )
        limits.append(
            ("executor slots ([core] parallelism) at the busiest minute", peak / parallelism)
        )

    # --- the first limit
    print("  limits (load / capacity; 1.00 = reached):")
    for name, ratio in sorted(limits, key=lambda item: -item[1]):
        print(f"    {ratio:8.2f}  {name}")
    print(
        "    not measured here: the scheduler loop and the metadata DB under these rates "
        "(the rates above are what they must sustain)"
    )
    name, ratio = max(limits, key=lambda item: item[1])
    if ratio >= 1:
        print(f"  first limit: {name} ({ratio:.2f}x)")
    else:
        print(f"  first limit: none reached; the nearest is {name} ({ratio:.2f}x)")


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def collect_warm(
    results: dict[str, FileResult], python: Path, env: Mapping[str, str], root: Path, repeats: int
) -> tuple[list[str], dict[str, int]]:
    """Fill in the warm figures; the heavy modules the guard cannot see, Airflow's settings."""
    out = root / "warm.json"
    dags_dir = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    argv = [str(python), str(Path(__file__).resolve()), "--worker", "warm"]
    argv += ["--dags-dir", str(dags_dir), "--repeats", str(repeats), "--out", str(out)]
    run_checked(argv, env, "warm worker", 120 + 10 * repeats * len(results))
    data = json.loads(out.read_text(encoding="utf-8"))
    samples: dict[str, list[dict[str, Any]]] = data["files"]
    for name, runs in samples.items():
        result = results[name]
        for run in runs:
            if "crash" in run:
                result.add_problem(f"warm child crashed: {run['crash']}")
                continue
            if run["import_s"] is not None:
                result.import_s.append(run["import_s"])
            result.parse_s.append(run["parse_s"])
            result.dags = run["dags"]
            result.dag_info = run["dag_info"]
            for problem in (
                [f"import error: {e}" for e in run["errors"]]
                + [f"forbidden at import: {e}" for e in run["events"]]
                + [f"heavy module imported: {m}" for m in run["heavy"]]
            ):
                result.add_problem(problem)
    preloaded: list[str] = data["preloaded"]
    settings: dict[str, int] = data["settings"]
    return preloaded, settings


def cold_sample(names: Sequence[str], size: int) -> list[str]:
    """``size`` names spread evenly over ``names`` (all of them when ``size`` is 0)."""
    if size <= 0 or size >= len(names):
        return list(names)
    return [names[i * len(names) // size] for i in range(size)]


def collect_cold(
    results: Iterable[FileResult], python: Path, env: Mapping[str, str], root: Path, repeats: int
) -> None:
    dags_dir = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    out = root / "cold.json"
    for _ in range(repeats):
        for result in results:
            argv = [str(python), str(Path(__file__).resolve()), "--worker", "cold"]
            argv += ["--file", str(dags_dir / result.name), "--dags-dir", str(dags_dir)]
            argv += ["--out", str(out)]
            start = time.perf_counter()
            run_checked(argv, env, f"cold parse of {result.name}", 120)
            result.cold_s.append(time.perf_counter() - start)
            cold = json.loads(out.read_text(encoding="utf-8"))
            if cold["errors"] or not cold["dags"]:
                result.add_problem(
                    f"cold parse: {cold['dags']} DAGs, {cold['errors']} import errors"
                )


def collect_processor(
    results: dict[str, FileResult], airflow_bin: Path, env: Mapping[str, str], root: Path
) -> tuple[ProcessorPass, ProcessorPass]:
    """A pass over an empty folder (the fixed cost), then the real pass over the files."""
    empty = root / "empty-dags"
    empty.mkdir()
    baseline = run_dag_processor(
        airflow_bin, {**env, "AIRFLOW__CORE__DAGS_FOLDER": str(empty)}, root, 300, "empty"
    )
    timeout = 300 + 10 * len(results)
    processor = run_dag_processor(airflow_bin, env, root, timeout, "files")
    read_processor_db(Path(env["AIRFLOW_HOME"]) / "airflow.db", processor)
    for name, result in results.items():
        result.processor_s = processor.durations.get(name)
        result.processor_dags = processor.dags.get(name)
        if name in processor.import_errors:
            result.add_problem(f"DAG processor import error: {processor.import_errors[name]}")
    return baseline, processor


def print_processor(processor: ProcessorPass, baseline: ProcessorPass, files: int) -> None:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    durations = list(processor.durations.values())
    print(
        f"DAG processor (`airflow dag-processor --num-runs 1`, own AIRFLOW_HOME, SQLite): "
        f"{processor.processes} parsing processes, min_file_process_interval "
        f"{processor.interval_s} s"
    )
    print(
        f"  one full pass over {files} files: {seconds(processor.pass_s)} (log: files queued "
        f"-> loop exit); whole command {seconds(processor.process_s)}, of which starting "
        f"it is about {seconds(baseline.process_s)} (same command over an empty folder)"
    )
    cpu = "-" if processor.cpu_s is None else f"{processor.cpu_s:.1f}"
    fixed = "-" if baseline.cpu_s is None else f"{baseline.cpu_s:.1f}"
    rss = "-" if processor.max_rss_mb is None else f"{processor.max_rss_mb:.0f}"
    print(
        f"  CPU of its process tree: {cpu} s ({fixed} s over the empty folder); "
        f"largest process {rss} MB RSS"
    )
    print(
        f"  recorded: {len(durations)} files with a last_parse_duration (sum "
        f"{sum(durations):.1f} s), {sum(processor.dags.values())} active DAGs, "
        f"{processor.serialized} serialized DAGs, {len(processor.import_errors)} import errors"
    )


def print_notes(
    results: list[FileResult],
    repeats: int,
    cold: int,
    cold_repeats: int,
    preloaded: list[str],
    placement: bool,
) -> None:
    dags = sum(len(r.dags) for r in results)
    expected = DAGS_PER_STACK * len(results)
    print(
        f"DAGs: {dags} from {len(results)} DAG files (expected {expected}: {DAGS_PER_STACK} "
        f"per stack); placement: "
        + (
            f"queue host-NN per stack ([core] executor {PLACED_EXECUTORS})"
            if placement
            else "not generated (the stack model has no placement field)"
        )
    )
    print(
        f"warm: median over {repeats} forked children per file; cold: {cold_repeats} fresh "
        f"interpreter(s) on a sample of {cold} of {len(results)} files; airflow = one "
        "`airflow dags report` run; processor = one DAG-processor pass."
    )
    print(
        "warm import = exec of the DAG file's module in Airflow's importer (opsflow imported "
        "fresh, as in a DAG-processor child); warm parse = the whole BundleDagBag for the file."
    )
    print(
        "cold = wall time of a fresh interpreter (Airflow import included); not judged: the "
        "DAG processor forks parsers from a process that has Airflow imported."
    )
    print(
        "airflow = `dags report` parses all files in one process: the first file read also "
        "pays the opsflow import. processor = its last_parse_duration (child start to result, "
        "as the manager sees it); not judged against the target."
    )
    print(
        "guard window = the DAG file's module exec only (DagBag setup, validation and bagging "
        f"excluded); watched events: {', '.join(sorted(FORBIDDEN_EVENTS))}; first imports of: "
        f"{', '.join(sorted(HEAVY_MODULES - set(preloaded)))} (not observable, Airflow "
        f"imports them first: {', '.join(preloaded) or 'none'})."
    )


def run_benchmark(args: argparse.Namespace) -> int:
    python = Path(sys.executable)
    airflow_bin = python.with_name("airflow")
    if not airflow_bin.exists():
        raise BenchError(f"{airflow_bin} not found; run `make setup`")
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="opsflow-bench-parse-"))
    try:
        names = stack_names(args.stacks)
        placement = placement_supported()
        stacks_dir, dags_dir = write_fixture(root, names, placement)
        env = airflow_env(root / "airflow-home", stacks_dir, dags_dir)
        if placement:
            # Placed tasks name the EdgeExecutor: a placed fleet's Airflow lists it, as
            # scripts/edge-worker does; without it every DAG is an import error.
            env["AIRFLOW__CORE__EXECUTOR"] = PLACED_EXECUTORS
        if args.parsing_processes:
            env["AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES"] = str(args.parsing_processes)
        log(f"{len(names)} generated stack files and DAG files in {root}")
        log(machine_line())

        phase = time.perf_counter()
        run_checked([str(airflow_bin), "db", "migrate"], env, "airflow db migrate", 300)
        log(f"airflow db migrate (SQLite, not counted) in {time.perf_counter() - phase:.1f} s")

        results = {f"{name}.py": FileResult(f"{name}.py") for name in names}
        phase = time.perf_counter()
        report = airflow_report(airflow_bin, env, 180 + 5 * len(names))
        for file_name, (duration, dag_num) in report.items():
            if file_name in results:
                results[file_name].airflow_s = duration
                results[file_name].airflow_dags = dag_num
        log(f"airflow dags report in {time.perf_counter() - phase:.1f} s")

        phase = time.perf_counter()
        preloaded, settings = collect_warm(results, python, env, root, args.repeats)
        took = time.perf_counter() - phase
        log(f"warm: {args.repeats} x {len(names)} forked parses in {took:.1f} s")

        sample = [results[f"{n}.py"] for n in cold_sample(names, args.cold_sample)]
        phase = time.perf_counter()
        collect_cold(sample, python, env, root, args.cold_repeats)
        took = time.perf_counter() - phase
        log(f"cold: {args.cold_repeats} x {len(sample)} interpreters in {took:.1f} s")

        phase = time.perf_counter()
        baseline, processor = collect_processor(results, airflow_bin, env, root)
        log(f"DAG processor: empty pass and full pass in {time.perf_counter() - phase:.1f} s")

        ordered = [results[f"{name}.py"] for name in names]
        for result in ordered:
            judge(result, args.target, processor_ran=True)
        print(machine_line())
        print()
        if args.per_file:
            print_per_file(ordered, args.target)
            print()
        print_distribution(ordered, args.target)
        print()
        print_notes(ordered, args.repeats, len(sample), args.cold_repeats, preloaded, placement)
        print()
        print_processor(processor, baseline, len(ordered))
        print()
        print_fleet_estimate(
            ordered, processor, baseline, settings, args.fleet_hosts, args.fleet_stacks_per_host
        )
        print()
        failed = [r for r in ordered if not r.verdict()]
        for r in failed:
            for problem in r.problems:
                print(f"FAIL {r.name}: {problem}")
        verdict = "PASS" if not failed else f"FAIL ({len(failed)} file(s))"
        print(
            f"bench-parse: {verdict}: target {args.target} s per file, {DAGS_PER_STACK} DAGs "
            "per stack, no network/DB/subprocess work."
        )
        sys.stdout.flush()
        log(f"finished in {time.perf_counter() - started:.0f} s")
        return 0 if not failed else 1
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stacks", type=int, default=100, help="generated stacks (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="warm parses per file (default 3)")
    parser.add_argument(
        "--cold-sample",
        type=int,
        default=10,
        help="files measured cold, spread over the folder (default 10; 0 = every file)",
    )
    parser.add_argument(
        "--cold-repeats",
        type=int,
        default=1,
        help="fresh interpreters per sampled file (default 1: each costs ~4 s of Airflow import)",
    )
    parser.add_argument(
        "--parsing-processes",
        type=int,
        help="[dag_processor] parsing_processes for the DAG processor (default: Airflow's)",
    )
    parser.add_argument(
        "--fleet-hosts", type=int, default=100, help="hosts in the fleet estimate (default 100)"
    )
    parser.add_argument(
        "--fleet-stacks-per-host",
        type=int,
        default=STACKS_PER_HOST,
        help=f"stacks per host in the fleet estimate (default {STACKS_PER_HOST})",
    )
    parser.add_argument(
        "--target", type=float, default=TARGET_S, help=f"seconds per file (default {TARGET_S})"
    )
    parser.add_argument("--per-file", action="store_true", help="also print every file's row")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--worker", choices=["warm", "cold"], help=argparse.SUPPRESS)
    parser.add_argument("--dags-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "warm":
        warm_worker(args.dags_dir, args.repeats, args.out)
        return 0
    if args.worker == "cold":
        cold_worker(args.file, args.dags_dir, args.out)
        return 0
    if min(args.stacks, args.repeats, args.fleet_hosts, args.fleet_stacks_per_host) < 1:
        parser.error("--stacks, --repeats and the fleet sizes must be >= 1")
    if args.cold_sample < 0 or args.cold_repeats < 0 or (args.parsing_processes or 1) < 1:
        parser.error("--cold-sample and --cold-repeats must be >= 0, --parsing-processes >= 1")
    try:
        return run_benchmark(args)
    except (BenchError, OSError, subprocess.CalledProcessError, sqlite3.Error) as exc:
        log(f"could not run: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
