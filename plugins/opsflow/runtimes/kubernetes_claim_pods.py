"""Pods opsflow runs on a Kubernetes stack's PersistentVolumeClaims, for the work the API
cannot do: clean log files on a claim (``kubernetes_logs.py``), write a restored file into
one (``kubernetes_restore.py``).

Each pod mounts one claim the stack owns (checked first: the stack's label, or a claim a
StatefulSet of the stack made), runs one stdlib-only Python program and prints its report as
its last log line; no exec into any pod is needed. It runs as the user of the pod that
writes the claim (so it may rename and replace that user's files, with no capability left),
on that pod's node when the claim is ReadWriteOnce, and is stopped by the kubelet at the
timeout even if the task is killed; opsflow deletes it when it is done, whatever happened,
and deletes one a killed try left before it makes the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes_api import KubeApi
from opsflow.runtimes.kubernetes_manifests import MANAGED_BY, STACK_LABEL
from opsflow.runtimes.kubernetes_status import live_pods
from opsflow.runtimes.process import LineLogger

MOUNT = "/opsflow/claim"
ROLE_LABEL = "opsflow.io/role"
CLAIM_LABEL = "opsflow.io/claim"
CONTAINER = "work"
CLAIM_ENV = "OPSFLOW_CLAIM"  # the claim's name, for the program and whoever reads the pod
REPORT_MARK = "opsflow-report "
POLL = 1.0
PROGRESS_EVERY = 30.0
# Waiting reasons after which the pod will not start by itself.
STUCK_REASONS = (
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError",
)  # fmt: skip
_WRITER_CONTEXT = ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "runAsNonRoot")


def claim_slug(claim: str) -> str:
    return hashlib.sha256(claim.encode()).hexdigest()[:10]


def pod_name(stack: str, role: str, claim: str) -> str:
    """At most 63 characters, unique per attempt: a pod left by a killed try never blocks."""
    suffix = f"{claim_slug(claim)[:6]}-{secrets.token_hex(3)}"
    return f"{stack}-{role}"[: 63 - len(suffix) - 1].rstrip("-") + f"-{suffix}"


def mounts_claim(pod: Mapping[str, Any], claim: str) -> bool:
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return any(
        (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim for volume in volumes
    )


def writer_of(pods: Sequence[Mapping[str, Any]], claim: str) -> dict[str, Any] | None:
    """A scheduled, not terminating pod that mounts ``claim``: whose node and user the
    claim pod takes."""
    for pod in live_pods(pods):
        if (pod.get("spec") or {}).get("nodeName") and mounts_claim(pod, claim):
            return dict(pod)
    return None


def claim_mounted_at(template: Mapping[str, Any], target: str, ordinal: int = 0) -> str | None:
    """The claim a workload's pod mounts at ``target`` (a StatefulSet's template claim as
    its pod ``ordinal`` gets it), from the workload object; None when it mounts none."""
    spec = template.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    names = {
        mount["name"]
        for container in pod.get("containers") or []
        for mount in container.get("volumeMounts") or []
        if mount.get("mountPath", "").rstrip("/") == target.rstrip("/")
        and not (mount.get("subPath") or mount.get("subPathExpr"))
    }
    for volume in pod.get("volumes") or []:
        if volume.get("name") in names and volume.get("persistentVolumeClaim"):
            return str(volume["persistentVolumeClaim"]["claimName"])
    workload = (template.get("metadata") or {}).get("name")
    for claim in spec.get("volumeClaimTemplates") or []:
        if claim["metadata"]["name"] in names:
            return f"{claim['metadata']['name']}-{workload}-{ordinal}"
    return None


def claim_pod(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    claim: str,
    image: str,
    deadline: int,
    program: str,
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    writer: Mapping[str, Any] | None,
    access_modes: Sequence[str],
) -> dict[str, Any]:
    """The pod that mounts ``claim`` at :data:`MOUNT` and runs ``python3 -c program args``
    once (stopped by the kubelet at ``deadline`` seconds)."""
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["python3", "-c", program],
        "args": list(args),
        "env": [
            {"name": key, "value": value}
            for key, value in {CLAIM_ENV: claim, **(env or {})}.items()
        ],
        "volumeMounts": [
            {"name": "claim", "mountPath": MOUNT},
            # The program's scratch files; the root filesystem stays read-only.
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
    }
    if port is not None:
        container["ports"] = [{"name": "receive", "containerPort": port}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
        "volumes": [
            {"name": "claim", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
        ],
    }
    if writer is not None:
        writer_spec = writer.get("spec") or {}
        context = {
            key: value
            for key, value in (writer_spec.get("securityContext") or {}).items()
            if key in _WRITER_CONTEXT
        }
        if "runAsUser" in context:
            # The writer's own user needs no capability to rename and replace its files.
            container["securityContext"]["capabilities"] = {"drop": ["ALL"]}
        if context:
            spec["securityContext"] = context
        if "ReadWriteOnce" in access_modes and writer_spec.get("nodeName"):
            # A ReadWriteOnce volume mounts on one node at a time: the writer's.
            node = {"key": "metadata.name", "operator": "In", "values": [writer_spec["nodeName"]]}
            spec["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchFields": [node]}]
                    }
                }
            }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, CLAIM_LABEL: claim_slug(claim)},
        },
        "spec": spec,
    }


def report_of(log: str) -> dict[str, Any] | None:
    """The report a claim pod printed as its last marked line, if it got that far."""
    for line in reversed(log.splitlines()):
        if line.startswith(REPORT_MARK):
            try:
                report: dict[str, Any] = json.loads(line[len(REPORT_MARK) :])
            except ValueError:
                return None
            return report
    return None


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a claim pod will not run, once that is certain; None while it may still."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


def pod_ended(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running"


def pending_reason(pod: Mapping[str, Any]) -> str:
    """What the scheduler or kubelet says about a pod that is not done yet."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return f"{condition.get('reason') or condition['type']}: {condition['message']}"
    return f"phase {status.get('phase') or 'unknown'}"


@dataclass
class ClaimPods:
    """One stack's claim pods through ``api``: check, create, wait, read, delete."""

    api: KubeApi
    stack: str
    namespace: str
    image: str
    timeout: float

    @property
    def _selector(self) -> str:
        return f"{STACK_LABEL}={self.stack}"

    def owned(self, claim: str) -> dict[str, Any]:
        """The claim, when the stack's objects own it: it carries the stack's label, or a
        StatefulSet of the stack made it from a volumeClaimTemplate (``<tpl>-<sts>-<n>``)."""
        volume = self.api.get("v1", "PersistentVolumeClaim", claim, self.namespace)
        if volume is None:
            raise RuntimeFailure(f"claim {claim} does not exist in namespace {self.namespace}")
        if (volume["metadata"].get("labels") or {}).get(STACK_LABEL) == self.stack:
            return volume
        for sts in self.api.list("apps/v1", "StatefulSet", self.namespace, self._selector):
            for template in sts["spec"].get("volumeClaimTemplates") or []:
                prefix = f"{template['metadata']['name']}-{sts['metadata']['name']}-"
                if claim.startswith(prefix) and claim[len(prefix) :].isdigit():
                    return volume
        raise RuntimeFailure(
            f"claim {claim} in namespace {self.namespace} is not stack {self.stack}'s: it has "
            f"no {STACK_LABEL}={self.stack} label and no StatefulSet of the stack made it"
        )

    @contextlib.contextmanager
    def started(
        self,
        role: str,
        claim: str,
        program: str,
        args: Sequence[str],
        log: LineLogger,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> Iterator[str]:
        """A pod of ``role`` on ``claim`` created for the block (its name), deleted after."""
        volume = self.owned(claim)
        writer = writer_of(self.api.list("v1", "Pod", self.namespace, ""), claim)
        modes = list((volume.get("spec") or {}).get("accessModes") or [])
        if writer is not None and "ReadWriteOncePod" in modes:
            raise RuntimeFailure(
                f"claim {claim} is ReadWriteOncePod and pod {writer['metadata']['name']} "
                "mounts it: no second pod can while it runs"
            )
        labels = {STACK_LABEL: self.stack, MANAGED_BY: "opsflow", ROLE_LABEL: role}
        mine = ",".join(f"{k}={v}" for k, v in {**labels, CLAIM_LABEL: claim_slug(claim)}.items())
        for leftover in self.api.list("v1", "Pod", self.namespace, mine):
            self.api.delete("v1", "Pod", leftover["metadata"]["name"], self.namespace)
            log.info("deleted pod %s, left by an earlier try", leftover["metadata"]["name"])
        name = pod_name(self.stack, role, claim)
        self.api.create(
            claim_pod(
                name=name, namespace=self.namespace, labels=labels, claim=claim,
                image=self.image, deadline=int(self.timeout), program=program, args=args,
                env=env, port=port, writer=writer, access_modes=modes,
            )
        )  # fmt: skip
        where = f" on node {writer['spec']['nodeName']}" if writer else ""
        log.info("created pod %s mounting claim %s%s", name, claim, where)
        try:
            yield name
        finally:
            self.api.delete("v1", "Pod", name, self.namespace)
            log.info("deleted pod %s", name)

    def ended(self, name: str) -> bool:
        pod = self.api.get("v1", "Pod", name, self.namespace)
        return pod is None or pod_ended(pod)

    def wait(self, name: str, log: LineLogger, *, running: bool = False) -> None:
        """Until the pod has ended (or, with ``running``, runs); raises naming why not."""
        started = said = time.monotonic()
        while True:
            pod = self.api.get("v1", "Pod", name, self.namespace)
            if pod is None:
                raise RuntimeFailure(f"pod {name} is gone before it ended")
            if pod_ended(pod) or (running and pod_running(pod)):
                return
            waited = time.monotonic() - started
            problem = pod_problem(pod)
            if problem is None and waited > self.timeout:
                problem = f"not done after {self.timeout:.0f}s ({pending_reason(pod)})"
            if problem is not None:
                raise RuntimeFailure(f"pod {name}: {problem}")
            if time.monotonic() - said >= PROGRESS_EVERY:
                said = time.monotonic()
                log.info("pod %s: %s after %.0fs", name, pending_reason(pod), waited)
            time.sleep(POLL)

    def report(self, name: str, log: LineLogger) -> dict[str, Any]:
        """The pod's report; its other log lines go into the task log."""
        self.wait(name, log)
        text = self.api.pod_log(self.namespace, name)
        for line in text.splitlines():
            if not line.startswith(REPORT_MARK):
                log.info("[%s] %s", name, line)
        report = report_of(text)
        if report is None:
            tail = " | ".join(text.strip().splitlines()[-3:]) or "(no output)"
            raise RuntimeFailure(f"pod {name} printed no report: {tail}")
        return report
