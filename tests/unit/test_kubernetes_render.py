"""Rendering rules of a Kubernetes release that the schema tests do not show: what the
autoscaler owns, and a migration Job taken from a StatefulSet's pod template."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from opsflow.runtimes.kubernetes_manifests import (
    load_objects,
    manifest_files,
    migration_job,
    render,
)
from opsflow.stack.loader import load_stack, resolve_working_dir
from opsflow.stack.model import KubernetesRuntime

REPLICAS = Path(__file__).resolve().parents[2] / "include" / "replicas"


def _release(
    name: str, version: str, working: Path | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """The stack's release; ``working`` stands for a system's checkout (its replica here)."""
    stack = load_stack(name)
    assert isinstance(stack.runtime, KubernetesRuntime)
    files = manifest_files(working or resolve_working_dir(stack), stack.runtime.manifests)
    return stack, render(stack, load_objects(files, stack.runtime.namespace), version)


def test_a_workload_an_autoscaler_targets_leaves_its_replicas_to_it() -> None:
    _, objects = _release("ai-doc-k8s", "1.0.0", REPLICAS / "ai-doc")
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]["name"]
    (workload,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == target
    ]
    assert "replicas" not in workload["spec"]
    others = [o for o in objects if o["kind"] == "StatefulSet"]
    assert others and all("replicas" in o["spec"] for o in others)


def test_a_migration_job_from_a_statefulset_mounts_only_real_volumes() -> None:
    stack, objects = _release("demo-k8s", "1.1.0")
    (postgres,) = [o for o in objects if o["kind"] == "StatefulSet"]
    as_migration = copy.deepcopy(postgres)
    as_migration["metadata"]["name"] = "api"  # the migration service's workload, here a StatefulSet
    others = [o for o in objects if o["metadata"]["name"] != "api"]
    job = migration_job(stack, [*others, as_migration], "1.1.0", "demo-k8s-migrate-x", ["migrate"])
    spec = job["spec"]["template"]["spec"]
    volumes = {v["name"] for v in spec.get("volumes") or []}
    assert postgres["spec"]["volumeClaimTemplates"]  # the claim the pods mount
    assert all(m["name"] in volumes for c in spec["containers"] for m in c.get("volumeMounts", []))
    assert "initContainers" not in spec
    assert spec["containers"][0]["args"] == ["migrate"]
