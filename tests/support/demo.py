"""The demo stack deployed for the end-to-end tests, and ways to look into it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import demo_copy
import pytest
import yaml

from opsflow.runtimes.compose import compose_base_argv
from support import REPO_ROOT, dag_tests
from support.services import free_port, get_json

# Each pytest worker (make test runs two) deploys its own copy of the demo: its own
# Compose project, ports, Airflow home, state dir and image names, so e2e modules on two
# workers never touch each other's containers or retag each other's images.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
E2E_PROJECT = f"opsflow-e2e-{WORKER}" if WORKER else "opsflow-e2e"
# Tests build and run the demo's images under their own names: a test run must never
# rebuild or retag an image a running `make demo` (prefix opsflow-demo) uses.
TEST_IMAGE_PREFIX = f"opsflow-test-{WORKER}" if WORKER else "opsflow-test"
DEMO_DIR = REPO_ROOT / "include" / "demo"
AIRFLOW_CLI = REPO_ROOT / "scripts" / "airflow"


SAME_RUN = """
import json, sys
from datetime import datetime
from airflow.utils.cli import get_bagged_dag
dag = get_bagged_dag(None, sys.argv[1])
when = datetime.fromisoformat(sys.argv[2])
run = dag.test(run_after=when, logical_date=when, run_conf=json.loads(sys.argv[3]))
sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
"""


@dataclass
class DemoDeployment:
    home: Path
    stacks: Path
    api_port: int
    env: dict[str, str]

    def dags_test(
        self,
        conf: dict[str, Any],
        *extra_env: dict[str, str],
        dag_id: str = "demo__deploy",
        logical_date: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = self._dags_test_argv(conf, dag_id, logical_date)
        if logical_date is None:  # the CLI's own `dags test`: served warm
            return dag_tests.dags_test(argv[1:], self._env(extra_env), self.env)
        return subprocess.run(
            argv, env=self._env(extra_env), capture_output=True, text=True, timeout=900,
            check=False,
        )  # fmt: skip

    def start_dags_test(
        self,
        conf: dict[str, Any],
        *extra_env: dict[str, str],
        dag_id: str = "demo__deploy",
        logical_date: str | None = None,
    ) -> subprocess.Popen[str]:
        """``dags test`` in the background, its output line by line as it happens."""
        return subprocess.Popen(
            self._dags_test_argv(conf, dag_id, logical_date),
            env={**self._env(extra_env), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def _dags_test_argv(
        self, conf: dict[str, Any], dag_id: str, logical_date: str | None
    ) -> list[str]:
        """``airflow dags test``; with a logical date, the same run every time.

        The CLI names each run after the moment it starts, so running it again never
        continues a run. With ``logical_date`` the DAG's own ``test()`` is called with it as
        the run's date too: a second call clears that run's tasks and runs them again,
        which is what clearing a run in the UI does.
        """
        if logical_date is None:
            return [str(AIRFLOW_CLI), "dags", "test", dag_id, "-c", json.dumps(conf)]
        python = str(REPO_ROOT / ".venv" / "bin" / "python")
        return [str(AIRFLOW_CLI), "--exec", python, "-c", SAME_RUN, dag_id, logical_date,
                json.dumps(conf)]  # fmt: skip

    def _env(self, extra_env: tuple[dict[str, str], ...]) -> dict[str, str]:
        env = dict(self.env)
        for more in extra_env:
            env.update(more)
        return env

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.api_port}{path}")

    def ensure_deployed(self) -> None:
        """Deploy 1.0.0 unless some release of the stack already answers."""
        try:
            self.get("/health/live")
        except OSError:
            result = self.dags_test({"version": "1.0.0"})
            assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    def reset(self) -> None:
        """Back to a machine that never ran the stack: no containers, volumes or ledger.

        Earlier modules (backups, crash recovery) leave releases and data behind; a test
        that starts from nothing asks for nothing explicitly instead of relying on order.
        """
        self.compose("down", "--volumes", "--remove-orphans")
        shutil.rmtree(self.env["OPSFLOW_STATE_DIR"], ignore_errors=True)

    def volume(self, name: str) -> Path:
        """Host path of one of the project's named volumes."""
        out = subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{E2E_PROJECT}_{name}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return Path(out.stdout.strip())

    def compose(self, *args: str) -> str:
        argv = [*compose_base_argv(E2E_PROJECT, DEMO_DIR, ["docker-compose.yml"], ".env"), *args]
        env = {**self.env, "OPSFLOW_VERSION": "0"}
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


def _demo_passwords() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEMO_DIR / ".env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def without_demo_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without anything that points Airflow or the demo elsewhere."""
    prefixes = ("AIRFLOW", "OPSFLOW_", "DEMO_")
    return {key: value for key, value in environ.items() if not key.startswith(prefixes)}


def prefixed_image(demo_ref: str, prefix: str = TEST_IMAGE_PREFIX) -> str:
    """``opsflow-demo/api`` -> ``opsflow-test/api``: a demo image name under a test's prefix."""
    return demo_copy.prefixed_image(demo_ref, prefix)


def _stack_file(api_port: int, target: Path) -> None:
    """The demo stack file, moved to its own project, ports and image names, with a quicker
    gate. The compose file takes the image names from ``DEMO_IMAGE_PREFIX`` (see env)."""
    stack = demo_copy.moved_demo_stack(E2E_PROJECT, TEST_IMAGE_PREFIX, api_port)
    stack["health_gate"] = {"consecutive": 2, "interval": "1s", "timeout": "20s"}
    target.write_text(yaml.safe_dump(stack, sort_keys=False))


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDeployment]:
    subprocess.run([str(DEMO_DIR / "make-env.sh")], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("e2e")
    home, stacks = root / "airflow-home", root / "stacks"
    stacks.mkdir()
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port()}
    _stack_file(ports["api"], stacks / "demo.yaml")
    passwords = _demo_passwords()
    env = {
        # Another module's fixture may have pointed this process's Airflow elsewhere
        # (support.airflow_home sets AIRFLOW_HOME and the database for its session).
        **without_demo_settings(os.environ),
        "OPSFLOW_AIRFLOW_HOME": str(home),
        "OPSFLOW_STACKS_DIR": str(stacks),
        "OPSFLOW_STATE_DIR": str(root / "state"),
        # The e2e tests put backups in pytest's temp dirs: allowed next to the defaults.
        "OPSFLOW_ALLOWED_ROOTS": (
            f"{tmp_path_factory.getbasetemp()}:/var/log/opsflow:/var/backups/opsflow"
        ),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "DEMO_API_PORT": str(ports["api"]),
        "DEMO_POSTGRES_PORT": str(ports["postgres"]),
        "DEMO_REDIS_PORT": str(ports["redis"]),
        "DEMO_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
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
    }
    migrate = subprocess.run(
        [str(AIRFLOW_CLI), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    deployment = DemoDeployment(home=home, stacks=stacks, api_port=ports["api"], env=env)
    deployment.compose("down", "--volumes", "--remove-orphans")
    try:
        yield deployment
    finally:
        deployment.compose("down", "--volumes", "--remove-orphans")
        shutil.rmtree(root, ignore_errors=True)


def demo_pg(deployment: DemoDeployment, dbname: str = "app") -> Any:
    """An autocommit connection to the e2e stack's PostgreSQL."""
    import psycopg

    conn = json.loads(deployment.env["AIRFLOW_CONN_DEMO_POSTGRES"])
    return psycopg.connect(
        host="127.0.0.1",
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=dbname,
        autocommit=True,
    )


def table_digests(deployment: DemoDeployment, dbname: str = "app") -> dict[str, tuple[int, str]]:
    """Row count and an ordered md5 of every row of every user table (plain SQL)."""
    from psycopg import sql

    with demo_pg(deployment, dbname) as conn:
        tables = list(
            conn.execute(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            )
        )
        digests = {}
        for table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} AS t"
            ).format(sql.Identifier(*table))
            row = conn.execute(query).fetchone()
            assert row is not None
            digests[".".join(table)] = (int(row[0]), str(row[1]))
    return digests
