"""End to end: ``demo__deploy`` run by Airflow (``airflow dags test``) against the real engine.

The demo stack runs here as its own Compose project (``opsflow-e2e-gw<N>``) on free ports, so a
``make demo`` stack on the same machine is never touched. Alerts go to a real SMTP server
and a real HTTP receiver.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO_ROOT
from support.demo import E2E_PROJECT as PROJECT
from support.demo import TEST_IMAGE_PREFIX, DemoDeployment
from support.receivers import HttpCapture, SmtpCapture, alert_connections

pytestmark = pytest.mark.e2e


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_deploy_1_0_0_on_a_clean_machine_ends_ready(deployment: DemoDeployment) -> None:
    deployment.reset()
    result = deployment.dags_test({"version": "1.0.0"})
    out = _output(result)

    assert result.returncode == 0, out[-4000:]
    assert deployment.get("/version") == (200, {"version": "1.0.0", "schema_head": "0001"})
    status, ready = deployment.get("/health/ready")
    assert (status, ready["status"]) == (200, "ready")
    assert "opsflow deploy summary: demo 1.0.0 -> SUCCEEDED" in out
    for service in ("api", "worker", "postgres", "redis"):
        assert f"container {service}: {PROJECT}-{service}-1 healthy" in out
    images = {
        row["Service"]: row["Image"]
        for row in map(json.loads, deployment.compose("ps", "--format", "json").splitlines())
    }
    assert images["api"] == f"{TEST_IMAGE_PREFIX}/api:1.0.0"
    assert images["worker"] == f"{TEST_IMAGE_PREFIX}/worker:1.0.0"


def test_dry_run_prints_the_commands_and_changes_nothing(deployment: DemoDeployment) -> None:
    before = deployment.compose("ps", "--quiet")
    result = deployment.dags_test({"version": "1.1.0", "dry_run": True})
    out = _output(result)

    assert result.returncode == 0, out[-4000:]
    assert "DRY RUN - would run (with OPSFLOW_VERSION=1.1.0)" in out
    assert f"docker compose --project-name {PROJECT}" in out
    assert "alembic -c /app/alembic.ini upgrade head" in out
    assert "demo 1.1.0 -> DRY-RUN" in out
    assert deployment.compose("ps", "--quiet") == before
    assert deployment.get("/version")[1]["version"] == "1.0.0"


def test_never_ready_release_fails_at_verify_and_alerts(
    deployment: DemoDeployment, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    alerts = alert_connections(smtp_server, http_receiver)
    result = deployment.dags_test({"version": "1.2.0-never-ready"}, alerts)
    out = _output(result)

    assert result.returncode != 0, out[-4000:]
    ready_check = f"http GET http://127.0.0.1:{deployment.api_port}/health/ready"
    assert "health gate failed" in out
    assert f"{ready_check}:" in out
    assert "deploy of demo 1.2.0-never-ready failed at verify" in out
    assert deployment.get("/health/ready")[0] == 503

    webhook = [body for body in http_receiver.json_bodies() if body.get("task_id") == "verify"]
    assert len(webhook) == 1, http_receiver.requests
    alert = webhook[0]
    assert (alert["stack"], alert["dag_id"], alert["try_number"]) == ("demo", "demo__deploy", 1)
    assert alert["run_id"].startswith("manual__")
    assert "health gate failed after" in alert["error"]
    assert "/dags/demo__deploy/runs/" in alert["log_url"]
    mails = smtp_server.wait_for(1)
    assert len(mails) == 1
    assert "demo__deploy failed: verify" in mails[0]["Subject"]
    body = mails[0].get_payload(decode=True).decode()
    assert alert["run_id"] in body and "health gate failed" in body


@pytest.mark.parametrize("bad", ["1.0.0; touch /tmp/opsflow-pwned", "$(id)", "1.0.0\n"])
def test_invalid_version_is_refused_before_a_run_exists(
    deployment: DemoDeployment, bad: str
) -> None:
    result = deployment.dags_test({"version": bad})
    out = _output(result)

    assert result.returncode != 0
    assert "Invalid input for param version" in out
    assert "$ docker" not in out and "[DAG TEST] starting" not in out
    assert not Path("/tmp/opsflow-pwned").exists()


def test_invalid_stack_file_is_a_clear_import_error(
    deployment: DemoDeployment, tmp_path: Path
) -> None:
    stacks, dags = tmp_path / "stacks", tmp_path / "dags"
    stacks.mkdir()
    dags.mkdir()
    shutil.copy(deployment.stacks / "demo.yaml", stacks / "demo.yaml")
    broken = yaml.safe_load((stacks / "demo.yaml").read_text())
    broken["name"] = "broken"
    broken["health_gate"]["interval"] = "soon"
    (stacks / "broken.yaml").write_text(yaml.safe_dump(broken))
    for name in ("demo", "broken"):
        (dags / f"{name}.py").write_text(
            f'"""Airflow DAGs of {name}."""\nfrom opsflow.factory import register_stack_dags\n\n'
            f'register_stack_dags("{name}", globals())\n'
        )
    # scripts/airflow pins the dags folder to the checkout; call the CLI it wraps directly.
    env = {
        **deployment.env,
        "AIRFLOW_HOME": str(deployment.home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "OPSFLOW_STACKS_DIR": str(stacks),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
    }

    def cli_json(*args: str) -> Any:
        result = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "airflow"), *args, "--local", "-o", "json"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        # Airflow may print warnings before the JSON document on stdout.
        return json.loads(result.stdout.strip().splitlines()[-1])

    reported = cli_json("dags", "list-import-errors")
    assert [Path(e["filepath"]).name for e in reported] == ["broken.py"], reported
    message = reported[0]["error"]
    assert "broken.yaml" in message and "health_gate.interval" in message and "'soon'" in message
    assert sorted(d["dag_id"] for d in cli_json("dags", "list")) == [
        "demo__backup", "demo__deploy", "demo__log_cleanup", "demo__restore", "demo__rollback",
        "demo__upgrade",
    ]  # fmt: skip
