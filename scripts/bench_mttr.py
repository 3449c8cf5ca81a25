#!/usr/bin/env python
"""Recovery benchmark: how soon a bad release is off the stack and the previous one healthy.

The demo stack (include/demo) runs as its own Compose project (``opsflow-benchmttr``,
images ``opsflow-benchmttr/...``) on free ports, from a temp dir holding a copy of its
compose file and ``.env``, its stack file (the demo's own, moved to those ports, names and
dirs, **with the demo's own health gate**), the state dir, the backups and the Airflow
home. Airflow runs as ``airflow standalone`` (scheduler, LocalExecutor, triggerer, DAG
processor, API server; SQLite) on a free port: the scheduler and executor decide when each
task starts, as in any deployment, not ``dags test``. Setup, outside any clock: build the
images of every release used (so the upgrade's own build step is a cache hit, as for a
release built by CI), deploy 1.0.0 then 1.1.0 through ``demo__deploy``.

Then, for each case, from 1.1.0 running healthy (it is put back if a case left anything
else), ``demo__upgrade`` is triggered through the REST API, as the UI's trigger form does:

- (a) ``1.4.0-crash-at-start``: its api exits at start, a crash loop;
- (b) ``1.2.0-never-ready``: live, ``/health/ready`` answers 503 for ever;
- (c) ``1.3.0-broken-migration``: its migration fails half-way.

From the trigger on, the bench polls the stack from outside every 0.5 s (``GET /version``
and ``GET /health/ready`` on the api port). Per case it reports, in seconds:

- **trigger -> rollback cmd**: trigger to the first command of the ``rollback`` task (its
  first log line starting with ``$ ``): detection and scheduling;
- **verdict -> rollback cmd**, the scheduling gap: the verdict is the end of the gate, the
  ``decided at <time>`` the ``verify`` task logs with the gate's failure (a gate that
  deferred: the time the triggerer took to hand the event back to the task counts in the
  gap), else the time of its log line saying the gate failed; for (c), where the gate never
  runs, the end of the failed ``migrate`` task (a task's end date only counts when it ran:
  a step marked ``upstream_failed`` has one too);
- **start end -> verdict**: from the end of the ``start`` task (the new release is up) to
  the verdict: what the gate needed to decide;
- **rollback cmd -> healthy**: to the first poll after the rollback began with ``/version``
  = 1.1.0 and ``/health/ready`` 200;
- **start end -> healthy**, **trigger -> healthy**; the run's end state and time, its
  failed task, its ledger outcome, and the alerts it sent (JSON bodies of that dag run
  received by the bench's webhook receiver; emails to its SMTP sink are shown beside).

The floor: the never-ready release is brought up by hand (outside the clock), then a plain
``docker compose up -d --no-build --pull never --remove-orphans`` of 1.1.0 is timed until
the same poll says healthy: what putting the old release back costs with nothing to decide.

Targets (issue 17): the crash-looping release healthy again <= 20 s after its ``start``
step ended; the never-ready release healthy again <= the stack file's gate timeout + 15 s
after its ``start`` step ended; a scheduling gap <= 5 s in every case; every run ends
``failed`` with exactly one alert. Exit status 1 when a target is missed, 2 when the
benchmark could not run. Everything it started is removed at the end, also on Ctrl-C:
the Airflow processes of its home, the Compose project with its volumes, the temp dir
(its images are kept, so a second run builds nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import email
import fcntl
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchlib import (
    BenchError,
    Check,
    finish,
    free_port,
    ignore_signals,
    machine_line,
    print_beside,
    raise_on_signals,
    run,
    write_demo_compose_copy,
)
from standalone import Standalone, end_processes, open_local, processes, without_settings

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "include" / "demo"
DEMO_STACK_FILE = REPO / "include" / "stacks" / "demo.yaml"
PROJECT = "opsflow-benchmttr"
# Image names of the benchmark's stack (the compose file's DEMO_IMAGE_PREFIX): its builds and
# retags never touch the images of a running `make demo` (opsflow-demo) or a test's.
IMAGE_PREFIX = "opsflow-benchmttr"
STACK = "demo"
FIRST = "1.0.0"
OLD = "1.1.0"
FLOOR_FROM = "1.2.0-never-ready"
TMP_PREFIX = "opsflow-bench-mttr-"
LOCK_FILE = Path(tempfile.gettempdir()) / "opsflow-bench-mttr.lock"
UPGRADE_DAG = f"{STACK}__upgrade"
DEPLOY_DAG = f"{STACK}__deploy"

POLL_INTERVAL = 0.5
POLL_TIMEOUT = 1.0
CRASH_LIMIT_S = 20.0
NEVER_READY_MARGIN_S = 15.0
GAP_LIMIT_S = 5.0
RUN_TIMEOUT = 1200.0
DEPLOY_TIMEOUT = 1800.0
BUILD_TIMEOUT = 1800.0
HEALTHY_WAIT = 90.0  # after the run ended, for a rollback still turning healthy
ALERT_WAIT = 15.0
WATCHDOG_EVERY = 15.0
WATCHDOG_LIMIT = 90.0  # a component unhealthy this long means the bench cannot go on
UPGRADE_STEPS = ("lock", "preflight", "snapshot", "build", "pull", "pre_upgrade_backup",
                 "migrate", "start", "verify", "rollback", "rollback_verify", "record",
                 "unlock")  # fmt: skip


@dataclass(frozen=True)
class Case:
    key: str
    version: str
    what: str

    @property
    def label(self) -> str:
        return f"({self.key}) {self.version}"


CASES = {
    "a": Case("a", "1.4.0-crash-at-start", "api exits at start (crash loop)"),
    "b": Case("b", "1.2.0-never-ready", "live, never ready"),
    "c": Case("c", "1.3.0-broken-migration", "migration fails half-way"),
}


# ====================================================================== task logs (pure)


@dataclass(frozen=True)
class LogLine:
    """One JSON line of an Airflow 3 task log: its time (epoch seconds), event, raw text."""

    at: float
    event: str
    raw: str


DECIDED_AT = re.compile(
    r"decided at (\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
)
GATE_FAILED = re.compile(r"health gate failed", re.IGNORECASE)
GATE_TIMEOUT_LINE = re.compile(r"Deferring health gate: .*timeout ([\d.]+)s")


def parse_time(value: str) -> float:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as epoch seconds."""
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_log(text: str) -> list[LogLine]:
    """The JSON lines of a task log that carry a ``timestamp``; other lines are skipped."""
    found = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            data = json.loads(raw)
            at = parse_time(str(data["timestamp"]))
        except (ValueError, KeyError, TypeError):
            continue
        found.append(LogLine(at, str(data.get("event", "")), raw))
    return found


def first_command(lines: list[LogLine]) -> LogLine | None:
    """The first command a step ran: its first line starting with ``$ ``."""
    return next((line for line in sorted(lines, key=_at) if line.event.startswith("$ ")), None)


def gate_failed_line(lines: list[LogLine]) -> LogLine | None:
    """The first line saying the health gate failed (the task's exception, or a log line)."""
    return next((line for line in sorted(lines, key=_at) if GATE_FAILED.search(line.raw)), None)


def decided_at(lines: list[LogLine]) -> float | None:
    """The earliest ``decided at <iso time>`` any line states, as epoch seconds."""
    found = [parse_time(m.group(1)) for line in lines for m in DECIDED_AT.finditer(line.raw)]
    return min(found) if found else None


def gate_timeout_in_effect(lines: list[LogLine]) -> float | None:
    """The timeout the gate deferred with, when its log says it."""
    for line in lines:
        match = GATE_TIMEOUT_LINE.search(line.event)
        if match:
            return float(match.group(1))
    return None


def _at(line: LogLine) -> float:
    return line.at


def read_task_log(directory: Path) -> tuple[list[LogLine], list[LogLine]]:
    """(task lines, triggerer lines) of every attempt of one task: ``attempt=N.log`` is the
    task's own, ``attempt=N.log.trigger.<id>.log`` what the triggerer wrote for it."""
    task: list[LogLine] = []
    trigger: list[LogLine] = []
    for path in sorted(directory.glob("attempt=*.log*")) if directory.is_dir() else []:
        lines = parse_log(path.read_text(errors="replace"))
        (trigger if ".trigger." in path.name else task).extend(lines)
    return sorted(task, key=_at), sorted(trigger, key=_at)


# ====================================================================== small helpers


@contextlib.contextmanager
def single_run() -> Iterator[None]:
    """One run at a time: they share the Compose project and image names."""
    with LOCK_FILE.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another bench_mttr run holds {LOCK_FILE}") from None
        yield


def sweep_stale(parent: Path) -> None:
    """What runs killed too hard to clean up left (the lock says none is running): Airflow
    processes of their homes, their temp dirs. Their Compose project goes with the first
    ``down`` of this run."""
    prefix = str(parent / TMP_PREFIX)
    left = processes(lambda mark: mark.startswith(prefix))
    if left:
        print(f"ending {len(left)} Airflow processes an interrupted run left", flush=True)
        stuck = end_processes(lambda: processes(lambda mark: mark.startswith(prefix)))
        if stuck:
            raise BenchError(f"processes of an interrupted run survive SIGKILL: {stuck}")
    for root in parent.glob(f"{TMP_PREFIX}*"):
        print(f"removing leftovers of an interrupted run in {root}", flush=True)
        shutil.rmtree(root, ignore_errors=True)


def demo_passwords() -> dict[str, str]:
    env_file = DEMO_DIR / ".env"
    if not env_file.exists():
        run([str(DEMO_DIR / "make-env.sh")], timeout=60)
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    if not values.get("POSTGRES_PASSWORD") or not values.get("REDIS_PASSWORD"):
        raise BenchError(f"{env_file} lacks POSTGRES_PASSWORD or REDIS_PASSWORD")
    return values


def short_command(text: str) -> str:
    """A compose command without its project options: ``docker compose ... stop api``."""
    if not text:
        return "(none in the rollback log)"
    head, sep, rest = text.partition(" --env-file ")
    if sep and head.startswith("docker compose "):
        return "docker compose ... " + rest.partition(" ")[2]
    return text[-80:]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def offset(value: float | None) -> str:
    return "-" if value is None else f"+{value:.1f}"


def between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def iso_epoch(value: Any) -> float | None:
    return parse_time(str(value)) if value else None


def ended_at(tasks: dict[str, dict[str, Any]], task_id: str) -> float | None:
    """When a task that ran ended. A task never run (``upstream_failed``, ``skipped``) has
    an end date too, the moment the scheduler marked it: that is no end of the step."""
    ti = tasks.get(task_id) or {}
    return iso_epoch(ti.get("end_date")) if ti.get("state") in ("success", "failed") else None


# ====================================================================== files and env


@dataclass
class Layout:
    base: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def working_dir(self) -> Path:
        return self.base / "demo"

    @property
    def stacks(self) -> Path:
        return self.base / "stacks"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def backups(self) -> Path:
        return self.base / "backups"

    @property
    def home(self) -> Path:
        return self.base / "airflow-home"

    @property
    def ledger(self) -> Path:
        return self.state / STACK / "ledger.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.state / STACK / "lock.json"


def write_stack_file(layout: Layout) -> Path:
    """The demo stack file moved to this project, its ports, image names and temp dir.
    Its ``health_gate`` is the demo's own: the targets are about the real config."""
    import yaml

    stack = yaml.safe_load(DEMO_STACK_FILE.read_text())
    stack["runtime"]["project"] = PROJECT
    stack["runtime"]["working_dir"] = str(layout.working_dir)
    api = layout.ports["api"]
    for service in stack["services"]:
        service["image"] = f"{IMAGE_PREFIX}/{service['image'].partition('/')[2]}"
        for check in service.get("health", []):
            if check["kind"] == "http":
                check["url"] = check["url"].replace(":18080/", f":{api}/")
            if check["kind"] == "tcp":
                check["port"] = api
    for root in stack.get("logs", {}).get("roots", []):
        if root.get("volume") == "opsflow-demo_applogs":
            root["volume"] = f"{PROJECT}_applogs"
    stack["backup"]["local_dir"] = str(layout.backups)
    layout.stacks.mkdir(mode=0o700)
    path = layout.stacks / f"{STACK}.yaml"
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


def gate_timeout_of(layout: Layout) -> float:
    """The configured gate timeout, read (and the whole file validated) by opsflow's loader,
    with the backups dir allowed as Airflow's tasks see it."""
    os.environ["OPSFLOW_ALLOWED_ROOTS"] = str(layout.backups)
    sys.path.insert(0, str(REPO / "plugins"))
    from opsflow.stack.loader import load_stack

    return load_stack(STACK, layout.stacks).health_gate.timeout.total_seconds()


def demo_env(layout: Layout) -> dict[str, str]:
    """What the compose file interpolates besides the version: ports and image names."""
    ports = layout.ports
    return {
        "DEMO_API_PORT": str(ports["api"]),
        "DEMO_POSTGRES_PORT": str(ports["postgres"]),
        "DEMO_REDIS_PORT": str(ports["redis"]),
        "DEMO_IMAGE_PREFIX": IMAGE_PREFIX,
    }


def airflow_env(
    layout: Layout, passwords: dict[str, str], alerts: dict[str, str]
) -> dict[str, str]:
    """What the e2e fixture sets (stack and state dirs, ports, image prefix, connections),
    plus the alert connections pointing at the bench's receivers."""
    ports = layout.ports
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "OPSFLOW_STACKS_DIR": str(layout.stacks),
        "OPSFLOW_STATE_DIR": str(layout.state),
        "OPSFLOW_ALLOWED_ROOTS": str(layout.backups),  # backups outside the working dir
        **demo_env(layout),
        "AIRFLOW_CONN_DEMO_POSTGRES": json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": ports["postgres"],
                "login": "app",
                "password": passwords["POSTGRES_PASSWORD"],
                "schema": "app",
            }
        ),
        "AIRFLOW_CONN_DEMO_REDIS": json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": ports["redis"],
                "password": passwords["REDIS_PASSWORD"],
            }
        ),
        **alerts,
    }


# ====================================================================== alert receivers


class AlertSink:
    """The stack's alert routes, received here: a JSON webhook receiver (``http.server`` in
    a thread) and an SMTP sink (aiosmtpd), so delivery never fails and alerts can be
    counted per dag run."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.emails: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with contextlib.suppress(ValueError):
                    body = json.loads(raw)
                    if isinstance(body, dict):
                        sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.http_thread.start()
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise BenchError("aiosmtpd is missing from .venv: run make setup") from None

        class Mailbox:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                content = envelope.original_content or envelope.content
                message = email.message_from_bytes(content)
                payload = message.get_payload(decode=True)
                text = payload.decode(errors="replace") if isinstance(payload, bytes) else ""
                sink.emails.append(f"{message.get('Subject', '')}\n{text}")
                return "250 Message accepted for delivery"

        self.smtp_port = free_port()
        self.smtp = Controller(Mailbox(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()

    def connections(self) -> dict[str, str]:
        return {
            "AIRFLOW_CONN_DEMO_ALERT_WEBHOOK": json.dumps(
                {
                    "conn_type": "http",
                    "host": f"http://127.0.0.1:{self.http.server_address[1]}/alerts",
                }
            ),
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
                {
                    "conn_type": "smtp",
                    "host": "127.0.0.1",
                    "port": self.smtp_port,
                    "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0},
                }
            ),
        }

    def count(self, dag_id: str, run_id: str) -> tuple[int, int]:
        """(webhook alerts, emails) of one dag run."""
        hooks = sum(
            1 for b in self.bodies if b.get("dag_id") == dag_id and b.get("run_id") == run_id
        )
        mails = sum(1 for text in self.emails if run_id in text)
        return hooks, mails

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.smtp.stop()
        self.http.shutdown()
        self.http.server_close()
        self.http_thread.join(timeout=5)


# ====================================================================== the outside poll


@dataclass(frozen=True)
class Sample:
    at: float  # epoch seconds at the start of the poll
    version: str | None
    ready: int | None  # HTTP status of /health/ready; None when nothing answered


class Poller(threading.Thread):
    """``GET /version`` and ``GET /health/ready`` every ``interval`` seconds, from outside."""

    def __init__(self, port: int, interval: float = POLL_INTERVAL) -> None:
        super().__init__(daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.interval = interval
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def _get(self, path: str) -> tuple[int | None, dict[str, Any]]:
        try:
            with open_local(self.base + path, timeout=POLL_TIMEOUT) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, {}
        except (OSError, ValueError):
            return None, {}

    def sample(self) -> Sample:
        at = time.time()
        _, body = self._get("/version")
        ready, _ = self._get("/health/ready")
        version = body.get("version")
        return Sample(at, str(version) if version else None, ready)

    def run(self) -> None:
        due = time.monotonic()
        while not self.done.is_set():
            self.samples.append(self.sample())
            due += self.interval
            now = time.monotonic()
            if due < now:  # a slow answer: the next poll at once, then on the new beat
                due = now
            self.done.wait(due - now)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)

    def healthy_after(self, since: float, version: str) -> Sample | None:
        return next(
            (
                s
                for s in list(self.samples)
                if s.at >= since and s.version == version and s.ready == 200
            ),
            None,
        )

    def largest_gap(self, since: float, until: float) -> float:
        times = [s.at for s in list(self.samples) if since <= s.at <= until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def healthy(sample: Sample, version: str) -> bool:
    return sample.version == version and sample.ready == 200


# ====================================================================== results


@dataclass
class CaseResult:
    case: Case
    run_id: str
    trigger: float
    queued: float | None = None
    state: str = "?"
    ended: float | None = None
    failed: list[str] = field(default_factory=list)
    outcome: str = "?"
    alerts: int = 0
    emails: int = 0
    start_end: float | None = None
    verify_end: float | None = None
    verdict: float | None = None
    verdict_from: str = "-"
    rollback_cmd: float | None = None
    rollback_text: str = ""
    healthy: float | None = None
    gate_timeout: float | None = None
    polls: int = 0
    poll_gap: float = 0.0

    @property
    def trigger_to_rollback(self) -> float | None:
        return between(self.trigger, self.rollback_cmd)

    @property
    def gap(self) -> float | None:
        return between(self.verdict, self.rollback_cmd)

    @property
    def start_to_verdict(self) -> float | None:
        return between(self.start_end, self.verdict)

    @property
    def rollback_to_healthy(self) -> float | None:
        return between(self.rollback_cmd, self.healthy)

    @property
    def start_to_healthy(self) -> float | None:
        return between(self.start_end, self.healthy)

    @property
    def trigger_to_healthy(self) -> float | None:
        return between(self.trigger, self.healthy)

    @property
    def trigger_to_end(self) -> float | None:
        return between(self.trigger, self.ended)


@dataclass
class FloorResult:
    started: float
    command_done: float
    healthy: float | None

    @property
    def command(self) -> float:
        return self.command_done - self.started

    @property
    def to_healthy(self) -> float | None:
        return between(self.started, self.healthy)


# ====================================================================== the benchmark


class Bench:
    def __init__(self, layout: Layout, airflow: Standalone, sink: AlertSink) -> None:
        self.layout = layout
        self.airflow = airflow
        self.sink = sink
        self.poller = Poller(layout.ports["api"])
        self.compose_log = layout.base / "compose.log"
        self._unhealthy_since: float | None = None
        self._last_watch = 0.0

    # ------------------------------------------------------------------ the stack

    def compose(self, version: str, *args: str, timeout: float = 600, check: bool = True) -> None:
        """``docker compose`` of the bench's project (argv as opsflow builds it)."""
        directory = self.layout.working_dir
        argv = ["docker", "compose", "--project-name", PROJECT, "--project-directory",
                str(directory), "--file", str(directory / "docker-compose.yml"),
                "--env-file", str(directory / ".env"), *args]  # fmt: skip
        env = {**without_settings(os.environ), **demo_env(self.layout), "OPSFLOW_VERSION": version}
        with self.compose_log.open("a") as log:
            log.write(f"$ OPSFLOW_VERSION={version} {' '.join(argv)}\n")
            log.flush()
            done = subprocess.run(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if check and done.returncode != 0:
            tail = "\n".join(self.compose_log.read_text(errors="replace").splitlines()[-20:])
            raise BenchError(
                f"docker compose {' '.join(args)} ({version}) exited {done.returncode}:\n{tail}"
            )

    def down(self) -> None:
        self.compose("0", "down", "--volumes", "--remove-orphans", timeout=300, check=False)

    def up(self, version: str) -> None:
        self.compose(version, "up", "-d", "--no-build", "--pull", "never", "--remove-orphans")

    def serving(self, version: str) -> bool:
        return healthy(self.poller.sample(), version)

    def ledger(self) -> dict[str, dict[str, Any]]:
        """The ledger's entries folded by entry id (newest line wins)."""
        folded: dict[str, dict[str, Any]] = {}
        path = self.layout.ledger
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                folded[str(entry.get("entry_id"))] = entry
        return folded

    def current(self) -> str | None:
        done = [
            e
            for e in self.ledger().values()
            if e.get("action") in ("deploy", "upgrade", "rollback")
            and e.get("outcome") == "succeeded"
        ]
        return str(max(done, key=lambda e: str(e.get("ended_at")))["version"]) if done else None

    # ------------------------------------------------------------------ Airflow

    def watch(self) -> None:
        """Called while a run is waited for: a component unhealthy for long stops the bench."""
        now = time.monotonic()
        if now - self._last_watch < WATCHDOG_EVERY:
            return
        self._last_watch = now
        down = self.airflow.unhealthy()
        if not down:
            self._unhealthy_since = None
            return
        self._unhealthy_since = self._unhealthy_since or now
        if now - self._unhealthy_since > WATCHDOG_LIMIT:
            raise BenchError(
                f"Airflow components unhealthy for {WATCHDOG_LIMIT:.0f} s: {', '.join(down)}"
            )

    def deploy(self, version: str) -> None:
        """``demo__deploy`` of ``version`` under standalone (setup, outside any clock)."""
        run_id = f"bench-deploy-{version}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        started = time.monotonic()
        self.airflow.trigger(DEPLOY_DAG, run_id, {"version": version})
        found = self.airflow.wait_run(DEPLOY_DAG, run_id, DEPLOY_TIMEOUT, self.watch)
        if found["state"] != "success":
            tasks = self.airflow.task_instances(DEPLOY_DAG, run_id)
            failed = [t for t, ti in tasks.items() if ti.get("state") == "failed"]
            raise BenchError(
                f"{DEPLOY_DAG} {version} ended {found['state']} (failed: {', '.join(failed)}); "
                f"see {self.airflow.task_log_dir(DEPLOY_DAG, run_id, failed[0] if failed else '')}"
            )
        if not self.serving(version):
            raise BenchError(f"{DEPLOY_DAG} {version} succeeded but the api does not serve it")
        print(
            f"  {DEPLOY_DAG} {version}: success in {time.monotonic() - started:.0f} s", flush=True
        )

    def ensure_old(self) -> None:
        """1.1.0 current in the ledger, serving and ready, the stack lock free; otherwise
        the stack is rebuilt from nothing (1.0.0, then 1.1.0), outside any clock."""
        current = self.current()
        if current == OLD and self.serving(OLD) and not self.layout.lock_file.exists():
            return
        print(
            f"  the stack is not on {OLD} and healthy (ledger: {current}); deploying it again",
            flush=True,
        )
        self.down()
        self.layout.lock_file.unlink(missing_ok=True)
        self.deploy(FIRST)
        self.deploy(OLD)

    def setup(self, versions: list[str]) -> None:
        self.down()  # a project left by a run killed too hard to clean up
        started = time.monotonic()
        for version in dict.fromkeys([FIRST, OLD, *versions]):
            self.compose(version, "build", timeout=BUILD_TIMEOUT)
        print(f"  images of {len(set(versions) | {FIRST, OLD})} releases built in "
              f"{time.monotonic() - started:.0f} s (docker compose build)", flush=True)  # fmt: skip
        self.airflow.start()
        took = self.airflow.wait_ready([DEPLOY_DAG, UPGRADE_DAG])
        print(f"  Airflow standalone up, DAGs parsed, in {took:.0f} s", flush=True)
        self.airflow.unpause(DEPLOY_DAG)
        self.airflow.unpause(UPGRADE_DAG)
        self.deploy(FIRST)
        self.deploy(OLD)
        self.poller.start()

    # ------------------------------------------------------------------ one case

    def run_case(self, case: Case) -> CaseResult:
        self.ensure_old()
        run_id = f"mttr-{case.key}-{case.version}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        print(f"{case.label}: {case.what}; triggering {UPGRADE_DAG} ({run_id})", flush=True)
        trigger = time.time()
        created = self.airflow.trigger(UPGRADE_DAG, run_id, {"version": case.version})
        result = CaseResult(case, run_id, trigger, queued=iso_epoch(created.get("queued_at")))
        found = self.airflow.wait_run(UPGRADE_DAG, run_id, RUN_TIMEOUT, self.watch)
        result.state = str(found.get("state"))
        result.ended = iso_epoch(found.get("end_date"))
        self._read_tasks(result)
        self._wait_healthy(result)
        self._count_alerts(result)
        entry = self.ledger().get(f"{UPGRADE_DAG}/{run_id}", {})
        result.outcome = str(entry.get("outcome") or "?")
        until = result.healthy or time.time()
        result.polls = sum(1 for s in list(self.poller.samples) if trigger <= s.at <= until)
        result.poll_gap = self.poller.largest_gap(trigger, until)
        print(
            f"  ended {result.state} ({result.outcome}) {seconds(result.trigger_to_end)} s after "
            f"the trigger; rollback cmd +{seconds(result.trigger_to_rollback)} s, healthy on "
            f"{OLD} +{seconds(result.trigger_to_healthy)} s; alerts {result.alerts}",
            flush=True,
        )
        return result

    def _read_tasks(self, result: CaseResult) -> None:
        tasks = self.airflow.task_instances(UPGRADE_DAG, result.run_id)
        failed = [t for t in UPGRADE_STEPS if (tasks.get(t) or {}).get("state") == "failed"]
        result.failed = failed
        result.start_end = ended_at(tasks, "start")
        result.verify_end = ended_at(tasks, "verify")
        logs = {
            task: read_task_log(self.airflow.task_log_dir(UPGRADE_DAG, result.run_id, task))
            for task in ("verify", "rollback")
        }
        verify_lines, verify_trigger = logs["verify"]
        result.gate_timeout = gate_timeout_in_effect(verify_lines)
        command = first_command(logs["rollback"][0])
        if command is not None:
            result.rollback_cmd = command.at
            result.rollback_text = command.event[2:]
        gate_step = next((t for t in failed if t not in ("rollback", "rollback_verify")), "")
        if gate_step == "verify":
            decided = decided_at(verify_lines + verify_trigger)
            failed_line = gate_failed_line(verify_lines)
            if decided is not None:
                result.verdict, result.verdict_from = decided, "verify: decided at"
            elif failed_line is not None:
                result.verdict, result.verdict_from = failed_line.at, "verify: gate-failed line"
            else:
                result.verdict, result.verdict_from = result.verify_end, "verify: end"
        elif gate_step:
            result.verdict, result.verdict_from = ended_at(tasks, gate_step), f"{gate_step}: end"

    def _wait_healthy(self, result: CaseResult) -> None:
        since = result.rollback_cmd
        if since is None:
            return
        deadline = time.monotonic() + HEALTHY_WAIT
        while True:
            found = self.poller.healthy_after(since, OLD)
            if found is not None:
                result.healthy = found.at
                return
            if time.monotonic() > deadline:
                return
            time.sleep(POLL_INTERVAL)

    def _count_alerts(self, result: CaseResult) -> None:
        """Alerts of this run: the summary sends them before the run ends; a little more
        time, to see a second one if the run sent two."""
        deadline = time.monotonic() + ALERT_WAIT
        while self.sink.count(UPGRADE_DAG, result.run_id)[0] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        result.alerts, result.emails = self.sink.count(UPGRADE_DAG, result.run_id)

    # ------------------------------------------------------------------ the floor

    def floor(self) -> FloorResult:
        """``docker compose up -d`` of 1.1.0 from the never-ready release running."""
        self.ensure_old()
        self.up(FLOOR_FROM)
        deadline = time.monotonic() + 180
        while True:
            sample = self.poller.sample()
            if sample.version == FLOOR_FROM and sample.ready == 503:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{FLOOR_FROM} did not reach its failed state: {sample}")
            time.sleep(1)
        print(
            f"floor: {FLOOR_FROM} up by hand, live and not ready; compose up -d of {OLD}",
            flush=True,
        )
        started = time.time()
        self.up(OLD)
        done = time.time()
        result = FloorResult(started, done, None)
        deadline = time.monotonic() + 180
        while result.healthy is None and time.monotonic() < deadline:
            found = self.poller.healthy_after(started, OLD)
            result.healthy = found.at if found else None
            time.sleep(POLL_INTERVAL)
        print(
            f"  compose up -d returned after {result.command:.1f} s, healthy after "
            f"{seconds(result.to_healthy)} s",
            flush=True,
        )
        return result

    # ------------------------------------------------------------------ report

    def report(
        self, results: list[CaseResult], floor: FloorResult | None, gate_timeout: float
    ) -> list[Check]:
        heads = [
            ("trigger ->", "rollback cmd"),
            ("verdict ->", "rollback cmd"),
            ("start end ->", "verdict"),
            ("rollback cmd", "-> healthy"),
            ("start end ->", "healthy"),
            ("trigger ->", "healthy"),
        ]
        width, label = 14, 27
        print()
        print(
            f"seconds; healthy = the outside poll sees /version {OLD} and /health/ready 200; "
            "verdict -> rollback cmd is the scheduling gap"
        )
        for row, tail in enumerate((("run end", "failed", "alerts"), ("", "task", ""))):
            cells = "".join(f"{head[row]:>{width}}" for head in heads)
            print(
                f"{'case' if row == 0 else '':<{label}}{cells}  {tail[0]:<18}{tail[1]:<9}{tail[2]}"
            )
        print("-" * (label + width * len(heads) + 35))
        for r in results:
            values = (r.trigger_to_rollback, r.gap, r.start_to_verdict, r.rollback_to_healthy,
                      r.start_to_healthy, r.trigger_to_healthy)  # fmt: skip
            cells = "".join(f"{seconds(v):>{width}}" for v in values)
            end = f"{r.state} +{seconds(r.trigger_to_end)}"
            failed = ",".join(r.failed) or "-"
            print(f"{r.case.label:<{label}}{cells}  {end:<18}{failed:<9}{r.alerts}")
        if floor is not None:
            values = (None, None, None, floor.to_healthy, None, None)
            cells = "".join(f"{seconds(v):>{width}}" for v in values)
            print(
                f"{'floor: up -d ' + OLD:<{label}}{cells}  "
                f"(from {FLOOR_FROM}; up -d returned after {floor.command:.1f} s)"
            )
        print()
        print("timeline per case (seconds after the trigger):")
        for r in results:
            at = {
                "run queued": between(r.trigger, r.queued),
                "start ended": between(r.trigger, r.start_end),
                f"verdict ({r.verdict_from})": between(r.trigger, r.verdict),
                "verify ended": between(r.trigger, r.verify_end),
                "first rollback cmd": r.trigger_to_rollback,
                f"healthy on {OLD}": r.trigger_to_healthy,
                "run ended": r.trigger_to_end,
            }
            moments = [f"{name} {offset(value)}" for name, value in at.items()]
            deferred = (
                f"the gate deferred with a {r.gate_timeout:g} s timeout"
                if r.gate_timeout is not None
                else "the gate never deferred"
            )
            print_beside(
                f"  {r.case.label:<28}",
                [
                    ", ".join(moments[:4]),
                    ", ".join(moments[4:]),
                    f"first rollback cmd: {short_command(r.rollback_text)}",
                    f"ledger outcome {r.outcome}; alerts: {r.alerts} webhook, {r.emails} email; "
                    f"{deferred} (configured {gate_timeout:g} s); {r.polls} polls, largest "
                    f"gap {r.poll_gap:.2f} s",
                ],
            )
        return self.checks(results, gate_timeout)

    @staticmethod
    def checks(results: list[CaseResult], gate_timeout: float) -> list[Check]:
        found: list[Check] = []
        limits = {
            "a": (CRASH_LIMIT_S, f"<= {CRASH_LIMIT_S:g} s"),
            "b": (
                gate_timeout + NEVER_READY_MARGIN_S,
                f"<= {gate_timeout + NEVER_READY_MARGIN_S:g} s: gate timeout {gate_timeout:g} s "
                f"+ {NEVER_READY_MARGIN_S:g} s",
            ),
        }
        for r in results:
            if r.case.key in limits:
                limit, target = limits[r.case.key]
                value = r.start_to_healthy
                found.append(
                    Check(
                        f"healthy on {OLD} after its start step ended",
                        r.case.label,
                        "never" if value is None else f"{value:.1f} s",
                        target,
                        value is not None and value <= limit,
                    )
                )
            found.append(
                Check(
                    "scheduling gap (verdict -> first rollback command)",
                    r.case.label,
                    "no rollback" if r.gap is None else f"{r.gap:.1f} s",
                    f"<= {GAP_LIMIT_S:g} s",
                    r.gap is not None and r.gap <= GAP_LIMIT_S,
                )
            )
            found.append(
                Check(
                    "run end",
                    r.case.label,
                    f"{r.state}, {r.alerts} alert(s)",
                    "failed, exactly 1 alert",
                    r.state == "failed" and r.alerts == 1,
                )
            )
        return found


def machine_facts(gate_timeout: float, stack_file: Path) -> list[str]:
    import yaml

    engine = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=60).strip()
    compose = run(["docker", "compose", "version", "--short"], timeout=60).strip()
    gate = yaml.safe_load(stack_file.read_text()).get("health_gate", {})
    return [
        machine_line(),
        f"Docker Engine {engine}, Compose {compose}; project {PROJECT}; Airflow standalone "
        f"(LocalExecutor, SQLite); the demo's gate: {gate.get('consecutive')} green rounds "
        f"{gate.get('interval')} apart, timeout {gate.get('timeout')} ({gate_timeout:g} s)",
    ]


@dataclass
class Held:
    """What a run has started, for the teardown."""

    base: Path | None = None
    bench: Bench | None = None
    airflow: Standalone | None = None
    sink: AlertSink | None = None


def measure(parent_dir: Path | None, cases: list[Case], no_floor: bool, held: Held) -> list[Check]:
    parent = Path(parent_dir or tempfile.gettempdir()).resolve()
    sweep_stale(parent)
    held.base = base = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    passwords = demo_passwords()
    ports = {name: free_port() for name in ("api", "postgres", "redis", "airflow")}
    layout = Layout(base, ports)
    write_demo_compose_copy(layout.working_dir)
    stack_file = write_stack_file(layout)
    gate_timeout = gate_timeout_of(layout)
    held.sink = sink = AlertSink()
    env = airflow_env(layout, passwords, sink.connections())
    held.airflow = airflow = Standalone(layout.home, ports["airflow"], env, base / "standalone.log")
    held.bench = bench = Bench(layout, airflow, sink)
    print("\n".join(machine_facts(gate_timeout, stack_file)), flush=True)
    print(f"setup: build, Airflow standalone, {DEPLOY_DAG} {FIRST} then {OLD}", flush=True)
    bench.setup([*(case.version for case in cases), *([] if no_floor else [FLOOR_FROM])])
    results = [bench.run_case(case) for case in cases]
    floor = None if no_floor else bench.floor()
    return bench.report(results, floor, gate_timeout)


def teardown(held: Held, keep: bool) -> list[str]:
    """End everything the run started: Airflow's processes first (no task may touch the
    stack any more), the Compose project and its volumes, the receivers, the temp dir.
    What could not be ended, as messages."""
    problems: list[str] = []
    if held.bench is not None:
        held.bench.poller.done.set()
    if held.airflow is not None:
        left = held.airflow.stop()
        if left:
            problems.append(f"Airflow processes left behind: {left}")
    if held.bench is not None:
        try:
            held.bench.down()
        except Exception as exc:
            problems.append(f"docker compose down of {PROJECT} failed: {exc}")
    if held.sink is not None:
        held.sink.close()
    if held.base is not None:
        if keep:
            print(f"kept {held.base} (--keep)", file=sys.stderr)
        else:
            shutil.rmtree(held.base, ignore_errors=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--cases",
        default="a,b,c",
        help="cases to run, comma-separated: a (crash at start), b (never ready), "
        "c (broken migration); default a,b,c",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the compose up floor")
    parser.add_argument("--dir", type=Path, default=None, help="work dir parent ($TMPDIR)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (Airflow logs) after the run"
    )
    args = parser.parse_args()
    keys = [key.strip() for key in args.cases.split(",") if key.strip()]
    unknown = [key for key in keys if key not in CASES]
    if unknown or not keys:
        parser.error(f"--cases: unknown case(s) {unknown or args.cases!r}; known: a, b, c")
    cases = [CASES[key] for key in dict.fromkeys(keys)]
    if not shutil.which("docker"):
        print("docker is missing: run make setup", file=sys.stderr)
        return 2

    raise_on_signals()
    started = time.perf_counter()
    held = Held()
    checks: list[Check] = []
    problems: list[str] = []
    status = 0
    try:
        with single_run():
            try:
                checks = measure(args.dir, cases, args.no_floor, held)
            finally:
                ignore_signals()  # cleanup runs to the end, still under the run lock
                problems = teardown(held, args.keep)
    except KeyboardInterrupt:
        print("interrupted: everything it started is gone", file=sys.stderr)
        status = 130
    except Exception as exc:  # every failure here means the benchmark could not run
        print(f"benchmark could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not args.keep:
            print("(--keep keeps the Airflow logs and compose output)", file=sys.stderr)
        status = 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if status or problems:
        return status or 2
    print(
        "\nmethod: times are wall clock on this machine (task log timestamps, task end dates "
        "from the REST API, the bench's own poll every 0.5 s); the trigger is the REST call."
    )
    return finish(checks, started, enforce=True)


if __name__ == "__main__":
    sys.exit(main())
