"""docker-compose.airflow.yml resolves to the intended production stack, and only with secrets.

Runs the real ``docker compose config`` (no engine needed) in a scrubbed environment, so
variables of the caller's shell or a stray ``.env`` cannot make it pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.services import service_unavailable

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.airflow.yml"

SECRETS = {
    "AIRFLOW_DB_PASSWORD": "0123456789abcdef-db",
    "AIRFLOW_REDIS_PASSWORD": "0123456789abcdef-redis",
    "AIRFLOW_FERNET_KEY": "test-fernet-key",
    "AIRFLOW_API_SECRET_KEY": "test-api-secret",
    "AIRFLOW_JWT_SECRET": "test-jwt-secret",
    "AIRFLOW_ADMIN_PASSWORD": "test-admin-password",
}
REQUIRED = {**SECRETS, "DOCKER_GID": "4242", "OPSFLOW_APPS_DIR": "/srv/opsflow-apps"}

AIRFLOW_SERVICES = {
    "airflow-init",
    "api-server",
    "scheduler",
    "dag-processor",
    "triggerer",
    "worker",
}
LONG_RUNNING = {"postgres", "redis"} | (AIRFLOW_SERVICES - {"airflow-init"})


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module", autouse=True)
def _require_compose() -> None:
    if _compose_available():
        return
    service_unavailable("docker compose (v2) is not installed; run scripts/setup-docker.sh")


def _compose_config(variables: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    env = {key: os.environ[key] for key in ("PATH", "HOME", "DOCKER_HOST") if key in os.environ}
    env.update(variables)
    return subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            str(empty_env_file),
            "-f",
            str(COMPOSE_FILE),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = _compose_config(REQUIRED, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def test_services_are_the_production_set(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "redis"} | AIRFLOW_SERVICES


def test_airflow_services_use_celery_postgres_and_redis(config: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = config["services"][name]
        env = service["environment"]
        assert service["image"] == "opsflow/airflow:3.3.2", name
        assert service["build"]["dockerfile"] == "docker/airflow/Dockerfile", name
        assert service["build"]["network"] == "host", name
        assert env["AIRFLOW__CORE__EXECUTOR"] == (
            "CeleryExecutor,airflow.providers.edge3.executors.EdgeExecutor"
        ), name
        assert env["AIRFLOW__EDGE__API_ENABLED"] == "True", name
        db_password = SECRETS["AIRFLOW_DB_PASSWORD"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
            f"postgresql+psycopg2://airflow:{db_password}@postgres:5432/airflow"
        )
        redis_password = SECRETS["AIRFLOW_REDIS_PASSWORD"]
        assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:{redis_password}@redis:6379/0"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["AIRFLOW_FERNET_KEY"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__API__SECRET_KEY"] == SECRETS["AIRFLOW_API_SECRET_KEY"]
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    init_env = config["services"]["airflow-init"]["environment"]
    assert init_env["AIRFLOW_ADMIN_PASSWORD"] == SECRETS["AIRFLOW_ADMIN_PASSWORD"]
    assert config["services"]["airflow-init"]["entrypoint"] == ["airflow-init"]
    assert config["services"]["worker"]["command"] == ["celery", "worker"]


def test_project_folders_are_mounted_read_only(config: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        mounts = _mounts(config["services"][name])
        for folder in ("dags", "plugins", "include"):
            mount = mounts[f"/var/lib/airflow/{folder}"]
            assert mount["source"] == str(REPO / folder), (name, mount)
            assert mount.get("read_only") is True, (name, mount)


def test_only_the_worker_drives_the_host_engine(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        has_socket = "/var/run/docker.sock" in _mounts(service)
        assert has_socket == (name == "worker"), name
    worker = config["services"]["worker"]
    apps_dir = REQUIRED["OPSFLOW_APPS_DIR"]
    assert _mounts(worker)[apps_dir]["source"] == apps_dir
    assert worker["group_add"] == [REQUIRED["DOCKER_GID"]]


def test_ports_are_published_on_loopback_only(config: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in config["services"].items()
        for port in service.get("ports", [])
    ]
    assert [name for name, _ in published] == ["api-server"]
    for name, port in published:
        assert port["host_ip"] == "127.0.0.1", (name, port)
        assert port["target"] == 8080


def test_every_long_running_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        healthcheck = config["services"][name].get("healthcheck", {})
        assert healthcheck.get("test"), name
        assert not healthcheck.get("disable", False), name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends_on = config["services"][name]["depends_on"]
        assert depends_on["airflow-init"]["condition"] == "service_completed_successfully"
        assert depends_on["postgres"]["condition"] == "service_healthy"


def test_task_runners_start_after_the_api_server_answers(config: dict[str, Any]) -> None:
    # A task queued before the API server listens fails without running.
    for name in ("scheduler", "worker"):
        depends = config["services"][name]["depends_on"]
        assert depends["api-server"]["condition"] == "service_healthy", name
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name


def test_without_any_variable_config_fails_naming_one(tmp_path: Path) -> None:
    result = _compose_config({}, tmp_path)
    assert result.returncode != 0
    assert any(f"required variable {name} is missing" in result.stderr for name in REQUIRED), (
        result.stderr
    )


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_each_required_variable_is_enforced(missing: str, tmp_path: Path) -> None:
    variables = {key: value for key, value in REQUIRED.items() if key != missing}
    result = _compose_config(variables, tmp_path)
    assert result.returncode != 0
    assert f"required variable {missing} is missing" in result.stderr, result.stderr


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_empty_secret_is_refused(secret: str, tmp_path: Path) -> None:
    result = _compose_config({**REQUIRED, secret: ""}, tmp_path)
    assert result.returncode != 0
    assert secret in result.stderr, result.stderr


def test_celery_executor_imports_with_the_pinned_celery(tmp_path: Path) -> None:
    """The compose stack's executor must import: providers-celery breaks on some celery pins."""
    env = {"PATH": os.environ.get("PATH", ""), "AIRFLOW_HOME": str(tmp_path)}
    code = "import airflow.providers.celery.executors.celery_executor as m; print(m.app.main)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
