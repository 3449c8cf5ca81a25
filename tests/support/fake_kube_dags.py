"""The demo's Kubernetes variant (``demo-k8s``) run by ``airflow dags test`` against the fake
API server and controllers of tests/support/fake_kube_*, for the end-to-end tier.

The fake plays the cluster; everything else is real: Airflow runs the DAGs (the gate and the
migration Job wait in its triggerer), the database pods' ports are forwarded through the
fake's port-forward streams to a real PostgreSQL and a real Redis on 127.0.0.1, backups are
verified in scratch containers on the real engine, a migration Job's pod runs a real
SQL migration against that PostgreSQL, and the log cleanup pod runs the real engine on a
host directory that stands for its claim.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO_ROOT
from support.demo import DemoDeployment
from support.fake_kube_api import FakeKubeApi
from support.fake_kube_claims import FAKE_CLAIM_POD_IMAGE, fake_claim_pod_runner
from support.fake_kube_controllers import FakeKubeCluster, FakeKubeControllers
from support.servers import PostgresServer, RedisServer

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
FAKE_NAMESPACE = f"opsflow-e2e-k8s-{WORKER}" if WORKER else "opsflow-e2e-k8s"
FAKE_DATABASE = "kdemo"
FAKE_CONN = "kube_fake"

# What each release's migration Job does to the real database: the schema the demo's
# alembic revisions create (include/demo/app/releases), and a half-applied failure.
FAKE_MIGRATIONS: dict[str, tuple[int, list[str]]] = {
    "1.0.0": (0, ["CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text)"]),
    "1.1.0": (
        0,
        ["CREATE TABLE IF NOT EXISTS worker_events (id serial PRIMARY KEY, at timestamptz)"],
    ),
    "1.2.0-never-ready": (0, []),
    "1.3.0-broken-migration": (1, ["CREATE TABLE half_applied_0003 (id int)"]),
}


@dataclass
class FakeKubeDemo:
    """``demo-k8s`` in a fake cluster, its DAGs run by the e2e deployment's Airflow."""

    deployment: DemoDeployment
    cluster: FakeKubeCluster
    stacks: Path
    work: Path
    backups: Path
    env: dict[str, str]
    pg: PostgresServer
    redis: RedisServer
    claims: dict[str, Path]  # claim -> the host directory that stands for it

    @property
    def state(self) -> Path:
        return Path(self.deployment.env["OPSFLOW_STATE_DIR"]) / "demo-k8s"

    def dags_test(self, dag: str, conf: dict[str, Any], *env: dict[str, str]) -> Any:
        return self.deployment.dags_test(conf, self.env, *env, dag_id=f"demo-k8s__{dag}")

    def deployment_of(self, name: str) -> dict[str, Any]:
        found = self.cluster.store.get("deployments", FAKE_NAMESPACE, name)
        assert found is not None, f"no Deployment {name}"
        return found

    def image(self, workload: str) -> str:
        return str(
            self.deployment_of(workload)["spec"]["template"]["spec"]["containers"][0]["image"]
        )

    def config_data(self) -> dict[str, str]:
        found = self.cluster.store.get("configmaps", FAKE_NAMESPACE, "opsflow-demo-config")
        assert found is not None
        return dict(found["data"])

    def entries(self) -> list[dict[str, Any]]:
        path = self.state / "ledger.jsonl"
        folded: dict[str, dict[str, Any]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            folded[entry["entry_id"]] = entry
        return list(folded.values())

    def last(self, action: str) -> dict[str, Any]:
        return max(
            (e for e in self.entries() if e["action"] == action), key=lambda e: e["started_at"]
        )

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            host=self.pg.host, port=self.pg.port, user=self.pg.user, password=self.pg.password,
            dbname=FAKE_DATABASE, autocommit=True,
        ) as conn:  # fmt: skip
            cursor = conn.execute(query)
            return list(cursor.fetchall()) if cursor.description else []


def _prepare_database(pg: PostgresServer) -> None:
    import psycopg

    with psycopg.connect(pg.uri, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {FAKE_DATABASE}")
        conn.execute(f"CREATE DATABASE {FAKE_DATABASE}")


@pytest.fixture(scope="module")
def fake_kube_demo(
    deployment: DemoDeployment,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    pg_image: str,
    redis_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FakeKubeDemo]:
    root = tmp_path_factory.mktemp("fake-kube")
    work, stacks, backups = root / "work", root / "stacks", root / "backups"
    shutil.copytree(REPO_ROOT / "include" / "demo" / "k8s", work / "k8s")
    for path in (work / "k8s").glob("*.yaml"):  # a stuck rollout gives up in seconds here
        path.write_text(
            path.read_text().replace("progressDeadlineSeconds: 120", "progressDeadlineSeconds: 6")
        )
    stacks.mkdir()
    _prepare_database(postgres_server)
    overlay = {
        "extends": str(REPO_ROOT / "include" / "stacks" / "demo-k8s.yaml"),
        "variants": [{"kind": "kubernetes", "namespace": FAKE_NAMESPACE, "kube_conn_id": FAKE_CONN,
                      "working_dir": str(work), "manifests": ["k8s"]}],
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "60s"},
        "backup": {
            "local_dir": str(backups),
            "sources": {
                "postgres": [{"name": "app_db", "conn_id": "kdemo_postgres", "service": "postgres",
                              "database": FAKE_DATABASE, "major_version": 15,
                              "verify_image": pg_image}],
                "redis": [{"name": "cache", "conn_id": "kdemo_redis", "service": "redis",
                           "verify_image": redis_image}],
            },
        },
    }  # fmt: skip
    (stacks / "demo-k8s.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    api = FakeKubeApi().start()
    controllers = FakeKubeControllers(api.store).start()
    api.store.create_namespace(FAKE_NAMESPACE)
    kubeconfig = api.write_kubeconfig(root / "kubeconfig.yaml", namespace=FAKE_NAMESPACE)
    cluster = FakeKubeCluster(api, controllers, kubeconfig, FAKE_NAMESPACE)
    service = "opsflow.io/service"
    api.route_port(
        FAKE_NAMESPACE, {service: "postgres"}, 5432, postgres_server.host, postgres_server.port
    )
    api.route_port(FAKE_NAMESPACE, {service: "redis"}, 6379, redis_server.host, redis_server.port)
    for version in FAKE_MIGRATIONS:
        controllers.job_handler(
            f"opsflow-demo/api:{version}", _release_job(postgres_server, version)
        )
    claims = {name: root / f"claim-{name}" for name in ("applogs", "redis-data")}
    for path in claims.values():
        path.mkdir()
    controllers.job_handler(
        FAKE_CLAIM_POD_IMAGE, fake_claim_pod_runner(claims, api, FAKE_NAMESPACE)
    )
    env = {
        "OPSFLOW_STACKS_DIR": str(stacks),
        f"AIRFLOW_CONN_{FAKE_CONN.upper()}": json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}
        ),
        # In a cluster these are the Services' names; the runtime forwards to their pods.
        "AIRFLOW_CONN_KDEMO_POSTGRES": json.dumps(
            {
                "conn_type": "postgres",
                "host": f"postgres.{FAKE_NAMESPACE}.svc",
                "port": 5432,
                "login": postgres_server.user,
                "password": postgres_server.password,
                "schema": FAKE_DATABASE,
            }
        ),
        "AIRFLOW_CONN_KDEMO_REDIS": json.dumps(
            {
                "conn_type": "redis",
                "host": f"redis.{FAKE_NAMESPACE}.svc",
                "port": 6379,
                "password": redis_server.password,
            }
        ),
    }
    demo = FakeKubeDemo(
        deployment, cluster, stacks, work, backups, env, postgres_server, redis_server, claims
    )
    try:
        yield demo
    finally:
        controllers.stop()
        api.stop()
        shutil.rmtree(demo.state, ignore_errors=True)


def _release_job(
    pg: PostgresServer, version: str
) -> Callable[[list[str], dict[str, str]], tuple[int, str]]:
    """The migration Job pod of ``version``: its SQL runs for real on the database."""

    def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        import psycopg

        code, statements = FAKE_MIGRATIONS[version]
        with psycopg.connect(
            host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=FAKE_DATABASE,
            autocommit=True,
        ) as conn:  # fmt: skip
            for statement in statements:
                conn.execute(statement)
        said = f"{' '.join(argv)}: release {version}, {len(statements)} statement(s)\n"
        return code, said + ("revision 0004 failed: relation missing\n" if code else "done\n")

    return run
