"""A Kubernetes stack in the fake cluster, for the integration tier: a stack file that
extends one of the repository's, its variant pointed at the fake (namespace ``opsflow``,
connection ``kube_fake``) and at a copy of its manifests a test may change; its ledger in
the test's tmp_path. Also what the runtime reports: rollouts done, images running."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.runtimes.kubernetes import KubernetesCluster
from opsflow.stack.loader import load_stack
from support import REPO_ROOT
from support.fake_kube_controllers import FakeKubeCluster

FAKE_NS = "opsflow"  # the namespace the fake_kube_cluster fixture creates


def fake_stack_runtime(
    cluster: FakeKubeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    name: str,
    extends: Path,
    manifests: Path,
    variant: dict[str, Any] | None = None,
) -> tuple[KubernetesCluster, Path]:
    """The runtime of stack ``name`` (``extends`` with its kubernetes variant, ``variant``
    by default a plain one, pointed at the fake) and the working dir holding ``k8s/``."""
    work = tmp_path / "work"
    shutil.copytree(manifests, work / "k8s")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    pointed = {**(variant or {"kind": "kubernetes", "manifests": ["k8s"]})}
    pointed.update(namespace=FAKE_NS, kube_conn_id="kube_fake", working_dir=str(work))
    overlay = {"extends": str(extends), "variants": [pointed]}
    (stacks / f"{name}.yaml").write_text(yaml.safe_dump(overlay))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(cluster.kubeconfig)}}
    monkeypatch.setenv("AIRFLOW_CONN_KUBE_FAKE", json.dumps(conn))
    return KubernetesCluster.for_stack(load_stack(name, stacks), stacks), work


@pytest.fixture
def fake_kdemo(
    fake_kube_cluster: FakeKubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KubernetesCluster, FakeKubeCluster, Path]]:
    """The demo's Kubernetes variant as stack ``kdemo``: runtime, cluster, working dir."""
    runtime, work = fake_stack_runtime(
        fake_kube_cluster, tmp_path, monkeypatch, name="kdemo",
        extends=REPO_ROOT / "include" / "stacks" / "demo-k8s.yaml",
        manifests=REPO_ROOT / "include" / "demo" / "k8s",
    )  # fmt: skip
    yield runtime, fake_kube_cluster, work


def fake_rolled_out(runtime: KubernetesCluster) -> bool:
    """Every workload's rollout done, by the rules the gate reads."""
    states = asyncio.run(runtime.context().rollouts())
    return bool(states) and all(state.done for state in states)


def fake_running_images(runtime: KubernetesCluster) -> dict[str, set[str]]:
    """Service -> the image references its pods run, as the runtime reports them."""
    found: dict[str, set[str]] = {}
    for state in runtime.running():
        found.setdefault(state.service, set()).add(state.image_id)
    return found
