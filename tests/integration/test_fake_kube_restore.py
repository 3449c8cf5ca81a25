"""A restored file written into a Kubernetes stack's claim by a pod that mounts it and
receives the bytes through a port-forward, against the fake API server and controllers
(tests/support/fake_kube_*): the receiver runs as a real isolated interpreter on a host
directory that stands for the claim (tests/support/fake_kube_claims.py), so the atomic
replace, the kept owner and mode and the checks on what arrived are real."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes import KubernetesCluster
from opsflow.runtimes.kubernetes_claim_pods import ROLE_LABEL
from opsflow.runtimes.kubernetes_restore import ROLE
from support.fake_kube_claims import FAKE_CLAIM_POD_IMAGE, fake_claim_pod_runner
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster
from support.fake_kube_stack import FAKE_NS as NS
from support.fake_kube_stack import fake_kdemo, fake_rolled_out

__all__ = ["fake_kdemo", "fake_kube_cluster"]

log = logging.getLogger("test")


@pytest.fixture
def fake_kdemo_redis(
    fake_kdemo: tuple[KubernetesCluster, FakeKubeCluster, Path], tmp_path: Path
) -> Iterator[tuple[KubernetesCluster, FakeKubeCluster, Path]]:
    """The demo's Kubernetes variant at 1.0.0 and the directory standing for redis-data."""
    runtime, cluster, _ = fake_kdemo
    runtime.run("start", "1.0.0", log)
    cluster.wait_for("1.0.0 rolled out", lambda: fake_rolled_out(runtime), 30)
    claim = tmp_path / "claim-redis-data"
    claim.mkdir()
    runner = fake_claim_pod_runner({"redis-data": claim}, cluster.api, NS)
    cluster.controllers.job_handler(FAKE_CLAIM_POD_IMAGE, runner)
    yield runtime, cluster, claim


def _restore_pods(cluster: FakeKubeCluster) -> list[dict[str, Any]]:
    return cluster.store.list("pods", NS, f"{ROLE_LABEL}={ROLE}")


def test_fake_file_is_written_into_the_services_claim_keeping_its_mode(
    fake_kdemo_redis: Any,
) -> None:
    runtime, cluster, claim = fake_kdemo_redis
    old = claim / "dump.rdb"
    old.write_bytes(b"REDIS0011 old")
    old.chmod(0o640)
    payload = bytes(range(256)) * 4096  # 1 MiB, several chunks through the forward
    with runtime.data_dir_to_write("redis", "/data", "1.0.0", log) as local:
        assert local != claim
        (local / "dump.rdb").write_bytes(payload)
    assert old.read_bytes() == payload
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    assert sorted(p.name for p in claim.iterdir()) == ["dump.rdb"]  # no temporary left
    assert _restore_pods(cluster) == []
    forwards = [r for r in cluster.api.requests if r.path.endswith("/portforward")]
    assert forwards, "the bytes did not go through a port-forward of the receiving pod"


def test_fake_file_without_a_claim_at_the_target_is_refused_naming_why(
    fake_kdemo_redis: Any,
) -> None:
    runtime, cluster, _ = fake_kdemo_redis
    with (
        pytest.raises(RuntimeFailure, match=r"api's /var/log/opsflow-demo is on no"),
        runtime.data_dir_to_write("api", "/var/log/opsflow-demo", "1.0.0", log) as local,
    ):
        (local / "api.log").write_text("never sent\n")
    assert _restore_pods(cluster) == []
