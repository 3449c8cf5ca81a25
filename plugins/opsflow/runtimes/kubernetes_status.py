"""What a Kubernetes object's status says, by the rules kstatus and Argo CD use.

A rollout is complete only when the controller has seen the latest spec
(``observedGeneration``), every replica runs the new template (``updatedReplicas``), no old
replica is left and every replica is available. Comparing replicas with ready replicas
alone (as the provider's helper does) calls a rollout done while old pods still serve.
Plain functions over the API's JSON, so every rule is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from opsflow.runtimes.base import ContainerState, Rollout

# Waiting reasons no amount of waiting turns good.
FATAL_WAITING = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})  # fmt: skip
START_ERRORS = FATAL_WAITING - {"CrashLoopBackOff"}


def normal_reference(reference: str) -> str:
    """An image reference as a kubelet reports it and a manifest writes it alike
    (``docker.io/library/redis:7`` and ``redis:7`` are one image)."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if reference.startswith(prefix):
            return reference[len(prefix) :]
    return reference


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def _int(value: Any, default: int = 0) -> int:
    return int(value) if isinstance(value, int) else default


def rollout(obj: Mapping[str, Any]) -> Rollout:
    """The rollout of a Deployment or StatefulSet as its status reports it now."""
    kind, name = str(obj.get("kind")), str(obj.get("metadata", {}).get("name"))
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    generation = _int(obj.get("metadata", {}).get("generation"), 1)
    observed = _int(status.get("observedGeneration"), 0)

    def pending(detail: str) -> Rollout:
        return Rollout(kind, name, False, detail)

    if observed < generation:
        return pending(f"the controller has not seen generation {generation} yet")
    if kind == "Deployment":
        progressing = _conditions(status).get("Progressing", {})
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            deadline = _int(spec.get("progressDeadlineSeconds"), 600)
            message = str(progressing.get("message") or "").strip()
            failure = f"exceeded its progress deadline ({deadline}s)"
            return Rollout(kind, name, False, "failed", failure + (f": {message}" * bool(message)))
    wanted = _int(spec.get("replicas"), 1)
    updated = _int(status.get("updatedReplicas"))
    total = _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if updated < wanted:
        return pending(f"{updated} of {wanted} replicas updated")
    if total > updated:
        return pending(f"{total - updated} old replica(s) still running")
    if kind == "StatefulSet":
        ready = _int(status.get("readyReplicas"))
        if ready < wanted:
            return pending(f"{ready} of {wanted} replicas ready")
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        current, target = status.get("currentRevision"), status.get("updateRevision")
        if strategy == "RollingUpdate" and target and current != target:
            return pending(f"revision {current} is being replaced by {target}")
    if available < wanted:
        return pending(f"{available} of {wanted} replicas available")
    return Rollout(kind, name, True, f"{wanted} of {wanted} replicas updated and available")


def job_outcome(job: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(finished, why it failed or None) of a Job as its conditions say."""
    conditions = _conditions(job.get("status") or {})
    failed = conditions.get("Failed", {})
    if failed.get("status") == "True":
        reason = str(failed.get("reason") or "Failed")
        message = str(failed.get("message") or "").strip()
        return True, reason + (f": {message}" if message else "")
    complete = conditions.get("Complete", {})
    return complete.get("status") == "True", None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def live_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods not being deleted: a terminating pod is no longer what a release runs."""
    return [pod for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The kubelet's verdict: the pod's ``Ready`` condition is true."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pods_states(
    pods: Iterable[Mapping[str, Any]], service_label: str, workloads: Mapping[str, str]
) -> list[ContainerState]:
    """The containers of every live pod, under the service its label names and every other
    service of the same workload (``workloads``: service -> workload): ai-doc's backend and
    backend2 are one Deployment, whose pods run both."""
    states = []
    for pod in live_pods(pods):
        label = pod["metadata"]["labels"][service_label]
        workload = workloads.get(label, label)
        for service in [s for s, w in workloads.items() if w == workload] or [label]:
            states += container_states(pod, service)
    return states


def container_states(pod: Mapping[str, Any], service: str) -> list[ContainerState]:
    """Each container of a pod as a :class:`ContainerState`, so the gate's evidence rules
    (``runtimes/evidence.py``) read a crash loop, an image that cannot be pulled or a
    container that cannot be created the way they read Docker's."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    created = _time(metadata.get("creationTimestamp"))
    has_probe = {
        str(c.get("name")): "readinessProbe" in c
        for c in (pod.get("spec") or {}).get("containers", [])
    }
    states = []
    statuses = status.get("containerStatuses") or []
    if not statuses:
        phase = str(status.get("phase") or "Pending")
        error = "" if phase == "Pending" else f"pod phase {phase}"
        pod_id = str(metadata.get("uid") or "")
        return [ContainerState(service, str(metadata.get("name")), "", "created", None, 0,
                               container_id=pod_id, created_at=created, error=error)]  # fmt: skip
    for entry in statuses:
        state = entry.get("state") or {}
        waiting, running = state.get("waiting"), state.get("running")
        terminated = state.get("terminated")
        last = (entry.get("lastState") or {}).get("terminated") or {}
        name = f"{metadata.get('name')}/{entry.get('name')}"
        restarts = _int(entry.get("restartCount"))
        error, exit_code, started = "", None, None
        if running:
            kind = "running"
            started = _time(running.get("startedAt"))
        elif waiting and waiting.get("reason") == "CrashLoopBackOff":
            kind = "restarting"
            exit_code = last.get("exitCode")
        elif waiting and waiting.get("reason") in START_ERRORS:
            kind = "created"
            error = f"{waiting.get('reason')}: {waiting.get('message') or ''}".strip(": ")
        elif terminated:
            kind = "exited"
            exit_code = terminated.get("exitCode")
        else:
            kind = "created"
        health = None
        if kind == "running" and has_probe.get(str(entry.get("name"))):
            health = "healthy" if entry.get("ready") else "starting"
        states.append(
            ContainerState(
                service=service,
                name=name,
                image_id=normal_reference(str(entry.get("image") or "")),
                state=kind,
                health=health,
                restarts=restarts,
                container_id=f"{metadata.get('uid')}/{entry.get('name')}",
                exit_code=exit_code if isinstance(exit_code, int) else None,
                error=error,
                oom_killed=last.get("reason") == "OOMKilled",
                created_at=created,
                started_at=started,
            )
        )
    return states
