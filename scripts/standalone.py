"""Airflow standalone for a benchmark: its own home, port and environment, started and
ended as one unit, and the few REST calls a benchmark makes.

Standard library only. Every process it starts carries ``OPSFLOW_BENCH_OWNER=<home>`` in
its environment and starts in a session of its own; ending Airflow ends every process with
that marker, that ``AIRFLOW_HOME`` or in that session (the API server, LocalExecutor
workers and task processes retitle themselves, which hides their environment from /proc;
a task's ``docker compose`` leaves the session but keeps the environment). Nothing of
another Airflow (a running ``make demo``, a test's) is ever matched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchlib import BenchError

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_CLI = REPO / "scripts" / "airflow"
OWNER = "OPSFLOW_BENCH_OWNER"
COMPONENTS = ("scheduler", "triggerer", "dag_processor")
START_TIMEOUT = 300.0
STOP_GRACE = 20.0
KILL_GRACE = 10.0


# ====================================================================== processes


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _session(pid: int) -> int | None:
    """The session id, or None when the process is gone or a zombie (it holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the name: state ppid pgrp session ...
    return None if fields[0] in ("Z", "X") else int(fields[3])


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def processes(owned: Callable[[str], bool], sessions: frozenset[int] = frozenset()) -> list[int]:
    """Live pids whose ``OPSFLOW_BENCH_OWNER`` or ``AIRFLOW_HOME`` satisfies ``owned``, or
    that run in one of ``sessions``; never this process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        session = _session(pid)
        if session is None:
            continue
        env = _environ(pid)
        marks = (env.get(OWNER), env.get("AIRFLOW_HOME"))
        if session in sessions or any(mark and owned(mark) for mark in marks):
            found.append(pid)
    return found


def end_processes(find: Callable[[], list[int]]) -> list[str]:
    """SIGTERM what ``find`` returns, SIGKILL after a grace period (LocalExecutor workers
    ignore SIGTERM); the command lines of processes still there afterwards."""
    for signum, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, KILL_GRACE)):
        for pid in find():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while find() and time.monotonic() < deadline:
            time.sleep(0.5)
    return [f"{pid} {cmdline(pid)[:120]}" for pid in find()]


def open_local(
    url: str,
    *,
    timeout: float,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> Any:
    """``urlopen`` of a URL on 127.0.0.1 over plain HTTP, and nothing else."""
    if not url.startswith("http://127.0.0.1:"):
        raise BenchError(f"refusing to open {url!r}: only http://127.0.0.1 is used")
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)  # noqa: S310 - checked above
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - checked above


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without anything that points Airflow or the demo elsewhere."""
    prefixes = ("AIRFLOW", "OPSFLOW_", "DEMO_")
    return {key: value for key, value in environ.items() if not key.startswith(prefixes)}


# ====================================================================== standalone


class Standalone:
    """``scripts/airflow standalone`` (scheduler, LocalExecutor, triggerer, DAG processor,
    API server) in ``home`` on 127.0.0.1:``port``, with ``env`` over a clean environment."""

    def __init__(self, home: Path, port: int, env: Mapping[str, str], log_path: Path) -> None:
        self.home = home
        self.port = port
        self.log_path = log_path
        self.password_file = home / "simple_auth_manager_passwords.json.generated"
        self.env = {
            **without_settings(os.environ),
            **env,
            "OPSFLOW_AIRFLOW_HOME": str(home),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.password_file),
            "PYTHONUNBUFFERED": "1",
            OWNER: str(home),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.sessions: set[int] = set()
        self._token = ""
        self._password = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start standalone; the admin password is written (0600) before, so Airflow
        neither generates nor prints one."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._password = secrets.token_urlsafe(18)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"admin": self._password}) + "\n")
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
            self.process = subprocess.Popen(
                [str(AIRFLOW_CLI), "standalone"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the bench, not Airflow
            )
        self.sessions.add(self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, count: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-count:])

    def check_alive(self) -> None:
        if not self.alive():
            code = self.process.returncode if self.process else None
            raise BenchError(
                f"Airflow standalone exited ({code}); last lines of {self.log_path}:\n"
                + self.log_tail()
            )

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health`` (no login needed); {} while the API server is down."""
        try:
            with open_local(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except (OSError, ValueError):
            return {}

    def unhealthy(self) -> list[str]:
        """Components the API server does not report healthy (all of them while it is down)."""
        health = self.health()
        if not health:
            return ["api-server"]
        return [
            name
            for name in ("metadatabase", *COMPONENTS)
            if (health.get(name) or {}).get("status") != "healthy"
        ]

    def wait_ready(self, dag_ids: list[str], timeout: float = START_TIMEOUT) -> float:
        """Wait until every component is healthy and ``dag_ids`` are parsed; seconds taken."""
        started = time.monotonic()
        deadline = started + timeout
        missing: list[str] = []
        while True:
            self.check_alive()
            missing = self.unhealthy()
            if not missing:
                missing = [f"DAG {d} (not parsed yet)" for d in dag_ids if not self.dag(d)]
            if not missing:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise BenchError(
                    f"Airflow standalone not ready after {timeout:.0f} s: {', '.join(missing)}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(2)

    def mine(self) -> list[int]:
        home = str(self.home)
        return processes(lambda mark: mark == home, frozenset(self.sessions))

    def stop(self) -> list[str]:
        """End every process of this Airflow home; what could not be ended."""
        left = end_processes(self.mine)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        return left

    # ------------------------------------------------------------------ REST

    def _login(self) -> str:
        body = json.dumps({"username": "admin", "password": self._password}).encode()
        with open_local(
            f"{self.url}/auth/token",
            timeout=30,
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        ) as response:
            token = str(json.load(response)["access_token"])
        return token

    def api(self, method: str, path: str, body: Any = None, *, ok404: bool = False) -> Any:
        """One call of the REST API (``/api/v2`` + ``path``) as admin; the JSON answer
        (None for a 404 when ``ok404``)."""
        for attempt in (1, 2):
            if not self._token:
                self._token = self._login()
            headers = {
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
            data = None if body is None else json.dumps(body).encode()
            try:
                with open_local(
                    f"{self.url}/api/v2{path}",
                    timeout=60,
                    data=data,
                    headers=headers,
                    method=method,
                ) as response:
                    raw = response.read()
                    return json.loads(raw) if raw else None
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 1:
                    self._token = ""  # expired: log in again
                    continue
                if error.code == 404 and ok404:
                    return None
                detail = error.read().decode(errors="replace")[:500]
                raise BenchError(
                    f"Airflow REST {method} {path}: HTTP {error.code}: {detail}"
                ) from None
        raise BenchError(f"Airflow REST {method} {path}: not authorised after a new login")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = self.api("GET", f"/dags/{dag_id}", ok404=True)
        except (OSError, BenchError):
            return None
        return found

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        created: dict[str, Any] = self.api("POST", f"/dags/{dag_id}/dagRuns", body)
        return created

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(run_id, safe="")
        found: dict[str, Any] = self.api("GET", f"/dags/{dag_id}/dagRuns/{quoted}")
        return found

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        found = self.api("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in found["task_instances"]}

    def wait_run(
        self, dag_id: str, run_id: str, timeout: float, tick: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        """Poll the run every second until it ends; its final record."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            found = self.run(dag_id, run_id)
            if found.get("state") in ("success", "failed"):
                return found
            if tick is not None:
                tick()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{dag_id} run {run_id} still {found.get('state')} after {timeout:.0f} s"
                )
            time.sleep(1)

    def task_log_dir(self, dag_id: str, run_id: str, task_id: str) -> Path:
        return self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
