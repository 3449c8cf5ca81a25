"""The demo stack's releases behave as the deploy and upgrade DAGs' tests assume.

Real images, real containers: every release is built, migrated and started with the same
``docker compose`` commands the runtime uses, under the project ``opsflow-demotest`` on
free host ports so the real ``opsflow-demo`` project is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsflow.runtimes.compose import compose_base_argv
from support.demo import TEST_IMAGE_PREFIX
from support.services import get_json, service_unavailable

pytestmark = pytest.mark.integration

DEMO_DIR = Path(__file__).resolve().parents[2] / "include" / "demo"
PROJECT = "opsflow-demotest"
MIGRATE = ["alembic", "-c", "/app/alembic.ini", "upgrade", "head"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DemoStack:
    env_file: Path
    env: dict[str, str]

    @property
    def api_port(self) -> int:
        return int(self.env["DEMO_API_PORT"])

    def compose(
        self, version: str, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            *compose_base_argv(PROJECT, DEMO_DIR, ["docker-compose.yml"], str(self.env_file)),
            *args,
        ]
        result = subprocess.run(
            argv,
            env={**os.environ, **self.env, "OPSFLOW_VERSION": version},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)} ({version}) exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def deploy(self, version: str) -> None:
        """Build, migrate, start and wait for container health: the deploy DAG's steps."""
        self.compose(version, "build", timeout=900)
        self.compose(version, "run", "--rm", "--no-TTY", "api", *MIGRATE)
        self.compose(version, "up", "--detach", "--wait", "--no-build", "--remove-orphans")

    def reset(self) -> None:
        self.compose("none", "down", "--volumes", "--remove-orphans", timeout=120)

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.api_port}{path}")

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=int(self.env["DEMO_POSTGRES_PORT"]),
            user="app",
            password=self.env["POSTGRES_PASSWORD"],
            dbname="app",
            connect_timeout=5,
        ) as conn:
            return conn.execute(query).fetchall()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    if shutil.which("docker") is None:
        service_unavailable("docker CLI not found (run scripts/setup-docker.sh)")
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        service_unavailable(
            f"Docker Compose v2 missing (run scripts/setup-docker.sh): {probe.stderr}"
        )
    base = subprocess.run(
        ["docker", "image", "inspect", "debian:bookworm-slim"],
        capture_output=True,
        text=True,
        check=False,
    )
    if base.returncode != 0:
        service_unavailable(
            f"Docker or base image unavailable (run scripts/setup-docker.sh): {base.stderr}"
        )
    env = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "REDIS_PASSWORD": secrets.token_hex(16),
        "DEMO_API_PORT": str(_free_port()),
        "DEMO_POSTGRES_PORT": str(_free_port()),
        "DEMO_REDIS_PORT": str(_free_port()),
        "DEMO_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
    }
    env_file = tmp_path_factory.mktemp("demo") / "demo.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    stack = DemoStack(env_file=env_file, env=env)
    stack.reset()
    try:
        yield stack
    finally:
        stack.reset()


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def test_release_1_0_0_deploys_ready(demo: DemoStack) -> None:
    demo.reset()
    demo.deploy("1.0.0")

    status, body = demo.get("/health/ready")
    assert (status, body["status"]) == (200, "ready"), body
    assert body["schema"] == "0001"
    assert demo.get("/version") == (200, {"version": "1.0.0", "schema_head": "0001"})
    assert demo.get("/health/live") == (200, {"status": "live"})
    status, items = demo.get("/items")
    assert status == 200 and items["count"] == 3

    request = urllib.request.Request(
        f"http://127.0.0.1:{demo.api_port}/items",
        data=json.dumps({"name": "added"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        assert json.loads(response.read())["name"] == "added"
    assert demo.sql("SELECT name FROM items ORDER BY id DESC LIMIT 1") == [("added",)]


def test_upgrade_to_1_1_0_worker_writes_events(demo: DemoStack) -> None:
    if demo.get("/version")[1].get("version") != "1.0.0":
        demo.reset()
        demo.deploy("1.0.0")
    assert demo.sql("SELECT to_regclass('public.worker_events')") == [(None,)]
    items_before = demo.sql("SELECT count(*) FROM items")

    demo.deploy("1.1.0")

    status, body = demo.get("/health/ready")
    assert (status, body["status"], body["schema"]) == (200, "ready", "0002"), body
    assert demo.get("/version")[1]["version"] == "1.1.0"
    # Data of 1.0.0 survived the upgrade.
    assert demo.sql("SELECT count(*) FROM items") == items_before
    rows = _wait_for(
        lambda: (
            demo.sql("SELECT count(*) FROM worker_events WHERE note LIKE 'release 1.1.0 %'")[0][0]
            >= 2
        ),
        timeout=30,
        what="two worker_events rows written by the 1.1.0 worker",
    )
    assert rows is True


def test_never_ready_release_stays_503_while_live(demo: DemoStack) -> None:
    # Migrates cleanly and its containers turn healthy (liveness), but never ready.
    demo.deploy("1.2.0-never-ready")

    assert demo.get("/version")[1]["version"] == "1.2.0-never-ready"
    for _ in range(3):
        assert demo.get("/health/live") == (200, {"status": "live"})
        status, body = demo.get("/health/ready")
        assert status == 503, body
        assert body["status"] == "not-ready"
        assert any("0099" in reason for reason in body["reasons"]), body
        time.sleep(1)


def test_broken_migration_fails_and_leaves_db_at_0003(demo: DemoStack) -> None:
    version = "1.3.0-broken-migration"
    demo.compose(version, "build", timeout=900)

    result = demo.compose(version, "run", "--rm", "--no-TTY", "api", *MIGRATE, check=False)

    assert result.returncode != 0, result.stdout + result.stderr
    assert "Running upgrade 0002 -> 0003" in result.stderr
    assert "category" in result.stderr  # the invalid SQL of 0004
    assert demo.sql("SELECT version_num FROM alembic_version") == [("0003",)]
    # 0003 committed; 0004's table was rolled back with its transaction.
    assert demo.sql("SELECT to_regclass('public.audit_log') IS NOT NULL") == [(True,)]
    assert demo.sql("SELECT to_regclass('public.item_tags')") == [(None,)]
