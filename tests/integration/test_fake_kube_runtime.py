"""The Kubernetes runtime against the fake API server and controllers
(tests/support/fake_kube_*): the demo's real manifests (include/demo/k8s) applied, rolled
out, pruned, scaled, migrated by a Job and forwarded to, through the provider's hook and
the real clients. What only a real cluster could prove is named in the README."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.connections import Endpoint
from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes import KubernetesCluster
from opsflow.runtimes.registry import runtime_context
from opsflow.triggers.health import gate_round
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster
from support.fake_kube_stack import FAKE_NS as NS
from support.fake_kube_stack import fake_kdemo, fake_rolled_out, fake_running_images

__all__ = ["fake_kdemo", "fake_kube_cluster"]

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("test")


def deployed(runtime: KubernetesCluster, cluster: FakeKubeCluster, version: str) -> None:
    runtime.run("start", version, log)
    cluster.wait_for(f"release {version} rolled out", lambda: fake_rolled_out(runtime), 30)


def test_fake_release_is_applied_rolled_out_and_reported_as_running(fake_kdemo: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    runtime.run("fetch", "1.0.0", log)  # a server-side dry run stores nothing
    assert cluster.store.list("deployments", NS) == []
    deployed(runtime, cluster, "1.0.0")
    assert fake_running_images(runtime)["api"] == {"opsflow-demo/api:1.0.0"}
    assert fake_running_images(runtime)["postgres"] == {"opsflow-demo/postgres:15"}
    applies = [r for r in cluster.api.requests if r.method == "PATCH" and "dryRun" not in r.query]
    assert applies and {r.param("fieldManager") for r in applies} == {"opsflow"}
    assert {r.content_type for r in applies} == {"application/apply-patch+yaml"}
    assert runtime.applied("1.0.0") == runtime.applied("1.0.0")  # the same bytes every time


def test_fake_upgrade_is_not_done_until_every_old_replica_is_gone(fake_kdemo: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    runtime.run("start", "1.1.0", log)
    seen_pending = cluster.wait_for(
        "a rollout seen in the middle",
        lambda: [s for s in asyncio.run(runtime.context().rollouts()) if not s.done],
        10,
    )
    assert seen_pending[0].failure is None
    cluster.wait_for("1.1.0 rolled out", lambda: fake_rolled_out(runtime), 30)
    assert fake_running_images(runtime)["api"] == {"opsflow-demo/api:1.1.0"}
    assert fake_running_images(runtime)["worker"] == {"opsflow-demo/worker:1.1.0"}


def test_fake_release_without_an_object_prunes_it_but_never_a_volume_claim(fake_kdemo: Any) -> None:
    runtime, cluster, work = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    assert cluster.store.get("poddisruptionbudgets", NS, "api") is not None
    for path in (work / "k8s").glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        kept = [
            d for d in docs if d["kind"] not in ("PodDisruptionBudget", "PersistentVolumeClaim")
        ]
        path.write_text(yaml.safe_dump_all(kept))
    runtime.run("start", "1.0.0", log)
    assert cluster.store.get("poddisruptionbudgets", NS, "api") is None
    assert cluster.store.get("persistentvolumeclaims", NS, "redis-data") is not None


def test_fake_stop_and_resume_put_back_the_replicas(fake_kdemo: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    runtime.run("stop", "1.0.0", log, services=["api", "worker"])
    assert cluster.store.get("deployments", NS, "api")["spec"]["replicas"] == 0
    cluster.wait_for(
        "api and worker pods gone",
        lambda: not {"api", "worker"} & set(fake_running_images(runtime)),
        10,
    )
    assert runtime.running_services(["api", "worker", "redis"]) == ["redis"]
    runtime.run("resume", "1.0.0", log, services=["api", "worker"])
    assert cluster.store.get("deployments", NS, "api")["spec"]["replicas"] == 2
    cluster.wait_for("api back", lambda: fake_rolled_out(runtime), 20)


def test_fake_migration_job_logs_and_is_deleted_or_kept_named(fake_kdemo: Any, caplog: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    cluster.controllers.job_handler(
        "opsflow-demo/api:1.1.0", lambda argv, env: (0, f"ran {' '.join(argv)}\n")
    )
    cluster.controllers.job_handler(
        "opsflow-demo/api:1.3.0-broken-migration", lambda argv, env: (1, "0004 failed\n")
    )
    caplog.set_level(logging.INFO, logger="test")
    runtime.run("migrate", "1.1.0", log)
    assert "ran alembic -c /app/alembic.ini upgrade head" in caplog.text
    assert cluster.store.list("jobs", NS) == []
    with pytest.raises(
        RuntimeFailure, match=r"Job kdemo-migrate-1-3-0-broken-migration-\w+ failed"
    ):
        runtime.run("migrate", "1.3.0-broken-migration", log)
    (kept,) = cluster.store.list("jobs", NS)
    assert kept["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "opsflow-demo/api:1.3.0-broken-migration"
    )
    assert "0004 failed" in caplog.text


def test_fake_crash_loop_and_progress_deadline_end_a_gate_round(fake_kdemo: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    cluster.controllers.fail_image("opsflow-demo/api:1.4.0-crash-at-start", "crash_loop")
    runtime.run("start", "1.4.0-crash-at-start", log)
    context = runtime_context(runtime.context().to_dict())

    def evidence() -> list[Any]:
        return asyncio.run(gate_round([], context, ["api"], {})).evidence

    found = cluster.wait_for("crash-loop evidence", evidence, 15)
    assert "crash loop" in found[0].detail and found[0].service == "api"


def test_fake_image_that_cannot_be_pulled_ends_a_gate_round_naming_the_pod(fake_kdemo: Any) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    cluster.controllers.fail_image("opsflow-demo/api:9.9.9", "image_pull")
    runtime.run("start", "9.9.9", log)
    context = runtime_context(runtime.context().to_dict())

    def evidence() -> list[Any]:
        return asyncio.run(gate_round([], context, ["api"], {})).evidence

    found = cluster.wait_for("image pull evidence", evidence, 15)
    assert found[0].container.startswith("api-") and found[0].container.endswith("/api")
    assert "cannot start: " in found[0].detail
    assert any(reason in found[0].detail for reason in ("ImagePullBackOff", "ErrImagePull"))


def test_fake_progress_deadline_is_conclusive(fake_kdemo: Any) -> None:
    runtime, cluster, work = fake_kdemo
    cluster.controllers.fail_image("opsflow-demo/api:1.2.0-never-ready", "progress_deadline")
    for path in (work / "k8s").glob("*.yaml"):
        path.write_text(
            path.read_text().replace("progressDeadlineSeconds: 120", "progressDeadlineSeconds: 1")
        )
    deployed(runtime, cluster, "1.0.0")
    runtime.run("start", "1.2.0-never-ready", log)
    context = runtime_context(runtime.context().to_dict())

    def failed() -> list[Any]:
        return [r for r in asyncio.run(context.rollouts()) if r.failure]

    (state,) = cluster.wait_for("a progress deadline", failed, 15)
    assert (state.kind, state.name) == ("Deployment", "api")
    assert state.failure.startswith("exceeded its progress deadline (1s)")


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    yield int(server.getsockname()[1])
    server.close()


def test_fake_reach_streams_to_a_ready_pod_of_the_service(
    fake_kdemo: Any, echo_server: int
) -> None:
    runtime, cluster, _ = fake_kdemo
    deployed(runtime, cluster, "1.0.0")
    cluster.api.route_port(NS, {"opsflow.io/service": "postgres"}, 5432, "127.0.0.1", echo_server)
    given = Endpoint(host="postgres.opsflow.svc", port=5432, login="app", password="s3cret")
    with runtime.reach("postgres", given) as endpoint:
        assert (endpoint.host, endpoint.login, endpoint.password) == ("127.0.0.1", "app", "s3cret")
        for _ in range(2):  # every connection gets its own stream
            with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as conn:
                conn.sendall(b"select 1")
                assert conn.recv(100) == b"SELECT 1"
