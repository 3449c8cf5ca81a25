"""Health checks against real PostgreSQL, Redis and Docker Compose, and a gate run by Airflow."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsflow.health import CheckResult, HealthCheck, check_to_data, run_check
from opsflow.runtimes.compose_probe import ComposeContext
from opsflow.runtimes.compose_window import compose_unhealthy_window
from opsflow.sensors.health import DEFAULT_TIMEOUT_MARGIN, ServiceHealthSensor
from opsflow.triggers.health import HealthGateTrigger
from support.containers import compose_sandbox
from support.servers import PostgresServer, RedisServer, SwitchableHealthServer

pytestmark = pytest.mark.integration

ADAPTER: TypeAdapter[HealthCheck] = TypeAdapter(HealthCheck)


def check(**data: Any) -> HealthCheck:
    return ADAPTER.validate_python(data)


def probe(health_check: HealthCheck, compose: ComposeContext | None = None) -> CheckResult:
    return asyncio.run(run_check(health_check, compose))


def run_gate(trigger: HealthGateTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), timeout=120))


# --------------------------------------------------------------------------- postgres


def test_postgres_select_1(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OPSFLOW_TEST_PG", postgres_server.uri)
    result = probe(check(kind="postgres", conn_id="opsflow_test_pg"))
    assert result.ok, result.detail
    assert result.name == "postgres opsflow_test_pg"
    assert result.detail.startswith("SELECT 1 ok (server 15")


def test_postgres_wrong_password_fails_without_leaking_it(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-the-Pa55word"
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPSFLOW_TEST_PG_BAD",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": postgres_server.port,
                    "login": postgres_server.user, "password": wrong, "schema": "postgres"}),
    )  # fmt: skip
    result = probe(check(kind="postgres", conn_id="opsflow_test_pg_bad"))
    assert not result.ok
    assert "password authentication failed" in result.detail
    assert wrong not in result.detail


# --------------------------------------------------------------------------- redis


def redis_conn(server: RedisServer, password: str) -> str:
    return json.dumps({"conn_type": "redis", "host": server.host, "port": server.port,
                       "password": password, "extra": {"db": 1}})  # fmt: skip


def test_redis_ping(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_OPSFLOW_TEST_REDIS", redis_conn(redis_server, redis_server.password)
    )
    result = probe(check(kind="redis", conn_id="opsflow_test_redis"))
    assert result == CheckResult("redis opsflow_test_redis", True, "PONG")


def test_redis_wrong_password_fails_without_leaking_it(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-the-redis-Pa55word"
    monkeypatch.setenv("AIRFLOW_CONN_OPSFLOW_TEST_REDIS_BAD", redis_conn(redis_server, wrong))
    result = probe(check(kind="redis", conn_id="opsflow_test_redis_bad"))
    assert not result.ok
    assert result.detail.startswith("AuthenticationError")
    assert wrong not in result.detail


# --------------------------------------------------------------------------- containers

COMPOSE_FILE = """
services:
  good:
    image: {image}
    command: ["sleep", "3600"]
    healthcheck: {{test: ["CMD", "true"], interval: 1s, timeout: 2s, retries: 1}}
  sick:
    image: {image}
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD-SHELL", "echo db down; exit 1"]
      interval: 1s
      timeout: 2s
      retries: 1
  plain:
    image: {image}
    command: ["sleep", "3600"]
  gone:
    image: {image}
    command: ["true"]
    restart: "no"
  slow:
    image: {image}
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD", "false"]
      interval: 1s
      timeout: 3s
      retries: 4
      start_period: 5m
"""


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeContext]:
    with compose_sandbox(tmp_path_factory.mktemp("compose"), COMPOSE_FILE, "health") as compose:
        subprocess.run([*compose.base_argv(), "up", "-d"], check=True, capture_output=True,
                       timeout=120)  # fmt: skip
        yield compose


def settled(compose: ComposeContext, service: str, want_ok: bool, contains: str) -> CheckResult:
    """Poll the check until Docker has reached the expected state (healthchecks take ~1 s)."""
    deadline = time.monotonic() + 30
    while True:
        result = probe(check(kind="container", service=service), compose)
        if (result.ok == want_ok and contains in result.detail) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def test_container_healthy(compose_project: ComposeContext) -> None:
    result = settled(compose_project, "good", True, "healthy")
    assert result.ok, result.detail
    assert result.detail == f"{compose_project.project}-good-1 healthy"


def test_container_without_healthcheck_counts_when_running(compose_project: ComposeContext) -> None:
    result = probe(check(kind="container", service="plain"), compose_project)
    assert result == CheckResult(
        "container plain", True, f"{compose_project.project}-plain-1 running (no healthcheck)"
    )


def test_container_unhealthy_reports_the_last_check_output(compose_project: ComposeContext) -> None:
    result = settled(compose_project, "sick", False, "unhealthy")
    assert (
        result.detail == f"{compose_project.project}-sick-1 unhealthy, last check exit 1: db down"
    )


def test_container_not_running(compose_project: ComposeContext) -> None:
    result = settled(compose_project, "gone", False, "not running")
    assert result.detail.startswith(f"{compose_project.project}-gone-1 not running (Exited (0)")


def test_container_starting(compose_project: ComposeContext) -> None:
    result = probe(check(kind="container", service="slow"), compose_project)
    assert not result.ok
    assert result.detail.startswith(f"{compose_project.project}-slow-1 starting")


def test_unknown_service_is_not_running(compose_project: ComposeContext) -> None:
    result = probe(check(kind="container", service="ghost"), compose_project)
    assert not result.ok
    assert result.detail.startswith("not running: no container for service 'ghost'")


def test_gate_over_containers(compose_project: ComposeContext) -> None:
    settled(compose_project, "good", True, "healthy")
    settled(compose_project, "sick", False, "unhealthy")
    good = [check(kind="container", service=s) for s in ("good", "plain")]
    event = run_gate(
        HealthGateTrigger(checks=[check_to_data(c) for c in good], consecutive=2, interval=0.2,
                          timeout=30, runtime=compose_project.to_dict())
    )  # fmt: skip
    assert (event["status"], event["rounds"]) == ("success", 2)

    bad = [check(kind="container", service=s) for s in ("good", "sick", "gone")]
    event = run_gate(
        HealthGateTrigger(checks=[check_to_data(c) for c in bad], consecutive=1, interval=0.2,
                          timeout=1, runtime=compose_project.to_dict())
    )  # fmt: skip
    assert event["status"] == "timeout"
    assert event["reason"] == "2 of 3 checks failing"
    assert [f["name"] for f in event["failing"]] == ["container sick", "container gone"]
    assert "db down" in event["failing"][0]["detail"]


def test_sensor_raises_its_timeout_past_the_compose_window(compose_project: ComposeContext) -> None:
    result = subprocess.run(
        [*compose_project.base_argv(), "config", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # slow: 300 + (1 + 3) * 4 = 316 s; the others are shorter.
    assert compose_unhealthy_window(json.loads(result.stdout)) == 316.0
    sensor = ServiceHealthSensor(
        task_id="web", service="good", runtime=compose_project, timeout=20, interval=2
    )
    assert sensor.effective_timeout(compose_project) == 316.0 + 1 * 2 + DEFAULT_TIMEOUT_MARGIN
    # Watching what changed: only those services' windows count (sick: 0 + (1 + 2) * 1).
    sensor.watch = ["good", "sick"]
    assert sensor.effective_timeout(compose_project) == 20.0  # 3 + 2 + margin < 20
    sensor.watch = ["good", "slow"]
    assert sensor.effective_timeout(compose_project) == 316.0 + 1 * 2 + DEFAULT_TIMEOUT_MARGIN


# --------------------------------------------------------------------------- through Airflow

DAG_FILE = '''
"""Health gates run by ``airflow dags test`` (deferrable sensors run inline there)."""

from datetime import datetime

from airflow.sdk import DAG

from opsflow.sensors.health import HealthGateSensor, RedisPingSensor

with DAG("opsflow_health_gate_e2e", schedule=None, start_date=datetime(2025, 1, 1)):
    HealthGateSensor(
        task_id="gate_ok",
        checks=[
            {{"kind": "postgres", "conn_id": "opsflow_e2e_pg"}},
            {{"kind": "redis", "conn_id": "opsflow_e2e_redis"}},
            {{"kind": "http", "url": "{url}", "expect_json": {{"status": "healthy"}}}},
        ],
        consecutive=2,
        interval=0.5,
        timeout=60,
    )
    RedisPingSensor(task_id="gate_bad", conn_id="opsflow_e2e_redis_bad", timeout=2, interval=0.5)
'''


def test_gates_through_airflow_dags_test(
    airflow_home: Path,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    health_http_server: SwitchableHealthServer,
) -> None:
    """Connections are fetched inside the trigger when ``dags test`` runs it inline."""
    wrong = "not-the-redis-Pa55word"
    env = {
        "AIRFLOW_CONN_OPSFLOW_E2E_PG": postgres_server.uri,
        "AIRFLOW_CONN_OPSFLOW_E2E_REDIS": redis_conn(redis_server, redis_server.password),
        "AIRFLOW_CONN_OPSFLOW_E2E_REDIS_BAD": redis_conn(redis_server, wrong),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "plugins"),
    }
    (airflow_home / "dags" / "opsflow_health_gate_e2e.py").write_text(
        DAG_FILE.format(url=health_http_server.url)
    )
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "dags", "test", "opsflow_health_gate_e2e"],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **env},
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert "Health gate passed after 2 rounds" in output, output[-4000:]
    assert "postgres opsflow_e2e_pg: SELECT 1 ok" in output
    # The first line names the failing check and its error: it is what the alert says.
    assert re.search(
        r"health gate failed after [23]s \(1 of 1 checks failing\): "
        r"redis opsflow_e2e_redis_bad: AuthenticationError",
        output,
    ), output[-4000:]
    assert "  - redis opsflow_e2e_redis_bad: AuthenticationError" in output
    assert completed.returncode != 0  # gate_bad failed the run
    for secret in (wrong, redis_server.password, postgres_server.password):
        assert secret not in output
