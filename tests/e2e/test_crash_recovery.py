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

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.demo import E2E_PROJECT, DemoDeployment
from support.receivers import HttpCapture, alert_connections
from support.services import free_port
from support.standalone_airflow import FAST, Airflow, component_pid, wait_until
from support.upgrades import Upgrades, upgrade_stack

pytestmark = pytest.mark.e2e

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")


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
