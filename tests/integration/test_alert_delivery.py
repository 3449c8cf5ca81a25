"""A real DAG run whose task fails delivers the alert to every route of its stack.

The DAG runs through ``airflow dags test`` in a subprocess against a migrated SQLite
metadata DB, so the notifiers are called exactly as Airflow 3 calls an
``on_failure_callback``: in the task process, with the runtime task instance in the
context. Receivers are a real SMTP server and a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.receivers import HttpCapture, SmtpCapture
from support.services import free_port

pytestmark = pytest.mark.integration

DAG_ID = "alertdemo__deploy"
BASE_URL = "http://airflow.opsflow.test:8080"
DB_PASSWORD = "db-Pa55word-never-in-alerts"
SLACK_TOKEN = "T0OPS/B0OPS/slackIntegrationToken"

DAG_FILE = '''\
"""Failing DAG used by the alert delivery test."""

from __future__ import annotations

import json
from datetime import datetime

from airflow.sdk import DAG, BaseHook, task

from opsflow.notifiers import failure_callbacks
from opsflow.stack.model import Stack

STACK = Stack.model_validate(json.loads(%(stack)r))

with DAG(
    dag_id=%(dag_id)r,
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    default_args={"retries": 0, "on_failure_callback": failure_callbacks(STACK)},
) as dag:

    @task
    def verify() -> None:
        conn = BaseHook.get_connection("alert_it_db")
        raise RuntimeError(
            f"health gate failed: postgres refused password {conn.password}\\n"
            "Traceback line that must not be in the alert"
        )

    verify()
'''


def _run_failing_dag(
    airflow_home: Path, connections: dict[str, dict[str, Any]], stack: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    dags = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    (dags / "alert_demo.py").write_text(
        DAG_FILE % {"stack": json.dumps(stack), "dag_id": DAG_ID}, encoding="utf-8"
    )
    env = {
        **os.environ,
        "AIRFLOW__API__BASE_URL": BASE_URL,
        **{f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in connections.items()},
    }
    airflow = Path(sys.executable).parent / "airflow"
    return subprocess.run(
        [str(airflow), "dags", "test", DAG_ID, "2025-02-03T04:05:06+00:00"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
        cwd=airflow_home,
    )


def test_failed_task_alerts_every_route(
    airflow_home: Path, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    dead_port = free_port()
    connections: dict[str, dict[str, Any]] = {
        "alert_it_db": {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "login": "app",
            "password": DB_PASSWORD,
        },
        "alert_it_dead": {"conn_type": "http", "host": "127.0.0.1", "port": dead_port},
        "alert_it_slack": {
            "conn_type": "slackwebhook",
            "host": f"{http_receiver.base_url}/slack",
            "password": SLACK_TOKEN,
        },
        "alert_it_smtp": {
            "conn_type": "smtp",
            "host": smtp_server.host,
            "port": smtp_server.port,
            "login": smtp_server.login,
            "password": smtp_server.password,
            "extra": {
                "disable_ssl": True,
                "disable_tls": True,
                "from_email": "opsflow@example.test",
                "timeout": 10,
                "retry_limit": 0,
            },
        },
        "alert_it_hook": {
            "conn_type": "http",
            "host": f"{http_receiver.base_url}/hooks/opsflow",
            "extra": {"timeout": 5},
        },
    }
    stack = {
        "name": "alertdemo",
        "runtime": {"kind": "compose", "project": "alertdemo", "working_dir": "."},
        "services": [{"name": "api"}],
        "alerts": [
            {"kind": "webhook", "conn_id": "alert_it_dead"},
            {"kind": "slack", "conn_id": "alert_it_slack", "channel": "#ops"},
            {"kind": "email", "conn_id": "alert_it_smtp", "to": ["oncall@example.test"]},
            {"kind": "webhook", "conn_id": "alert_it_hook"},
        ],
    }

    result = _run_failing_dag(airflow_home, connections, stack)
    output = result.stdout + result.stderr

    assert "health gate failed" in output, output[-4000:]
    # The dead route is reported, and reported without leaking anything.
    assert "opsflow alert via webhook:alert_it_dead failed" in output, output[-4000:]
    # (Airflow itself prints the task's traceback, password included, when dags test runs
    # the task in-process; only what the notifiers log is checked for the task's secret.)
    ours = [line for line in output.splitlines() if "opsflow.notifiers" in line]
    assert ours, output[-4000:]
    assert not [line for line in ours if DB_PASSWORD in line]
    for secret in (SLACK_TOKEN, smtp_server.password):
        assert secret not in output

    # ---- generic webhook: the JSON contract
    hooks = [r for r in http_receiver.requests if r["path"] == "/hooks/opsflow"]
    assert len(hooks) == 1, http_receiver.requests
    payload = json.loads(hooks[0]["body"])
    assert hooks[0]["headers"]["content-type"] == "application/json"
    run_id = payload["run_id"]
    assert run_id.startswith("manual__")  # 3.3 names test runs after run_after (now)
    assert payload["stack"] == "alertdemo"
    assert (payload["dag_id"], payload["task_id"], payload["try_number"]) == (DAG_ID, "verify", 1)
    assert payload["error"] == "RuntimeError: health gate failed: postgres refused password ***"
    assert payload["log_url"].startswith(f"{BASE_URL}/dags/{DAG_ID}/runs/")
    assert payload["log_url"].endswith("/tasks/verify?try_number=1")
    assert payload["logical_date"].startswith("2025-02-03T04:05:06")
    assert payload["start_date"]
    assert payload["subject"] == f"[opsflow] {DAG_ID} failed: verify (try 1)"

    # ---- Slack incoming webhook: token path, text and blocks
    slack = [r for r in http_receiver.requests if r["path"].startswith("/slack/")]
    assert len(slack) == 1, http_receiver.requests
    assert slack[0]["path"] == f"/slack/{SLACK_TOKEN}"
    slack_body = json.loads(slack[0]["body"])
    assert slack_body["channel"] == "#ops"
    assert slack_body["text"].startswith(f"[opsflow] {DAG_ID} failed: verify (try 1)")
    blocks = json.dumps(slack_body["blocks"])
    for expected in ("alertdemo", run_id, "password ***", "View task log"):
        assert expected in blocks

    # ---- email: authenticated delivery, plain text with every field
    [mail] = smtp_server.wait_for(1)
    assert smtp_server.logins == [smtp_server.login]
    assert smtp_server.envelopes[0]["rcpt_tos"] == ["oncall@example.test"]
    assert mail["Subject"] == f"[opsflow] {DAG_ID} failed: verify (try 1)"
    assert mail["From"] == "opsflow@example.test"
    assert mail.get_content_type() == "text/plain"
    raw = mail.get_payload(decode=True)
    assert isinstance(raw, bytes)
    body = raw.decode()
    for expected in (
        "stack:        alertdemo",
        f"dag:          {DAG_ID}",
        "task:         verify",
        f"run:          {run_id}",
        "try:          1",
        "error:        RuntimeError: health gate failed: postgres refused password ***",
        f"log:          {payload['log_url']}",
    ):
        assert expected in body
    assert DB_PASSWORD not in body
    assert "Traceback line" not in body
