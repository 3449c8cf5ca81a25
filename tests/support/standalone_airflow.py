"""Airflow started by a test the way an operator runs it: standalone, or its components one
by one, as processes of this machine that the test can find, kill and restart."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.demo import AIRFLOW_CLI

# Quick detection of task processes that died with the scheduler; quick parsing.
FAST = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
}


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the name: state ppid pgrp session ...
    return None if fields[0] == "Z" else int(fields[3])  # a zombie holds nothing any more


def airflow_processes(home: Path, sessions: frozenset[int] = frozenset()) -> list[int]:
    """Every process of this Airflow home, wherever it ended up: by its environment, or by
    the session it was started in (the API server retitles itself, which hides its
    environment from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if (
            env.get("AIRFLOW_HOME") == str(home)
            or env.get("OPSFLOW_AIRFLOW_HOME") == str(home)
            or _session(pid) in sessions
        ):
            found.append(pid)
    return found


def component_pid(home: Path, component: str) -> int | None:
    """The main process of one Airflow component (``airflow scheduler`` and so on)."""
    for pid in airflow_processes(home):
        argv = _cmdline(pid)
        if len(argv) >= 2 and Path(argv[-2]).name == "airflow" and argv[-1] == component:
            return pid
    return None


@dataclass
class Airflow:
    """Airflow for the e2e stack: standalone, or its components one by one."""

    env: dict[str, str]
    home: Path
    log_dir: Path
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)

    def _start(self, *args: str, name: str) -> None:
        log = (self.log_dir / f"{name}-{len(self.processes)}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [str(AIRFLOW_CLI), *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        self.sessions.add(self.processes[-1].pid)

    def mine(self) -> list[int]:
        return airflow_processes(self.home, frozenset(self.sessions))

    def standalone(self) -> None:
        self._start("standalone", name="standalone")

    def component(self, name: str) -> None:
        self._start(name, name=name)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(AIRFLOW_CLI), *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def api_up(self) -> bool:
        try:
            import urllib.request

            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """End every process of this Airflow home, including orphaned task processes."""
        for signum, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            for pid in self.mine():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            deadline = time.monotonic() + grace
            while self.mine() and time.monotonic() < deadline:
                time.sleep(0.5)
        for process in self.processes:
            process.wait(timeout=10)
        self.processes.clear()
        left = [(pid, _cmdline(pid)) for pid in self.mine()]
        assert not left, f"processes left behind: {left}"
        self.sessions.clear()

    # ------------------------------------------------------------------ the metadata DB

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)

    def tasks(
        self, run_id: str, dag_id: str = "demo__upgrade"
    ) -> dict[str, tuple[str | None, int]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT task_id, state, try_number FROM task_instance "
                "WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        return {task: (state, tries) for task, state, tries in rows}

    def run_state(self, run_id: str, dag_id: str = "demo__upgrade") -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
            ).fetchone()
        return row[0] if row else None

    def task_log(self, run_id: str, task_id: str, dag_id: str = "demo__upgrade") -> str:
        root = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted((root / f"task_id={task_id}").glob("*.log"))
        )


def wait_until(what: str, check: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
