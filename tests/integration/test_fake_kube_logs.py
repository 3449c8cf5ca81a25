"""Log roots on a PersistentVolumeClaim of a Kubernetes stack, cleaned by a pod that mounts
the claim, against the fake API server and controllers (tests/support/fake_kube_*): the
claim's ownership is checked, the pod is created as the writers' user on their node and
deleted afterwards, and the file engine's decisions are real on a host directory that stands
for the claim (tests/support/fake_kube_claims.py)."""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes import KubernetesCluster
from opsflow.runtimes.kubernetes_claim_pods import ROLE_LABEL
from opsflow.runtimes.kubernetes_logs import ROLE
from support.fake_kube_claims import FAKE_CLAIM_POD_IMAGE, fake_claim_pod_runner
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster
from support.fake_kube_stack import FAKE_NS as NS
from support.fake_kube_stack import fake_kdemo

__all__ = ["fake_kdemo", "fake_kube_cluster"]

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0
RULE = {
    "patterns": ["*.log", "*.log.*"],
    "compress_after_days": 1,
    "delete_after_days": 14,
    "delete_uncompressed": False,
    "max_total_bytes": None,
    "min_age_minutes": 10,
    "compression": "gzip",
    "remove_empty_dated_dirs": True,
}
log = logging.getLogger("test")


@pytest.fixture
def fake_kdemo_logs(
    fake_kdemo: tuple[KubernetesCluster, FakeKubeCluster, Path], tmp_path: Path
) -> Iterator[tuple[KubernetesCluster, FakeKubeCluster, Path]]:
    """The demo's Kubernetes variant deployed at 1.0.0, and the host directory that stands
    for its claim ``applogs``."""
    runtime, cluster, _ = fake_kdemo
    runtime.run("start", "1.0.0", log)
    cluster.wait_for("api pods", lambda: _writers(cluster), 30)
    claim_dir = tmp_path / "claim-applogs"
    claim_dir.mkdir()
    runner = fake_claim_pod_runner(
        {"applogs": claim_dir, "data-postgres-0": claim_dir}, cluster.api, NS
    )
    cluster.controllers.job_handler(FAKE_CLAIM_POD_IMAGE, runner)
    yield runtime, cluster, claim_dir


def _writers(cluster: FakeKubeCluster) -> list[dict[str, Any]]:
    return [
        pod
        for pod in cluster.store.list("pods", NS)
        if any(
            (v.get("persistentVolumeClaim") or {}).get("claimName") == "applogs"
            for v in pod["spec"].get("volumes") or []
        )
    ]


def _file(path: Path, age_days: float, text: str = "line\n" * 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    moment = time.time() - age_days * DAY
    os.utime(path, (moment, moment))
    return path


def _created_cleanup_pods(cluster: FakeKubeCluster) -> list[dict[str, Any]]:
    """The cleanup pods the product sent, as the server received them."""
    return [
        r.body
        for r in cluster.api.requests
        if r.method == "POST" and r.path.endswith("/pods")
        and (r.body["metadata"].get("labels") or {}).get(ROLE_LABEL) == ROLE
    ]  # fmt: skip


def _cleanup_pods(cluster: FakeKubeCluster) -> list[dict[str, Any]]:
    return cluster.store.list("pods", NS, f"{ROLE_LABEL}={ROLE}")


def test_fake_claim_root_is_cleaned_by_a_pod_as_the_writers_user(fake_kdemo_logs: Any) -> None:
    runtime, cluster, claim = fake_kdemo_logs
    rotated = _file(claim / "api-abc12" / "api.log.1", age_days=3)
    expired = _file(claim / "api-old99" / "api.log.2.gz", age_days=20)
    current = _file(claim / "api-abc12" / "api.log", age_days=0)
    report = runtime.clean_claim("applogs", "", RULE, dry_run=False, log=log)

    assert report["status"] == "ok", report
    assert (report["compressed"], report["deleted"]) == (1, 1)
    assert report["root"] == "claim:applogs" and "min_age_minutes" in report["note"]
    assert not rotated.exists() and not expired.exists() and current.exists()
    (packed,) = (claim / "api-abc12").glob("api.log.1*.gz")
    assert gzip.decompress(packed.read_bytes()) == b"line\n" * 200
    # The pod ran as the writers' user, with the claim mounted, and is gone afterwards.
    (pod,) = _created_cleanup_pods(cluster)
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert pod["spec"]["securityContext"]["fsGroup"] == 10001
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == ["applogs"]
    assert "affinity" not in pod["spec"]  # ReadWriteMany: any node may mount it
    assert _cleanup_pods(cluster) == []


def test_fake_claim_dry_run_changes_nothing(fake_kdemo_logs: Any) -> None:
    runtime, cluster, claim = fake_kdemo_logs
    rotated = _file(claim / "api-abc12" / "api.log.1", age_days=3)
    before = rotated.read_bytes()
    report = runtime.clean_claim("applogs", "", RULE, dry_run=True, log=log)
    assert report["dry_run"] and report["compressed"] == 1
    assert rotated.read_bytes() == before
    assert list(claim.rglob("*.gz")) == []
    assert _cleanup_pods(cluster) == []


def test_fake_claim_root_refuses_what_the_stack_does_not_own(fake_kdemo_logs: Any) -> None:
    runtime, cluster, _ = fake_kdemo_logs
    cluster.store.create(
        "persistentvolumeclaims",
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "someone-elses", "namespace": NS},
         "spec": {"accessModes": ["ReadWriteOnce"],
                  "resources": {"requests": {"storage": "1Gi"}}}},
        namespace=NS,
    )  # fmt: skip
    with pytest.raises(RuntimeFailure, match=r"someone-elses .* is not stack kdemo's"):
        runtime.clean_claim("someone-elses", "", RULE, dry_run=False, log=log)
    with pytest.raises(RuntimeFailure, match="claim nowhere does not exist"):
        runtime.clean_claim("nowhere", "", RULE, dry_run=False, log=log)
    assert _cleanup_pods(cluster) == []


def test_fake_claim_of_a_statefulset_is_cleaned_on_the_writers_node(fake_kdemo_logs: Any) -> None:
    runtime, cluster, claim = fake_kdemo_logs
    cluster.wait_for(
        "postgres claim", lambda: cluster.store.get("persistentvolumeclaims", NS, "data-postgres-0")
    )
    cluster.wait_for("postgres pod", lambda: cluster.store.get("pods", NS, "postgres-0"))
    node = cluster.store.get("pods", NS, "postgres-0")["spec"]["nodeName"]
    _file(claim / "pg_log" / "postgresql-2026-11-01.log", age_days=30)
    report = runtime.clean_claim("data-postgres-0", "pg_log", RULE, dry_run=False, log=log)
    assert report["status"] == "ok" and report["compressed"] == 1, report
    assert report["root"] == "claim:data-postgres-0/pg_log"
    terms = _created_cleanup_pods(cluster)[0]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    ]


def test_fake_claim_pod_that_cannot_pull_its_image_fails_naming_why(fake_kdemo_logs: Any) -> None:
    runtime, cluster, claim = fake_kdemo_logs
    cluster.controllers.fail_image(FAKE_CLAIM_POD_IMAGE, "image_pull")
    _file(claim / "api-abc12" / "api.log.1", age_days=3)
    with pytest.raises(
        RuntimeFailure, match=r"pod kdemo-log-cleanup-.*(ErrImagePull|ImagePullBackOff)"
    ):
        runtime.clean_claim("applogs", "", RULE, dry_run=False, log=log)
    assert _cleanup_pods(cluster) == []
    assert (claim / "api-abc12" / "api.log.1").exists()
