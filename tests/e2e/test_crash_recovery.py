"""Crashes under the real scheduler: Airflow standalone (scheduler, LocalExecutor,
triggerer, DAG processor, API server) runs ``demo__upgrade`` against the real engine, and
the test kills the scheduler in the middle of it.

Whatever path the crash takes, the run must end with the new release verified healthy or
the previous release back and verified, and the ledger and the alert must say which. Each
test checks that against what the engine reports as running (the image ids of the
containers) and what the demo api answers, never against which tasks ran.

The restart after the first kill brings the components back the way the issue saw them:
the scheduler, triggerer and DAG processor first, the API server only once the scheduler
has queued tasks that cannot start without it, so those tasks fail before they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.demo import AIRFLOW_CLI, E2E_PROJECT, DemoDeployment
from support.receivers import HttpCapture, alert_connections
from support.services import free_port
from support.upgrades import Upgrades, upgrade_stack

pytestmark = pytest.mark.e2e

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
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

    def tasks(self, run_id: str) -> dict[str, tuple[str | None, int]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT task_id, state, try_number FROM task_instance "
                "WHERE dag_id = 'demo__upgrade' AND run_id = ?",
                (run_id,),
            ).fetchall()
        return {task: (state, tries) for task, state, tries in rows}

    def run_state(self, run_id: str) -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT state FROM dag_run WHERE dag_id = 'demo__upgrade' AND run_id = ?",
                (run_id,),
            ).fetchone()
        return row[0] if row else None

    def task_log(self, run_id: str, task_id: str) -> str:
        root = self.home / "logs" / "dag_id=demo__upgrade" / f"run_id={run_id}"
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


@pytest.fixture(scope="module")
def upgrades(
    deployment: DemoDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upgrades]:
    with upgrade_stack(deployment, tmp_path_factory.mktemp("crash-backups")) as stack:
        yield stack


@pytest.fixture
def airflow(
    upgrades: Upgrades, http_receiver: HttpCapture, smtp_server: Any, tmp_path: Path
) -> Iterator[Airflow]:
    deployment = upgrades.deployment
    port = free_port()
    env = {
        **deployment.env,
        **alert_connections(smtp_server, http_receiver),
        **FAST,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "PYTHONUNBUFFERED": "1",
    }
    home = Path(env["OPSFLOW_AIRFLOW_HOME"])
    started = Airflow(env=env, home=home, log_dir=tmp_path, port=port)
    try:
        yield started
    finally:
        started.stop()
        for log in sorted(tmp_path.glob("*.log")):
            print(f"---- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-40:]))


def _running_images(upgrades: Upgrades) -> dict[str, str]:
    """Image id of every running container of the api and worker, from the engine."""
    out = subprocess.run(
        ["docker", "ps", "--filter", f"label=com.docker.compose.project={E2E_PROJECT}",
         "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    images = {}
    for container in out:
        info = json.loads(
            subprocess.run(
                ["docker", "inspect", container], capture_output=True, text=True, check=True
            ).stdout
        )[0]
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        if service in ("api", "worker"):
            images[service] = info["Image"]
    return images


def _trigger(airflow: Airflow, version: str) -> str:
    run_id = f"crash-{version}-{int(time.time())}"
    airflow.cli("dags", "unpause", "demo__upgrade")
    airflow.cli("dags", "trigger", "demo__upgrade", "--run-id", run_id,
                "--conf", json.dumps({"version": version}))  # fmt: skip
    return run_id


def _start_standalone_and_parse(airflow: Airflow) -> None:
    airflow.standalone()
    wait_until("the API server", airflow.api_up, timeout=240, interval=2)
    wait_until(
        "demo__upgrade to be parsed",
        lambda: "demo__upgrade" in airflow.cli("dags", "list", "-o", "plain"),
        timeout=180,
        interval=3,
    )


def _assert_truthful_end(
    upgrades: Upgrades, airflow: Airflow, http_receiver: HttpCapture, run_id: str, target: str
) -> dict[str, Any]:
    """The run ended, the ledger and the alert agree with what the engine runs."""
    state = wait_until(
        "the run to end",
        lambda: airflow.run_state(run_id) in ("success", "failed") and airflow.run_state(run_id),
        timeout=600,
        interval=2,
    )
    entry = next(e for e in upgrades.entries() if e["entry_id"] == f"demo__upgrade/{run_id}")
    running = _running_images(upgrades)
    new = {s: f["id"] for s, f in entry["images"].items() if s in ("api", "worker")}
    old = {s: f["id"] for s, f in entry["snapshot"]["images"].items()}
    alerts = [b for b in http_receiver.json_bodies() if b.get("dag_id") == "demo__upgrade"]
    if entry["outcome"] == "succeeded":
        assert state == "success"
        assert running == new and upgrades.serving(target)
        assert alerts == []
    else:
        assert entry["outcome"] == "rolled-back", entry
        assert state == "failed"
        assert running == old and upgrades.serving(entry["from_version"])
        http_receiver.wait_for(1)
        alerts = [b for b in http_receiver.json_bodies() if b.get("dag_id") == "demo__upgrade"]
        assert len(alerts) == 1, alerts
        assert alerts[0]["error"].endswith(f"rolled back to {entry['from_version']}; healthy")
    assert upgrades.lock_free()
    return entry


def test_scheduler_killed_during_start_then_tasks_failing_before_they_run(
    upgrades: Upgrades, airflow: Airflow, http_receiver: HttpCapture
) -> None:
    upgrades.arrive_at("1.1.0")
    _start_standalone_and_parse(airflow)
    run_id = _trigger(airflow, "1.1.1")
    wait_until(
        "start to run", lambda: airflow.tasks(run_id).get("start", (None, 0))[0] == "running",
        timeout=600, interval=0.5,
    )  # fmt: skip
    scheduler = component_pid(airflow.home, "scheduler")
    assert scheduler is not None
    os.kill(scheduler, signal.SIGKILL)
    # The task process outlives its scheduler and finishes: 1.1.1 runs, unverified.
    wait_until(
        "start to finish", lambda: airflow.tasks(run_id)["start"][0] == "success",
        timeout=300, interval=1,
    )  # fmt: skip
    assert upgrades.serving("1.1.1") or _running_images(upgrades)
    airflow.stop()

    # Back without the API server: the scheduler queues verify, which cannot start.
    for name in ("scheduler", "dag-processor", "triggerer"):
        airflow.component(name)
    wait_until(
        "verify to fail before it ran",
        lambda: airflow.tasks(run_id).get("verify", (None, 0))[0] in ("up_for_retry", "failed"),
        timeout=300, interval=1,
    )  # fmt: skip
    airflow.component("api-server")
    entry = _assert_truthful_end(upgrades, airflow, http_receiver, run_id, "1.1.1")

    tasks = airflow.tasks(run_id)
    assert tasks["verify"][1] >= 2, tasks  # it was retried, not marked failed for good
    assert entry["outcome"] == "succeeded"
    assert upgrades.last("upgrade")["entry_id"] == entry["entry_id"]


def test_scheduler_killed_during_a_failing_gate_still_rolls_back(
    upgrades: Upgrades, airflow: Airflow, http_receiver: HttpCapture
) -> None:
    upgrades.arrive_at("1.1.0")
    _start_standalone_and_parse(airflow)
    run_id = _trigger(airflow, "1.2.0-never-ready")
    wait_until(
        "verify to wait in the triggerer",
        lambda: airflow.tasks(run_id).get("verify", (None, 0))[0] == "deferred",
        timeout=600, interval=0.5,
    )  # fmt: skip
    scheduler = component_pid(airflow.home, "scheduler")
    assert scheduler is not None
    os.kill(scheduler, signal.SIGKILL)
    time.sleep(3)
    airflow.stop()
    _start_standalone_and_parse(airflow)

    entry = _assert_truthful_end(upgrades, airflow, http_receiver, run_id, "1.2.0-never-ready")

    assert entry["outcome"] == "rolled-back" and entry["failed_task"] == "verify"
    rollback = upgrades.last("rollback")
    assert (rollback["version"], rollback["outcome"]) == ("1.1.0", "succeeded")
    assert "restored" in rollback["notes"][0]
