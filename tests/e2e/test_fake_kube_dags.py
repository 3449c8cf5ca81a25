"""End to end on Kubernetes: the ``demo-k8s`` DAGs through ``airflow dags test`` against the
fake API server and controllers (tests/support/fake_kube_*; a fake because no cluster can
run on these machines), with a real PostgreSQL and Redis behind the database pods' forwarded
ports and real scratch containers verifying the backups.

The tests run in file order: deploy 1.0.0, upgrade to 1.1.0, a backup verified, that backup
restored with the writers scaled down and back, a release that never becomes available
rolled back with its ConfigMap and image as before, a release whose migration Job fails
rolled back with the database restored, the Redis dump restored into its claim through a pod
that mounts it, and the log files on the claim applogs cleaned by a pod that mounts it, with
what the cluster keeps out of reach said in the summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.backup import pg_image, redis_image
from support.fake_kube_dags import FAKE_NAMESPACE, FakeKubeDemo, fake_kube_demo
from support.receivers import HttpCapture, SmtpCapture, alert_connections
from support.servers import postgres_server, redis_server
from support.services import free_port, wait_for_redis

pytestmark = pytest.mark.e2e
__all__ = ["fake_kube_demo", "pg_image", "postgres_server", "redis_image", "redis_server"]


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _alert(receiver: HttpCapture, dag_id: str) -> dict[str, Any]:
    receiver.wait_for(1)
    bodies = [b for b in receiver.json_bodies() if b.get("dag_id") == dag_id]
    assert len(bodies) == 1, receiver.requests
    return bodies[0]


def test_fake_deploy_1_0_0_applies_the_release_and_migrates_in_a_job(
    fake_kube_demo: FakeKubeDemo,
) -> None:
    kube = fake_kube_demo
    result = kube.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    assert kube.image("api") == "opsflow-demo/api:1.0.0"
    assert kube.image("worker") == "opsflow-demo/worker:1.0.0"
    # The migration ran as a Job whose pod log reached the task log; it was deleted after.
    assert "release 1.0.0, 1 statement(s)" in out
    assert kube.cluster.store.list("jobs", FAKE_NAMESPACE) == []
    assert kube.sql("SELECT to_regclass('items') IS NOT NULL") == [(True,)]
    entry = kube.last("deploy")
    assert entry["outcome"] == "succeeded"
    assert entry["images"]["api"]["id"] == "opsflow-demo/api:1.0.0"
    # The exact objects sent are in the ledger's config store, as the cluster got them.
    digest = re.search(r"objects to apply recorded in the config store as (\w{12})", out)
    assert digest, out[-4000:]
    (stored,) = (kube.state / "configs").glob(f"{digest[1]}*.tar")
    with tarfile.open(stored) as tar:
        handle = tar.extractfile("kubernetes/applied.yaml")
        assert handle is not None
        applied = [o for o in yaml.safe_load_all(handle.read()) if o]
    (api,) = [o for o in applied if o["kind"] == "Deployment" and o["metadata"]["name"] == "api"]
    live = kube.deployment_of("api")["spec"]["template"]
    assert api["spec"]["template"]["metadata"] == live["metadata"]
    images = [c["image"] for c in api["spec"]["template"]["spec"]["containers"]]
    assert images == [c["image"] for c in live["spec"]["containers"]] == ["opsflow-demo/api:1.0.0"]


def test_fake_upgrade_to_1_1_0_waits_for_the_whole_rollout(fake_kube_demo: FakeKubeDemo) -> None:
    kube = fake_kube_demo
    result = kube.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    assert "rollout deployment/api" in out  # the gate followed the rollout itself
    assert kube.image("api") == "opsflow-demo/api:1.1.0"
    status = kube.deployment_of("api")["status"]
    assert status["updatedReplicas"] == status["availableReplicas"] == status["replicas"] == 2
    assert "running now (as the engine reports it): api, worker run 1.1.0" in out, out[-4000:]
    assert kube.last("upgrade")["outcome"] == "succeeded"


def test_fake_backup_streams_through_the_pods_and_is_verified(fake_kube_demo: FakeKubeDemo) -> None:
    kube = fake_kube_demo
    kube.sql("INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 500) AS g")
    with _redis(kube) as cache:
        cache.flushall()
        cache.mset({f"session:{n}": f"user {n}" for n in range(40)})
    result = kube.dags_test("backup", {})
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    found = [json.loads(p.read_text()) for p in kube.backups.rglob("manifest.json")]
    (manifest,) = [m for m in found if m["trigger"] == "manual"] or [None]
    assert manifest is not None, out[-4000:]
    sources = {source["name"]: source for source in manifest["sources"]}
    for name in ("app_db", "cache"):
        assert sources[name]["verification"]["status"] == "passed", sources[name]
    assert sources["app_db"]["fingerprint"]["tables"]["public.items"]["rows"] == 500
    forwards = [r for r in kube.cluster.api.requests if r.path.endswith("/portforward")]
    assert forwards, "the dump did not go through a port-forward of the database pod"


def test_fake_restore_stops_the_writers_and_puts_the_rows_back(
    fake_kube_demo: FakeKubeDemo,
) -> None:
    kube = fake_kube_demo
    found = [json.loads(p.read_text()) for p in kube.backups.rglob("manifest.json")]
    (backup,) = [m["backup_id"] for m in found if m["trigger"] == "manual"]
    kube.sql("DELETE FROM items WHERE id % 5 = 0")
    assert kube.sql("SELECT count(*) FROM items") == [(400,)]
    conf = {"backup_id": backup, "sources": ["app_db"], "confirm": "demo-k8s"}
    result = kube.dags_test("restore", conf)
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    assert kube.sql("SELECT count(*) FROM items") == [(500,)]
    # The writers were scaled to 0 for the restore and back to their replicas after.
    assert "scaled apps/v1/Deployment/api to 0" in out
    assert "scaled apps/v1/Deployment/api to 2" in out
    assert kube.deployment_of("api")["spec"]["replicas"] == 2


def test_fake_redis_restore_writes_the_dump_into_its_claim_through_a_pod(
    fake_kube_demo: FakeKubeDemo,
) -> None:
    kube = fake_kube_demo
    found = [json.loads(p.read_text()) for p in kube.backups.rglob("manifest.json")]
    (manifest,) = [m for m in found if m["trigger"] == "manual"]
    (cache,) = [s for s in manifest["sources"] if s["name"] == "cache"]
    assert cache["fingerprint"]["keys"] == 40
    conf = {"backup_id": manifest["backup_id"], "sources": ["cache"], "confirm": "demo-k8s"}
    result = kube.dags_test("restore", conf)
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    assert "into claim redis-data through pod" in out
    # Redis was scaled down while its file was replaced, and back after.
    assert "scaled apps/v1/Deployment/redis to 0" in out
    assert kube.deployment_of("redis")["spec"]["replicas"] == 1
    restored = kube.claims["redis-data"] / "dump.rdb"
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600
    # A real Redis loads the file that arrived: the keys the backup held.
    with _redis_on(restored.parent) as loaded:
        assert loaded.dbsize() == 40
        assert loaded.get("session:7") == b"user 7"
    pods = kube.cluster.store.list("pods", FAKE_NAMESPACE, "opsflow.io/role=restore")
    assert pods == []


@contextlib.contextmanager
def _redis(kube: FakeKubeDemo) -> Iterator[Any]:
    import redis

    client = redis.Redis(kube.redis.host, kube.redis.port, password=kube.redis.password)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _redis_on(data_dir: Path) -> Iterator[Any]:
    """A real redis-server loading ``data_dir``'s dump.rdb (from a copy: it may rewrite it)."""
    import redis

    copy = data_dir.parent / f"{data_dir.name}-loaded"
    shutil.copytree(data_dir, copy)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(copy)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis("127.0.0.1", port)
    try:
        wait_for_redis(client, server, "redis-server on the restored dump")
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(copy, ignore_errors=True)


def test_fake_never_available_release_is_rolled_back_with_its_configmap_and_image(
    fake_kube_demo: FakeKubeDemo, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    kube = fake_kube_demo
    kube.cluster.controllers.fail_image("opsflow-demo/api:1.2.0-never-ready", "progress_deadline")
    before = kube.config_data()
    config = kube.work / "k8s" / "00-config.yaml"
    original = config.read_text()
    # The operator changes the config for the new release, then upgrades.
    config.write_text(
        original.replace('WORKER_INTERVAL_SECONDS: "3"', 'WORKER_INTERVAL_SECONDS: "7"')
    )
    assert config.read_text() != original

    result = kube.dags_test(
        "upgrade", {"version": "1.2.0-never-ready"}, alert_connections(smtp_server, http_receiver)
    )
    out = out_of(result)
    assert result.returncode != 0, out[-6000:]
    assert "exceeded its progress deadline" in out, out[-6000:]
    assert kube.image("api") == "opsflow-demo/api:1.1.0"
    assert kube.config_data() == before
    assert config.read_text() == original  # the manifest on disk is put back too
    entry = kube.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    alert = _alert(http_receiver, "demo-k8s__upgrade")
    assert "rolled back to 1.1.0; healthy" in alert["error"]


def test_fake_failed_migration_job_is_kept_and_the_database_restored(
    fake_kube_demo: FakeKubeDemo,
) -> None:
    kube = fake_kube_demo
    rows = kube.sql("SELECT count(*) FROM items")
    result = kube.dags_test("upgrade", {"version": "1.3.0-broken-migration"})
    out = out_of(result)
    assert result.returncode != 0, out[-6000:]
    (kept,) = kube.cluster.store.list("jobs", FAKE_NAMESPACE)
    assert f"Job {kept['metadata']['name']} failed" in out
    assert "revision 0004 failed" in out
    # The half-applied migration is undone by the pre-upgrade backup.
    assert kube.sql("SELECT to_regclass('half_applied_0003') IS NULL") == [(True,)]
    assert kube.sql("SELECT count(*) FROM items") == rows
    assert kube.image("api") == "opsflow-demo/api:1.1.0"
    assert kube.last("upgrade")["outcome"] == "rolled-back"


def test_fake_log_cleanup_cleans_the_claim_and_says_what_is_out_of_reach(
    fake_kube_demo: FakeKubeDemo,
) -> None:
    kube = fake_kube_demo
    day = 86400.0
    pod_dir = kube.claims["applogs"] / "api-7d9f-abcde"
    pod_dir.mkdir()
    rotated, expired, current = (pod_dir / n for n in ("api.log.1", "api.log.2.gz", "api.log"))
    for path, age in ((rotated, 3), (expired, 20), (current, 0)):
        path.write_text("request served\n" * 100)
        os.utime(path, (time.time() - age * day,) * 2)
    dry = kube.dags_test("log_cleanup", {"dry_run": True})
    assert dry.returncode == 0, out_of(dry)[-6000:]
    assert "claim:applogs: ok; would compress 1, would delete 1" in out_of(dry)
    assert rotated.exists() and expired.exists()

    result = kube.dags_test("log_cleanup", {"dry_run": False})
    out = out_of(result)
    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: demo-k8s -> SUCCEEDED" in out
    assert "claim:applogs: ok; compress 1, delete 1" in out
    assert "claim:applogs: NOTE files the writers hold open are not visible" in out
    assert not rotated.exists() and not expired.exists() and current.exists()
    assert len(list(pod_dir.glob("api.log.1*.gz"))) == 1
    # What the cluster keeps to itself is said, not skipped in silence.
    assert "out of reach: container logs are the kubelet's" in out
    assert "out of reach: images live on the cluster's nodes" in out
    assert kube.cluster.store.list("pods", FAKE_NAMESPACE, "opsflow.io/role=log-cleanup") == []
