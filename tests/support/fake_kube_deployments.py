"""The fake Deployment and ReplicaSet controllers: a Deployment rolls out through
ReplicaSets named by a pod-template hash, as the real controller does, so pods are owned by a
ReplicaSet and a rollout can be seen half done (new pods not yet available, old ones still
serving), with the status fields and conditions the real controller writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from typing import Any

from support.fake_kube_kubelet import FakeKubelet
from support.fake_kube_rules import Obj, labels_match, selector_of
from support.fake_kube_store import FakeKubeStore, now_rfc3339

MANAGER = "kube-controller-manager"
REVISION = "deployment.kubernetes.io/revision"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: Obj) -> str:
    """A stable short hash of a pod template (the role of the real `pod-template-hash`)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def owner_ref(obj: Obj) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(items: list[Obj], owner: Obj) -> list[Obj]:
    uid = owner["metadata"]["uid"]
    return [
        i
        for i in items
        if any(
            r.get("uid") == uid and r.get("controller")
            for r in i["metadata"].get("ownerReferences") or []
        )
    ]


def _resolve(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = float(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def omit_zero(status: Obj, *keys: str) -> Obj:
    for key in keys:
        if not status.get(key):
            status.pop(key, None)
    return status


def _set_condition(
    conditions: list[Obj], kind: str, ok: bool, reason: str, message: str, progress: bool = False
) -> None:
    """SetDeploymentCondition: same status and reason is no change, except that a Progressing
    condition that saw progress gets a new lastUpdateTime."""
    now = now_rfc3339()
    status = "True" if ok else "False"
    current = next((c for c in conditions if c["type"] == kind), None)
    if current and current["status"] == status and current["reason"] == reason and not progress:
        return
    transition = current["lastTransitionTime"] if current and current["status"] == status else now
    new = {
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }
    if current:
        conditions[conditions.index(current)] = new
    else:
        conditions.append(new)


def pod_ready(pod: Obj) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def create_pod(
    store: FakeKubeStore,
    owner: Obj,
    template: Obj,
    *,
    generate: str = "",
    name: str = "",
    labels: dict[str, str] | None = None,
) -> Obj:
    """A pod from a workload's template, owned by it (controller=true) as a controller makes it."""
    meta: Obj = copy.deepcopy(template.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), **(labels or {})}
    meta.update(namespace=owner["metadata"]["namespace"], ownerReferences=[owner_ref(owner)])
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate
    pod = {"metadata": meta, "spec": copy.deepcopy(template.get("spec") or {})}
    return store.create("pods", pod, manager=MANAGER)


# ------------------------------------------------------------ the controller


class FakeDeploymentController:
    """Deployments and ReplicaSets; `sync()` is one reconcile pass over both."""

    def __init__(self, store: FakeKubeStore, kubelet: FakeKubelet) -> None:
        self.store = store
        self.kubelet = kubelet
        self._progress_at: dict[str, float] = {}

    def sync(self) -> None:
        self._deployments()
        self._replicasets()

    def _deployments(self) -> None:
        all_sets = self.store.list("replicasets")
        for deploy in self.store.list("deployments"):
            self._sync_deployment(deploy, owned_by(all_sets, deploy))

    def _sync_deployment(self, deploy: Obj, sets: list[Obj]) -> None:
        meta, spec = deploy["metadata"], deploy["spec"]
        ns, uid, desired = meta["namespace"], meta["uid"], int(spec.get("replicas", 1))
        template = copy.deepcopy(spec["template"])
        pod_hash = template_hash(template)
        conditions: list[Obj] = copy.deepcopy(deploy.get("status", {}).get("conditions") or [])
        new_rs = next(
            (
                rs
                for rs in sets
                if rs["metadata"].get("labels", {}).get("pod-template-hash") == pod_hash
            ),
            None,
        )
        old_sets = [rs for rs in sets if rs is not new_rs]
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in sets]
        top = max(revisions, default=0)
        name = f"{meta['name']}-{pod_hash}"
        if new_rs is None:
            template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = (
                pod_hash
            )
            selector = copy.deepcopy(spec["selector"])
            selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
            new_rs = self.store.create(
                "replicasets",
                {
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "labels": template["metadata"]["labels"],
                        "annotations": {REVISION: str(top + 1)},
                        "ownerReferences": [owner_ref(deploy)],
                    },
                    "spec": {
                        "replicas": 0,
                        "selector": selector,
                        "template": template,
                        "minReadySeconds": spec.get("minReadySeconds", 0),
                    },
                },
                manager=MANAGER,
            )
            _set_condition(
                conditions,
                "Progressing",
                True,
                "NewReplicaSetCreated",
                f'Created new replica set "{name}"',
            )
            self._progress_at[uid] = time.monotonic()
        elif int(new_rs["metadata"].get("annotations", {}).get(REVISION, 0)) < top:
            new_rs = self.store.patch(
                "replicasets",
                ns,
                new_rs["metadata"]["name"],
                {"metadata": {"annotations": {REVISION: str(top + 1)}}},
                "application/merge-patch+json",
                manager=MANAGER,
            )
            self._progress_at[uid] = time.monotonic()
        revision = new_rs["metadata"]["annotations"][REVISION]
        if meta.get("annotations", {}).get(REVISION) != revision:
            self.store.patch(
                "deployments",
                ns,
                meta["name"],
                {"metadata": {"annotations": {REVISION: revision}}},
                "application/merge-patch+json",
                manager=MANAGER,
            )
        self._scale_for_rollout(deploy, new_rs, old_sets, desired)
        self._deployment_status(deploy, name, conditions, desired)

    def _scale_for_rollout(
        self, deploy: Obj, new_rs: Obj, old_sets: list[Obj], desired: int
    ) -> None:
        """rolloutRolling (or Recreate): scale the new ReplicaSet up within maxSurge, then the
        old ones down while at least replicas - maxUnavailable pods stay available."""
        strategy = deploy["spec"].get("strategy", {})

        def spec_count(rs: Obj) -> int:
            return int(rs["spec"].get("replicas", 0))

        def avail(rs: Obj) -> int:
            return int(rs.get("status", {}).get("availableReplicas", 0))

        def scale(rs: Obj, count: int) -> None:
            if spec_count(rs) != count:
                self.store.patch(
                    "replicasets",
                    rs["metadata"]["namespace"],
                    rs["metadata"]["name"],
                    {"spec": {"replicas": count}},
                    "application/merge-patch+json",
                    manager=MANAGER,
                )
                rs["spec"]["replicas"] = count

        if strategy.get("type") == "Recreate":
            for rs in old_sets:
                scale(rs, 0)
            if not any(rs.get("status", {}).get("replicas") for rs in old_sets):
                scale(new_rs, desired)
            return
        rolling = strategy.get("rollingUpdate", {})
        surge = _resolve(rolling.get("maxSurge", "25%"), desired, round_up=True)
        unavailable = _resolve(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        if not old_sets or all(spec_count(rs) == 0 for rs in old_sets):
            scale(new_rs, desired)
            return
        current = spec_count(new_rs) + sum(spec_count(rs) for rs in old_sets)
        if spec_count(new_rs) > desired:
            scale(new_rs, desired)
            return
        if spec_count(new_rs) < desired and current < desired + surge:
            scale(
                new_rs,
                spec_count(new_rs) + min(desired + surge - current, desired - spec_count(new_rs)),
            )
            return
        min_available = desired - unavailable
        new_unavailable = spec_count(new_rs) - avail(new_rs)
        budget = current - min_available - new_unavailable
        for rs in old_sets:  # cleanupUnhealthyReplicas first
            unhealthy = min(spec_count(rs) - avail(rs), budget)
            if unhealthy > 0:
                scale(rs, spec_count(rs) - unhealthy)
                budget -= unhealthy
        total_available = avail(new_rs) + sum(avail(rs) for rs in old_sets)
        room = total_available - min_available
        for rs in old_sets:
            take = min(spec_count(rs), room)
            if take > 0:
                scale(rs, spec_count(rs) - take)
                room -= take

    def _deployment_status(
        self, deploy: Obj, rs_name: str, conditions: list[Obj], desired: int
    ) -> None:
        meta, spec = deploy["metadata"], deploy["spec"]
        uid = meta["uid"]
        sets = owned_by(self.store.list("replicasets", meta["namespace"]), deploy)
        pod_hash = rs_name.rsplit("-", 1)[-1]

        def total(key: str, only_new: bool = False) -> int:
            return sum(
                int(rs.get("status", {}).get(key, 0))
                for rs in sets
                if not only_new or rs["metadata"]["labels"].get("pod-template-hash") == pod_hash
            )

        old = deploy.get("status", {})
        spec_total = sum(int(rs["spec"].get("replicas", 0)) for rs in sets)
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": total("replicas"),
            "updatedReplicas": total("replicas", only_new=True),
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": total("availableReplicas"),
            "unavailableReplicas": max(spec_total - total("availableReplicas"), 0),
        }
        unavailable = _resolve(
            spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable", "25%"),
            desired,
            round_up=False,
        )
        if spec.get("strategy", {}).get("type") == "Recreate":
            unavailable = 0
        if status["availableReplicas"] >= desired - unavailable:
            _set_condition(
                conditions,
                "Available",
                True,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            _set_condition(
                conditions,
                "Available",
                False,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        complete = (
            status["updatedReplicas"] == desired
            and status["replicas"] == desired
            and status["availableReplicas"] == desired
        )
        progressed = (
            status["updatedReplicas"] > old.get("updatedReplicas", 0)
            or status["replicas"] - status["updatedReplicas"]
            < old.get("replicas", 0) - old.get("updatedReplicas", 0)
            or status["readyReplicas"] > old.get("readyReplicas", 0)
            or status["availableReplicas"] > old.get("availableReplicas", 0)
        )
        progressing = next((c for c in conditions if c["type"] == "Progressing"), None)
        deadline = spec.get("progressDeadlineSeconds")
        if complete:
            _set_condition(
                conditions,
                "Progressing",
                True,
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
            )
        elif progressed:
            self._progress_at[uid] = time.monotonic()
            _set_condition(
                conditions,
                "Progressing",
                True,
                "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" is progressing.',
                progress=True,
            )
        elif (
            progressing
            and deadline is not None
            and progressing["reason"] != "NewReplicaSetAvailable"
            and time.monotonic() - self._progress_at.setdefault(uid, time.monotonic())
            > float(deadline)
        ):
            _set_condition(
                conditions,
                "Progressing",
                False,
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{rs_name}" has timed out progressing.',
            )
        order = {"Available": 0, "Progressing": 1}
        status["conditions"] = sorted(conditions, key=lambda c: order.get(c["type"], 2))
        omit_zero(
            status,
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
            "unavailableReplicas",
        )
        self.store.put_status("deployments", meta["namespace"], meta["name"], status)

    # ------------------------------------------------------------ ReplicaSet

    def _replicasets(self) -> None:
        pods = self.store.list("pods")
        for rs in self.store.list("replicasets"):
            meta, spec = rs["metadata"], rs["spec"]
            mine = [
                p for p in owned_by(pods, rs) if p["metadata"]["namespace"] == meta["namespace"]
            ]
            want = int(spec.get("replicas", 1))
            for _ in range(want - len(mine)):
                create_pod(self.store, rs, spec["template"], generate=f"{meta['name']}-")
            if len(mine) > want:
                mine.sort(key=lambda p: (self.kubelet.available(p), p["metadata"]["name"]))
                for pod in mine[: len(mine) - want]:
                    self.store.delete("pods", meta["namespace"], pod["metadata"]["name"])
                mine = mine[len(mine) - want :]
            requirements = selector_of(spec.get("selector"))
            min_ready = int(spec.get("minReadySeconds", 0))
            status = omit_zero(
                {
                    "replicas": len(mine),
                    "fullyLabeledReplicas": sum(
                        labels_match(requirements, p["metadata"].get("labels")) for p in mine
                    ),
                    "readyReplicas": sum(pod_ready(p) for p in mine),
                    "availableReplicas": sum(self.kubelet.available(p, min_ready) for p in mine),
                    "observedGeneration": meta.get("generation", 1),
                },
                "fullyLabeledReplicas",
                "readyReplicas",
                "availableReplicas",
            )
            self.store.put_status("replicasets", meta["namespace"], meta["name"], status)
