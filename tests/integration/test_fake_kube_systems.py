"""The Kubernetes variants of ai-doc, Backend2 and kratos operated by the runtime against the
fake API server and controllers (tests/support/fake_kube_*): each system's own manifests
(include/replicas/<system>/k8s) checked by a server-side dry run, deployed at 1.0.0 and
upgraded to 1.1.0, the gate's rollout rules followed to the end, and stop/resume putting
back each workload's replicas. The HPA-owned ai-doc backend keeps the count the autoscaler
set. Pods are the fake kubelet's: what the containers do is a real cluster's to prove."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.runtimes.kubernetes import KubernetesCluster
from opsflow.runtimes.kubernetes_manifests import workload_of
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster
from support.fake_kube_stack import FAKE_NS as NS
from support.fake_kube_stack import fake_rolled_out, fake_running_images, fake_stack_runtime

__all__ = ["fake_kube_cluster"]

REPO = Path(__file__).resolve().parents[2]
SYSTEMS = ("ai-doc", "backend2", "kratos")
log = logging.getLogger("test")


@pytest.fixture(params=SYSTEMS)
def fake_system(
    request: pytest.FixtureRequest,
    fake_kube_cluster: FakeKubeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[KubernetesCluster, FakeKubeCluster]]:
    """``<system>-k8s`` with its variant pointed at the fake cluster and a copy of the
    system's manifests; everything else as the stack files say."""
    system = request.param
    base = yaml.safe_load((REPO / "include" / "stacks" / f"{system}.yaml").read_text())
    (variant,) = [v for v in base["variants"] if v["kind"] == "kubernetes"]
    runtime, _ = fake_stack_runtime(
        fake_kube_cluster, tmp_path, monkeypatch, name=f"{system}-fake",
        extends=REPO / "include" / "stacks" / f"{system}-k8s.yaml",
        manifests=REPO / "include" / "replicas" / system / "k8s", variant=variant,
    )  # fmt: skip
    yield runtime, fake_kube_cluster


def _versioned(runtime: KubernetesCluster) -> list[str]:
    return [s.name for s in runtime.stack.services if s.image and ":" not in s.image]


def _release(runtime: KubernetesCluster, cluster: FakeKubeCluster, version: str) -> None:
    runtime.run("start", version, log)
    cluster.wait_for(f"{version} rolled out", lambda: fake_rolled_out(runtime), 60)
    running = fake_running_images(runtime)
    for service, image in runtime.images(version).items():
        if service in _versioned(runtime):
            assert running[service] == {image}, (service, running)
            assert image.endswith(f":{version}")


def test_fake_system_is_deployed_and_upgraded_by_its_own_manifests(
    fake_system: tuple[KubernetesCluster, FakeKubeCluster],
) -> None:
    runtime, cluster = fake_system
    runtime.run("fetch", "1.0.0", log)  # the server checks every object; nothing is stored
    assert cluster.store.list("deployments", NS) == []
    _release(runtime, cluster, "1.0.0")
    assert _versioned(runtime), "a system without a versioned service proves nothing here"
    states = asyncio.run(runtime.context().rollouts())
    assert {s.name for s in states} == {
        o["metadata"]["name"]
        for o in runtime.release("1.0.0")
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    # An autoscaler scales its target out (the real one patches the scale subresource).
    scaled = [
        o["spec"]["scaleTargetRef"]["name"]
        for o in runtime.release("1.0.0")
        if o["kind"] == "HorizontalPodAutoscaler"
    ]
    for name in scaled:
        cluster.store.patch(
            "deployments", NS, name, {"spec": {"replicas": 5}},
            "application/merge-patch+json", manager="horizontal-pod-autoscaler",
        )  # fmt: skip
    _release(runtime, cluster, "1.1.0")
    for name in scaled:  # the release left the autoscaler's count alone
        assert cluster.store.get("deployments", NS, name)["spec"]["replicas"] == 5
    # Every service the stack file names has pods, and each is ready by the kubelet.
    ready = {
        service: asyncio.run(runtime.context().probe_service(service))
        for service in (s.name for s in runtime.stack.services)
    }
    assert all(ok for ok, _ in ready.values()), ready


def test_fake_system_stop_and_resume_put_back_every_workloads_replicas(
    fake_system: tuple[KubernetesCluster, FakeKubeCluster],
) -> None:
    runtime, cluster = fake_system
    _release(runtime, cluster, "1.0.0")
    apps = [s.name for s in runtime.stack.services if s.role in ("app", "worker")]
    assert apps
    before = _replicas(cluster, runtime, apps)
    runtime.run("stop", "1.0.0", log, services=apps)
    assert set(_replicas(cluster, runtime, apps).values()) == {0}
    cluster.wait_for("app pods gone", lambda: not set(apps) & set(fake_running_images(runtime)), 20)
    runtime.run("resume", "1.0.0", log, services=apps)
    assert _replicas(cluster, runtime, apps) == before
    cluster.wait_for("apps back", lambda: fake_rolled_out(runtime), 60)


def _replicas(cluster: FakeKubeCluster, runtime: KubernetesCluster, services: list[str]) -> Any:
    found = {}
    for service in services:
        name = workload_of(runtime.stack, service)
        obj = cluster.store.get("deployments", NS, name) or cluster.store.get(
            "statefulsets", NS, name
        )
        assert obj is not None, name
        found[name] = obj["spec"].get("replicas")
    return found
