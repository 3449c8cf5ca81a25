"""Fake controllers for the fake Kubernetes API: Deployment (through ReplicaSets, as the real
one works), ReplicaSet, StatefulSet, Job and a PVC binder, plus the fake kubelet, ticking in
a background thread.

They write status the way the real controllers do (observedGeneration, replica counts with
zero values omitted, the Available/Progressing conditions and their reasons, Job conditions),
because those fields are exactly what the product's rollout gate reads.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.fake_kube_api import FakeKubeApi
from support.fake_kube_deployments import (
    MANAGER,
    FakeDeploymentController,
    create_pod,
    omit_zero,
    owned_by,
    pod_ready,
    template_hash,
)
from support.fake_kube_kubelet import (
    FAILURE_MODES,
    FakeImageFailure,
    FakeJobHandler,
    FakeKubelet,
)
from support.fake_kube_rules import FakeKubeError, Obj
from support.fake_kube_store import FakeKubeStore, now_rfc3339


class FakeKubeControllers:
    """The controllers and the kubelet of the fake cluster, over one store.

    `tick()` runs one reconcile pass (tests may call it directly); `start()` runs it every
    `interval` seconds in a background thread.
    """

    def __init__(
        self,
        store: FakeKubeStore,
        *,
        interval: float = 0.1,
        ready_delay: float = 0.3,
        crash_interval: float = 0.3,
        job_retry_delay: float = 0.2,
    ) -> None:
        self.store = store
        self.interval = interval
        self.job_retry_delay = job_retry_delay
        self.kubelet = FakeKubelet(store, ready_delay=ready_delay, crash_interval=crash_interval)
        self.errors: list[str] = []
        self.deployments = FakeDeploymentController(store, self.kubelet)
        self._job_started: dict[str, float] = {}
        self._job_last_failure: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()

    # ------------------------------------------------------------ test API

    def fail_image(self, image: str, mode: str, *, log: str = "") -> None:
        """Make pods of this exact image reference misbehave: never_ready, crash_loop,
        image_pull or progress_deadline (never ready; the deadline is the Deployment's)."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"fail_image: mode {mode!r} is not one of {FAILURE_MODES}")
        self.kubelet.failures[image] = FakeImageFailure(mode, log)

    def clear_failures(self) -> None:
        self.kubelet.failures.clear()

    def job_handler(self, image_or_job: str, handler: FakeJobHandler) -> None:
        """Run pods of Jobs with this image (or Job name) through `handler(argv, env)`."""
        self.kubelet.job_handlers.append((image_or_job, handler))

    def start(self) -> FakeKubeControllers:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fake-kube-controllers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeKubeControllers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> None:
        """One pass of every controller, in the order a real cluster converges."""
        with self._tick_lock:
            for step in (
                self.deployments.sync,
                self._statefulsets,
                self._jobs,
                self._claims,
                self.kubelet.sync,
            ):
                try:
                    step()
                except FakeKubeError as error:  # a race with a test's write: retried next tick
                    self.errors.append(f"{step.__name__}: {error.message}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    # ------------------------------------------------------------ StatefulSet

    def _statefulsets(self) -> None:
        pods = self.store.list("pods")
        for sts in self.store.list("statefulsets"):
            self._sync_statefulset(sts, owned_by(pods, sts))

    def _sync_statefulset(self, sts: Obj, pods: list[Obj]) -> None:
        meta, spec = sts["metadata"], sts["spec"]
        ns, name, want = meta["namespace"], meta["name"], int(spec.get("replicas", 1))
        update = f"{name}-{template_hash(spec['template'])}"
        current = sts.get("status", {}).get("currentRevision") or update
        by_index = {int(p["metadata"]["name"].rsplit("-", 1)[1]): p for p in pods}
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        partition = int(spec.get("updateStrategy", {}).get("rollingUpdate", {}).get("partition", 0))
        for index in range(want):
            if index not in by_index:
                self._claims_for(sts, index)
                pod_name = f"{name}-{index}"
                revision = update if index >= partition else current
                by_index[index] = create_pod(
                    self.store,
                    sts,
                    _with_claims(spec, name, index),
                    name=pod_name,
                    labels={
                        "controller-revision-hash": revision,
                        "statefulset.kubernetes.io/pod-name": pod_name,
                        "apps.kubernetes.io/pod-index": str(index),
                    },
                )
                if ordered:
                    break
            elif ordered and not pod_ready(by_index[index]):
                break
        else:
            extra = sorted(i for i in by_index if i >= want)
            if extra:
                self.store.delete("pods", ns, by_index.pop(extra[-1])["metadata"]["name"])
            elif all(pod_ready(p) for p in by_index.values()):
                stale = [
                    i
                    for i, p in by_index.items()
                    if i >= partition
                    and p["metadata"]["labels"].get("controller-revision-hash") != update
                ]
                if stale:
                    self.store.delete("pods", ns, by_index.pop(max(stale))["metadata"]["name"])
        live = list(by_index.values())

        def count(revision: str) -> int:
            return sum(
                p["metadata"]["labels"].get("controller-revision-hash") == revision for p in live
            )

        ready = sum(pod_ready(p) for p in live)
        min_ready = int(spec.get("minReadySeconds", 0))
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": sum(self.kubelet.available(p, min_ready) for p in live),
            "currentReplicas": count(current),
            "updatedReplicas": count(update),
            "currentRevision": current,
            "updateRevision": update,
            "collisionCount": 0,
        }
        if status["updatedReplicas"] == want == len(live) == ready:
            status["currentRevision"], status["currentReplicas"] = update, status["updatedReplicas"]
        omit_zero(status, "readyReplicas", "currentReplicas", "updatedReplicas")
        self.store.put_status("statefulsets", ns, name, status)

    def _claims_for(self, sts: Obj, index: int) -> None:
        meta = sts["metadata"]
        for claim in sts["spec"].get("volumeClaimTemplates") or []:
            claim_name = f"{claim['metadata']['name']}-{meta['name']}-{index}"
            if self.store.get("persistentvolumeclaims", meta["namespace"], claim_name) is None:
                labels = {
                    **(claim["metadata"].get("labels") or {}),
                    **(sts["spec"]["selector"].get("matchLabels") or {}),
                }
                self.store.create(
                    "persistentvolumeclaims",
                    {
                        "metadata": {
                            "name": claim_name,
                            "namespace": meta["namespace"],
                            "labels": labels,
                        },
                        "spec": copy.deepcopy(claim.get("spec") or {}),
                    },
                    manager=MANAGER,
                )

    def _claims(self) -> None:
        """Bind every pending claim at once (no storage classes or provisioners here)."""
        for claim in self.store.list("persistentvolumeclaims"):
            if claim.get("status", {}).get("phase") == "Bound":
                continue
            spec = claim.get("spec", {})
            storage = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
            status = {
                "phase": "Bound",
                "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "capacity": {"storage": storage},
            }
            meta = claim["metadata"]
            self.store.put_status("persistentvolumeclaims", meta["namespace"], meta["name"], status)

    # ------------------------------------------------------------ Job

    def _jobs(self) -> None:
        pods = self.store.list("pods")
        for job in self.store.list("jobs"):
            self._sync_job(job, owned_by(pods, job))

    def _sync_job(self, job: Obj, pods: list[Obj]) -> None:
        meta, spec, old = job["metadata"], job["spec"], job.get("status", {})
        ns, uid, now = meta["namespace"], meta["uid"], time.monotonic()
        finished = [c for c in old.get("conditions", []) if c["type"] in ("Complete", "Failed")]
        if finished:
            ttl = spec.get("ttlSecondsAfterFinished")
            done_at = self._job_started.get(uid + "/done")
            if ttl is not None and done_at is not None and now - done_at >= float(ttl):
                self.store.delete("jobs", ns, meta["name"], propagation="Background")
            return
        if spec.get("suspend"):
            return
        self._job_started.setdefault(uid, now)
        status: Obj = copy.deepcopy(old)
        status.setdefault("startTime", now_rfc3339())
        phases = [p.get("status", {}).get("phase") for p in pods]
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        active = [
            p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]
        if failed > int(old.get("failed", 0)):
            self._job_last_failure[uid] = now
        conditions: list[Obj] = list(status.get("conditions") or [])
        stamp = now_rfc3339()

        def finish(kind: str, target: str, reason: str, message: str) -> None:
            for pod in active:
                self.store.delete("pods", ns, pod["metadata"]["name"])
            active.clear()
            for condition_type in (target, kind):
                conditions.append(
                    {
                        "type": condition_type,
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                )
            self._job_started[uid + "/done"] = now

        deadline = spec.get("activeDeadlineSeconds")
        if succeeded >= int(spec.get("completions", 1)):
            finish(
                "Complete",
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            status["completionTime"] = stamp
        elif failed > int(spec.get("backoffLimit", 6)):
            finish(
                "Failed",
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        elif deadline is not None and now - self._job_started[uid] > float(deadline):
            finish(
                "Failed",
                "FailureTarget",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        elif (
            len(active) < int(spec.get("parallelism", 1))
            and succeeded + len(active) < int(spec.get("completions", 1))
            and now - self._job_last_failure.get(uid, 0.0) >= self.job_retry_delay
        ):
            active.append(
                create_pod(self.store, job, spec["template"], generate=f"{meta['name']}-")
            )
        status.update(
            active=len(active),
            succeeded=succeeded,
            failed=failed,
            conditions=conditions,
            ready=sum(pod_ready(p) for p in active),
            terminating=0,
            uncountedTerminatedPods={},
        )
        omit_zero(status, "active", "succeeded", "failed", "conditions")
        self.store.put_status("jobs", ns, meta["name"], status)


@dataclass
class FakeKubeCluster:
    """The API server and controllers of one test, with a kubeconfig that points at them."""

    api: FakeKubeApi
    controllers: FakeKubeControllers
    kubeconfig: Path
    namespace: str

    @property
    def store(self) -> FakeKubeStore:
        return self.api.store

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll `check` until it returns something truthy; fail naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"fake cluster: {what} did not happen within {timeout} s "
            f"(controller errors: {self.controllers.errors[-3:]})"
        )


def _with_claims(spec: Obj, name: str, index: int) -> Obj:
    """The pod template with a volume for each claim template, as the StatefulSet controller
    gives each pod its own claims (``<template>-<statefulset>-<index>``)."""
    template = copy.deepcopy(spec["template"])
    volumes = template.setdefault("spec", {}).setdefault("volumes", [])
    for claim in spec.get("volumeClaimTemplates") or []:
        claim_name = claim["metadata"]["name"]
        volumes.append(
            {
                "name": claim_name,
                "persistentVolumeClaim": {"claimName": f"{claim_name}-{name}-{index}"},
            }
        )
    return template


@pytest.fixture
def fake_kube_cluster(tmp_path: Path) -> Iterator[FakeKubeCluster]:
    """A fresh fake cluster with namespace `opsflow` and a kubeconfig in tmp_path."""
    api = FakeKubeApi().start()
    controllers = FakeKubeControllers(api.store).start()
    try:
        api.store.create_namespace("default")
        api.store.create_namespace("opsflow")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig.yaml", namespace="opsflow")
        yield FakeKubeCluster(api, controllers, kubeconfig, "opsflow")
    finally:
        controllers.stop()
        api.stop()
