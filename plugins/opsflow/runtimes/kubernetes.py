"""The Kubernetes runtime: a stack's manifests as releases on a cluster, through the
cncf-kubernetes provider's hook.

A release is the exact set of objects its manifests render to for its version
(``runtimes/kubernetes_manifests.py``), applied with server-side apply under one field
manager; objects of the stack that the release no longer holds are pruned (never a
PersistentVolumeClaim: data outlives releases, as Compose keeps volumes). The rendered
set is stored in the ledger's config store, so a rollback applies the recorded objects of
the previous release again, ConfigMaps and Secrets included, where ``kubectl rollout
undo`` would leave them as the failed release left them.

``commands()`` returns one argv per API action, naming every object it touches, so a dry
run prints exactly what a real run does; ``run_argv`` performs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from opsflow.connections import Endpoint
from opsflow.runtimes.base import ContainerState, FetchStep, Runtime, RuntimeFailure
from opsflow.runtimes.kubernetes_api import KubeApi
from opsflow.runtimes.kubernetes_claim_pods import ClaimPods
from opsflow.runtimes.kubernetes_manifests import (
    MANAGED_BY,
    SERVICE_LABEL,
    STACK_LABEL,
    WORKLOAD_KINDS,
    load_objects,
    manifest_files,
    migration_job,
    release_text,
    render,
    workload_of,
)
from opsflow.runtimes.kubernetes_probe import KubernetesContext
from opsflow.runtimes.kubernetes_status import job_outcome, normal_reference, pods_states
from opsflow.runtimes.process import LineLogger
from opsflow.stack.loader import resolve_working_dir
from opsflow.stack.model import KubernetesRuntime, Stack, check_version

STEPS = ("fetch", "migrate", "start", "stop", "resume", "down")
APPLIED_NAME = "kubernetes/applied.yaml"
REPLICAS_ANNOTATION = "opsflow.io/replicas-before-stop"
JOB_LABEL = "opsflow.io/job"
# Kinds a release may drop and the runtime then deletes (PersistentVolumeClaims never).
PRUNE_KINDS = (
    ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("batch/v1", "CronJob"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"), ("networking.k8s.io/v1", "Ingress"),
    ("policy/v1", "PodDisruptionBudget"),
)  # fmt: skip
JOB_POLL = 2.0


def ref(obj: Mapping[str, Any]) -> str:
    """``apps/v1/Deployment/api``: how an argv names one object."""
    return f"{obj['apiVersion']}/{obj['kind']}/{obj['metadata']['name']}"


def _split_ref(text: str) -> tuple[str, str, str]:
    api_version, kind, name = text.rsplit("/", 2)
    return api_version, kind, name


def job_name(stack: str, purpose: str, version: str) -> str:
    """A Job name of at most 63 characters (it becomes the pods' ``job-name`` label),
    unique per attempt so a failed Job kept for inspection never blocks the next one."""
    slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
    suffix = secrets.token_hex(3)
    return f"{stack}-{purpose}-{slug}"[: 63 - len(suffix) - 1].rstrip("-") + f"-{suffix}"


@dataclass
class KubernetesCluster(Runtime):
    """One stack in one namespace of the cluster its connection reaches."""

    stack: Stack
    working_dir: Path

    kind = "kubernetes"

    @classmethod
    def for_stack(cls, stack: Stack, stacks_dir: Path | None = None) -> KubernetesCluster:
        if not isinstance(stack.runtime, KubernetesRuntime):
            raise RuntimeFailure(f"stack {stack.name} does not use the kubernetes runtime")
        return cls(stack, resolve_working_dir(stack, stacks_dir))

    @property
    def runtime(self) -> KubernetesRuntime:
        assert isinstance(self.stack.runtime, KubernetesRuntime)
        return self.stack.runtime

    @property
    def name(self) -> str:
        return self.runtime.namespace

    @property
    def fetch_step(self) -> FetchStep:
        return "pull"  # the cluster's nodes pull the release's images

    @cached_property
    def api(self) -> KubeApi:
        return KubeApi(self.runtime.kube_conn_id)

    def describe(self, step: str) -> str:
        manager = self.runtime.field_manager
        return {
            "fetch": "a server-side dry run of the release's objects (the API server checks "
            "them, nothing changes); the nodes pull the images when pods start",
            "migrate": "a Job of the migration service's pod template with the release image, "
            "waited for in the triggerer",
            "start": f"server-side apply of the release's objects (field manager `{manager}`), "
            "then the stack's objects the release no longer holds are deleted",
            "stop": "the services' Deployments and StatefulSets scaled to 0",
            "resume": "the services' workloads scaled back to their replicas before the stop",
            "down": "every workload of the stack scaled to 0 (objects and volumes kept)",
        }.get(step, f"Kubernetes {step}")

    # ------------------------------------------------------------------ release facts

    def release(self, version: str) -> list[dict[str, Any]]:
        """The rendered objects of ``version``, in apply order."""
        files = manifest_files(self.working_dir, self.runtime.manifests)
        return render(self.stack, load_objects(files, self.name), check_version(version))

    def _workloads(self, version: str) -> list[dict[str, Any]]:
        return [o for o in self.release(version) if o["kind"] in WORKLOAD_KINDS]

    def images(self, version: str) -> dict[str, str]:
        """Image of each service's workload (its first container) in ``version``."""
        found = {}
        for service in self.stack.services:
            workload = workload_of(self.stack, service.name)
            for obj in self._workloads(version):
                if obj["metadata"]["name"] == workload:
                    containers = obj["spec"]["template"]["spec"].get("containers") or []
                    if containers:
                        found[service.name] = str(containers[0].get("image"))
        return found

    def image_facts(self, references: Sequence[str]) -> dict[str, dict[str, Any]]:
        """A cluster pulls by reference on its nodes: the reference is the identity the
        ledger records, and the pods report which one they run (``imageID`` too)."""
        return {r: {"id": normal_reference(r), "digests": [], "created": None} for r in references}

    def missing_build_inputs(self, version: str) -> list[str]:
        return []

    def pullable(self, reference: str, log: LineLogger) -> bool:
        log.info("%s: pulled by the cluster's nodes; not checked from here", reference)
        return True

    def config_paths(self) -> list[tuple[str, Path]]:
        """The manifest files and the stack's listed config files, by archive name."""
        paths = [
            (f"kubernetes/{path.relative_to(self.working_dir)}", path)
            for path in manifest_files(self.working_dir, self.runtime.manifests)
        ]
        for listed in self.stack.backup.sources.files:
            paths.append((f"config/{listed.lstrip('/')}", self.host_path(listed)))
        return paths

    def host_path(self, listed: str) -> Path:
        return Path(listed) if Path(listed).is_absolute() else self.working_dir / listed

    @contextlib.contextmanager
    def reach(self, service: str | None, endpoint: Endpoint) -> Iterator[Endpoint]:
        """A port-forward through the API server to a ready pod of ``service``, at the
        connection's port: the database needs no address outside the cluster. Without a
        service, the connection's address as it is."""
        if service is None:
            yield endpoint
            return
        from opsflow.runtimes.kubernetes_forward import forwarded, ready_pod

        selector = f"{self._selector()},{SERVICE_LABEL}={service}"
        pod = ready_pod(self.api.list("v1", "Pod", self.name, selector), service)
        with forwarded(self.api.client, self.name, pod, endpoint.port) as port:
            yield dataclasses.replace(endpoint, host="127.0.0.1", port=port)

    def out_of_reach(self, work: str) -> str | None:
        return {
            "container_logs": "container logs are the kubelet's on each node: it rotates them "
            "itself (containerLogMaxSize, containerLogMaxFiles in its configuration); none of "
            "them is on this host, so none is measured or cleaned here",
            "images": "images live on the cluster's nodes, where the kubelet's image garbage "
            "collection removes unused ones; none is pruned from here",
        }.get(work)

    @cached_property
    def claim_pods(self) -> ClaimPods:
        return ClaimPods(
            self.api, self.stack.name, self.name, self.runtime.claim_pod_image,
            self.runtime.claim_pod_timeout.total_seconds(),
        )  # fmt: skip

    def clean_claim(
        self,
        claim: str,
        subdir: str,
        rule: Mapping[str, Any],
        *,
        dry_run: bool,
        log: LineLogger,
    ) -> dict[str, Any]:
        """By a pod that mounts the claim and runs the engine (``kubernetes_logs.py``)."""
        from opsflow.runtimes.kubernetes_logs import clean_claim

        return clean_claim(self.claim_pods, claim, subdir, rule, dry_run=dry_run, log=log)

    @contextlib.contextmanager
    def data_dir_to_write(
        self, service: str, target: str, version: str, log: LineLogger
    ) -> Iterator[Path]:
        """A local directory; each file left in it is then written into the claim the
        service mounts at ``target``, by a pod that mounts it (``kubernetes_restore.py``)."""
        import tempfile

        from opsflow.runtimes.kubernetes_restore import put_file

        claim = self._claim_at(service, target)
        with tempfile.TemporaryDirectory(prefix="opsflow-restore-") as local:
            yield Path(local)
            for path in sorted(Path(local).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    put_file(self.claim_pods, self.api.client, claim, path.name, path, log)

    def _claim_at(self, service: str, target: str) -> str:
        from opsflow.runtimes.kubernetes_claim_pods import claim_mounted_at

        name = workload_of(self.stack, service)
        workload = self.api.get("apps/v1", "Deployment", name, self.name) or self.api.get(
            "apps/v1", "StatefulSet", name, self.name
        )
        if workload is None:
            raise RuntimeFailure(f"{service}: no Deployment or StatefulSet {name} to write into")
        claim = claim_mounted_at(workload, target)
        if claim is None:
            raise RuntimeFailure(
                f"{service}'s {target} is on no PersistentVolumeClaim of {name} (an emptyDir "
                "or the image's own filesystem): nothing outlives the pod to restore into"
            )
        return claim

    def applied(self, version: str) -> dict[str, bytes]:
        return {APPLIED_NAME: release_text(self.release(version)).encode()}

    def unhealthy_window(self, version: str, services: Sequence[str] | None = None) -> float:
        """Longest readiness window (initial delay + period x failure threshold) of the
        watched services' containers: how long the kubelet may take to call one unready."""
        longest = 0.0
        for obj in self._workloads(version):
            service = obj["spec"]["template"]["metadata"]["labels"].get(SERVICE_LABEL)
            if services is not None and service not in services:
                continue
            for container in obj["spec"]["template"]["spec"].get("containers") or []:
                probe = container.get("readinessProbe")
                if probe:
                    window = probe.get("initialDelaySeconds", 0) + probe.get(
                        "periodSeconds", 10
                    ) * probe.get("failureThreshold", 3)
                    longest = max(longest, float(window))
        return longest

    # ------------------------------------------------------------------ what runs now

    def _selector(self) -> str:
        return f"{STACK_LABEL}={self.stack.name}"

    def pods(self) -> list[dict[str, Any]]:
        return self.api.list("v1", "Pod", self.name, f"{self._selector()},{SERVICE_LABEL}")

    def running(self) -> list[ContainerState]:
        return pods_states(self.pods(), SERVICE_LABEL, self.context().workloads)

    def context(self) -> KubernetesContext:
        return KubernetesContext(
            conn_id=self.runtime.kube_conn_id,
            namespace=self.name,
            stack=self.stack.name,
            workloads={s.name: workload_of(self.stack, s.name) for s in self.stack.services},
        )

    # ------------------------------------------------------------------ actions

    def env(self, version: str) -> dict[str, str]:
        return {"namespace": self.name, "release": check_version(version)}

    def _scale_refs(self, version: str, services: Sequence[str]) -> list[str]:
        wanted = {workload_of(self.stack, s) for s in services}
        return [ref(o) for o in self._workloads(version) if o["metadata"]["name"] in wanted]

    def commands(self, step: str, version: str, services: Sequence[str] = ()) -> list[list[str]]:
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        check_version(version)
        ns, manager = f"--namespace={self.name}", f"--field-manager={self.runtime.field_manager}"
        if step == "migrate":
            migration = self.stack.migration
            if migration is None:
                return []
            return [["kubernetes-job", ns, f"--from={migration.service}", "--", *migration.command]]
        if step in ("stop", "resume", "down"):
            chosen = [s.name for s in self.stack.services] if step == "down" else services
            refs = self._scale_refs(version, chosen)
            to = "--replicas=recorded" if step == "resume" else "--replicas=0"
            return [["kubernetes-scale", ns, to, *refs]] if refs else []
        refs = [ref(o) for o in self.release(version)]
        if step == "fetch":
            return [["kubernetes-apply", ns, manager, "--dry-run=server", *refs]]
        return [
            ["kubernetes-apply", ns, manager, "--server-side", *refs],
            ["kubernetes-prune", ns, f"--selector={self._selector()}", f"--keep={len(refs)}"],
        ]

    def run_argv(
        self, argv: Sequence[str], version: str, log: LineLogger, *, timeout: float | None = None
    ) -> float:
        started = time.monotonic()
        action = argv[0]
        if action == "kubernetes-apply":
            self._apply(version, dry_run="--dry-run=server" in argv, log=log)
        elif action == "kubernetes-prune":
            self._prune(version, log)
        elif action == "kubernetes-scale":
            refs = [a for a in argv[1:] if not a.startswith("--")]
            self._scale(refs, recorded="--replicas=recorded" in argv, log=log)
        elif action == "kubernetes-job":
            migration = self.stack.migration
            assert migration is not None
            wait = migration.timeout.total_seconds() if timeout is None else timeout
            name = self.start_job("migrate", version, list(migration.command), log)
            self.wait_job(name, wait, log)
        else:
            raise RuntimeFailure(f"not a Kubernetes runtime action: {argv!r}")
        return time.monotonic() - started

    def _apply(self, version: str, *, dry_run: bool, log: LineLogger) -> None:
        for obj in self.release(version):
            self.api.apply(obj, self.runtime.field_manager, dry_run=dry_run)
            log.info("%s %s", "checked (dry run)" if dry_run else "applied", ref(obj))

    def _prune(self, version: str, log: LineLogger) -> None:
        keep = {ref(o) for o in self.release(version)}
        selector = f"{self._selector()},{MANAGED_BY}=opsflow,!{JOB_LABEL}"
        for api_version, kind in PRUNE_KINDS:
            try:
                found = self.api.list(api_version, kind, self.name, selector)
            except RuntimeFailure:
                continue  # a kind this API server does not serve holds nothing to prune
            for obj in found:
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                if ref(obj) not in keep:
                    self.api.delete(api_version, kind, obj["metadata"]["name"], self.name)
                    log.info("pruned %s: the release no longer holds it", ref(obj))

    def _scale(self, refs: Sequence[str], *, recorded: bool, log: LineLogger) -> None:
        for text in refs:
            api_version, kind, name = _split_ref(text)
            live = self.api.get(api_version, kind, name, self.name)
            if live is None:
                log.info("%s is not on the cluster: nothing to scale", text)
                continue
            annotations = live["metadata"].get("annotations") or {}
            if recorded:
                replicas = int(
                    annotations.get(REPLICAS_ANNOTATION, live["spec"].get("replicas", 1))
                )
                patch: dict[str, Any] = {
                    "metadata": {"annotations": {REPLICAS_ANNOTATION: None}},
                    "spec": {"replicas": replicas},
                }
            else:
                replicas = 0
                live_replicas = int(live["spec"].get("replicas", 1))
                # Stopped already (a retry): the replicas before the first stop stay recorded.
                before = (
                    str(live_replicas)
                    if live_replicas
                    else annotations.get(REPLICAS_ANNOTATION, "1")
                )
                patch = {"metadata": {"annotations": {REPLICAS_ANNOTATION: before}},
                         "spec": {"replicas": 0}}  # fmt: skip
            self.api.merge_patch(api_version, kind, name, self.name, patch)
            log.info("scaled %s to %s", text, replicas)

    # ------------------------------------------------------------------ jobs

    def start_job(self, purpose: str, version: str, command: list[str], log: LineLogger) -> str:
        """Create a Job of the migration service's pod template running ``command``;
        its name."""
        name = job_name(self.stack.name, purpose, version)
        job = migration_job(self.stack, self.release(version), version, name, command)
        job["metadata"]["labels"][JOB_LABEL] = purpose
        self.api.create(job)
        log.info("created Job %s (%s) from the image of release %s", name, purpose, version)
        return name

    def begin_wait(self, step: str, version: str, log: LineLogger) -> dict[str, Any] | None:
        """A migration is a Job waited for in the triggerer: created here, then deferred."""
        migration = self.stack.migration
        if step != "migrate" or migration is None:
            return None
        name = self.start_job("migrate", version, list(migration.command), log)
        return {
            "conn_id": self.runtime.kube_conn_id,
            "namespace": self.name,
            "job": name,
            "timeout": migration.timeout.total_seconds(),
        }

    def end_wait(self, event: Mapping[str, Any], log: LineLogger) -> None:
        failure = None if event.get("status") == "complete" else str(event.get("reason"))
        self.finish_job(str(event["job"]), failure, log)

    def job_state(self, name: str) -> tuple[bool, str | None]:
        job = self.api.get("batch/v1", "Job", name, self.name)
        if job is None:
            return True, f"Job {name} is gone"
        return job_outcome(job)

    def wait_job(self, name: str, timeout: float, log: LineLogger) -> None:
        """Wait in this process (a rollback's down-migration); ``finish_job`` after."""
        deadline = time.monotonic() + timeout
        while True:
            done, failure = self.job_state(name)
            if done:
                break
            if time.monotonic() > deadline:
                failure = f"did not finish within {timeout:.0f}s"
                break
            time.sleep(JOB_POLL)
        self.finish_job(name, failure, log)

    def finish_job(self, name: str, failure: str | None, log: LineLogger) -> None:
        """Put the Job's pod logs in the task log; delete it when it succeeded, keep it
        (and name it) when it failed."""
        pods = self.api.list("v1", "Pod", self.name, f"job-name={name}")
        for pod in pods:
            for line in self.api.pod_log(self.name, pod["metadata"]["name"]).splitlines():
                log.info("[%s] %s", pod["metadata"]["name"], line)
        if failure is not None:
            raise RuntimeFailure(
                f"Job {name} failed: {failure}; kept for inspection "
                f"(kubectl -n {self.name} logs job/{name})"
            )
        self.api.delete("batch/v1", "Job", name, self.name)
        log.info("Job %s succeeded and was deleted with its pods", name)

    def pin_images(self, images: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Nothing to re-tag here: the recorded release names its images by reference."""
        return []

    def down_migrate(self, new_version: str, previous_version: str, log: LineLogger) -> None:
        migration = self.stack.migration
        if migration is None or not migration.down_command:
            raise RuntimeFailure(f"stack {self.stack.name} declares no down-migration")
        command = [
            part.replace("{previous_version}", check_version(previous_version))
            for part in migration.down_command
        ]
        name = self.start_job("down-migrate", new_version, command, log)
        self.wait_job(name, migration.timeout.total_seconds(), log)

    # ------------------------------------------------------------------ data

    def service_image(self, service: str, version: str) -> str | None:
        return self.images(version).get(service)

    def data_dir(self, service: str, target: str, version: str) -> Path:
        raise RuntimeFailure(
            f"{self.stack.name}: {service}'s {target} lives on a cluster volume, not on this host"
        )
