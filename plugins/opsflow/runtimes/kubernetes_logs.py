"""Log roots on a Kubernetes stack's PersistentVolumeClaims, cleaned by a pod that mounts
the claim and runs the same file engine (``opsflow.logs.files``) as on a host.

The engine is stdlib-only, so its modules travel in the pod's spec as a zip (an environment
variable): the rules, the symlink-proof walk and the system-directory checks are the same
code, with the claim's mount as the only allowed root. The pod prints its report as its last
log line and ends; no exec into any pod is needed (the Role grants none). It runs as the
user of the pod that writes the claim (so it may rename and delete that user's files), on
that pod's node when the claim is ReadWriteOnce, and is stopped by the kubelet at the
cleanup's timeout even if the task is killed. What it cannot see: which files the writers
hold open (they run in other pods), so ``min_age_minutes`` alone protects a file being
written; the report says so.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes_api import KubeApi
from opsflow.runtimes.kubernetes_manifests import MANAGED_BY, STACK_LABEL
from opsflow.runtimes.kubernetes_status import live_pods
from opsflow.runtimes.process import LineLogger

MOUNT = "/opsflow/claim"
ROLE_LABEL = "opsflow.io/role"
ROLE = "log-cleanup"
CLAIM_LABEL = "opsflow.io/claim"
CONTAINER = "clean"
POLL = 1.0
PROGRESS_EVERY = 30.0
OPEN_FILES_NOTE = (
    "files the writers hold open are not visible from the cleanup pod; only "
    "min_age_minutes keeps a file that is being written"
)
# The engine and what it imports, relative to the package's parent directory.
ENGINE_MODULES = (
    "opsflow/__init__.py",
    "opsflow/errors.py",
    "opsflow/logs/__init__.py",
    "opsflow/logs/compress.py",
    "opsflow/logs/files.py",
    "opsflow/stack/__init__.py",
    "opsflow/stack/safety.py",
)

# Waiting reasons after which the pod will not start by itself.
STUCK_REASONS = (
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError",
)  # fmt: skip
ENGINE_ENV = "OPSFLOW_ENGINE_ZIP"
REPORT_MARK = "opsflow-report "
# Runs in the pod as ``python3 -c BOOTSTRAP MOUNT SUBDIR RULE_JSON MODE``: unpacks the
# engine from $OPSFLOW_ENGINE_ZIP (base64), cleans MOUNT/SUBDIR with MOUNT as the only
# allowed root and prints the report as its last line.
BOOTSTRAP = f"""\
import base64, json, os, sys, tempfile
from pathlib import Path
mount, subdir, rule, mode = sys.argv[1:5]
engine = os.path.join(tempfile.mkdtemp(prefix="opsflow-"), "engine.zip")
with open(engine, "wb") as out:
    out.write(base64.b64decode(os.environ.pop("{ENGINE_ENV}")))
sys.path.insert(0, engine)
os.environ["OPSFLOW_ALLOWED_ROOTS"] = mount
from opsflow.logs.files import CleanupRule, clean_root, open_file_ids
root = Path(mount, subdir) if subdir else Path(mount)
report = clean_root(root, CleanupRule(**json.loads(rule)), dry_run=mode == "dry",
                    open_files=open_file_ids())
print("{REPORT_MARK}" + json.dumps(report.to_dict()), flush=True)
"""


def engine_zip() -> str:
    """The engine's modules as a zip in base64, read from this installation."""
    import base64

    base = Path(__file__).resolve().parents[2]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ENGINE_MODULES:
            archive.writestr(name, (base / name).read_bytes())
    return base64.b64encode(buffer.getvalue()).decode()


def report_of(log: str) -> dict[str, Any] | None:
    """The report a cleanup pod printed as its last marked line, if it got that far."""
    import json

    for line in reversed(log.splitlines()):
        if line.startswith(REPORT_MARK):
            try:
                report: dict[str, Any] = json.loads(line[len(REPORT_MARK) :])
            except ValueError:
                return None
            return report
    return None


def claim_slug(claim: str) -> str:
    return hashlib.sha256(claim.encode()).hexdigest()[:10]


def pod_name(stack: str, claim: str) -> str:
    """At most 63 characters, unique per attempt: a pod left by a killed try never blocks."""
    suffix = f"{claim_slug(claim)[:6]}-{secrets.token_hex(3)}"
    return f"{stack}-logs"[: 63 - len(suffix) - 1].rstrip("-") + f"-{suffix}"


def mounts_claim(pod: Mapping[str, Any], claim: str) -> bool:
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return any(
        (volume.get("persistentVolumeClaim") or {}).get("claimName") == claim for volume in volumes
    )


def writer_of(pods: Sequence[Mapping[str, Any]], claim: str) -> dict[str, Any] | None:
    """A scheduled, not terminating pod that mounts ``claim``: whose node and user the
    cleanup pod takes."""
    for pod in live_pods(pods):
        if (pod.get("spec") or {}).get("nodeName") and mounts_claim(pod, claim):
            return dict(pod)
    return None


def cleanup_pod(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    claim: str,
    subdir: str,
    rule: Mapping[str, Any],
    dry_run: bool,
    image: str,
    deadline: int,
    writer: Mapping[str, Any] | None,
    access_modes: Sequence[str],
) -> dict[str, Any]:
    """The pod that cleans the root on ``claim`` once and ends (stopped by the kubelet at
    ``deadline`` seconds)."""
    import json

    mode = "dry" if dry_run else "real"
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "command": ["python3", "-c", BOOTSTRAP],
                "args": [MOUNT, subdir, json.dumps(dict(rule)), mode],
                "env": [{"name": ENGINE_ENV, "value": engine_zip()}],
                "volumeMounts": [
                    {"name": "claim", "mountPath": MOUNT},
                    # The engine's zip; the root filesystem stays read-only.
                    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own
                ],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                },
            }
        ],
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
            if key in ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "runAsNonRoot")
        }
        if "runAsUser" in context:
            # The writer's own user needs no capabilities to rename and delete its files.
            spec["containers"][0]["securityContext"]["capabilities"] = {"drop": ["ALL"]}
        if context:
            spec["securityContext"] = context
        if "ReadWriteOnce" in access_modes:
            # A ReadWriteOnce volume mounts on one node at a time: the writer's.
            spec["affinity"] = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {
                                        "key": "metadata.name",
                                        "operator": "In",
                                        "values": [writer_spec["nodeName"]],
                                    }
                                ]
                            }
                        ]
                    }
                }
            }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, ROLE_LABEL: ROLE, CLAIM_LABEL: claim_slug(claim)},
        },
        "spec": spec,
    }


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a cleanup pod will not run, once that is certain; None while it may still."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


def pod_ended(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pending_reason(pod: Mapping[str, Any]) -> str:
    """What the scheduler or kubelet says about a pod that is not running yet."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return f"{condition.get('reason') or condition['type']}: {condition['message']}"
    return f"phase {status.get('phase') or 'unknown'}"


@dataclass
class ClaimCleanup:
    """One stack's claim cleanups through ``api``: check, create, wait, read, delete."""

    api: KubeApi
    stack: str
    namespace: str
    image: str
    timeout: float

    @property
    def _selector(self) -> str:
        return f"{STACK_LABEL}={self.stack}"

    def run(
        self,
        claim: str,
        subdir: str,
        rule: Mapping[str, Any],
        *,
        dry_run: bool,
        log: LineLogger,
    ) -> dict[str, Any]:
        """The engine's report on ``claim``/``subdir``; the pod is deleted afterwards
        whatever happened, as is one an earlier, killed try left."""
        volume = self._owned(claim)
        writer = writer_of(self.api.list("v1", "Pod", self.namespace, ""), claim)
        modes = list((volume.get("spec") or {}).get("accessModes") or [])
        if writer is not None and "ReadWriteOncePod" in modes:
            raise RuntimeFailure(
                f"claim {claim} is ReadWriteOncePod and pod {writer['metadata']['name']} "
                "mounts it: no second pod can, so its log root is out of reach while it runs"
            )
        mine = f"{self._selector},{ROLE_LABEL}={ROLE},{CLAIM_LABEL}={claim_slug(claim)}"
        for leftover in self.api.list("v1", "Pod", self.namespace, mine):
            self.api.delete("v1", "Pod", leftover["metadata"]["name"], self.namespace)
            log.info("deleted pod %s, left by an earlier try", leftover["metadata"]["name"])
        name = pod_name(self.stack, claim)
        self.api.create(
            cleanup_pod(
                name=name, namespace=self.namespace, claim=claim, subdir=subdir, rule=rule,
                labels={STACK_LABEL: self.stack, MANAGED_BY: "opsflow"}, dry_run=dry_run,
                image=self.image, deadline=int(self.timeout), writer=writer,
                access_modes=modes,
            )
        )  # fmt: skip
        where = f" on node {writer['spec']['nodeName']}" if writer else ""
        log.info("created pod %s mounting claim %s%s", name, claim, where)
        try:
            self._wait_ended(name, log)
            text = self.api.pod_log(self.namespace, name)
        finally:
            self.api.delete("v1", "Pod", name, self.namespace)
            log.info("deleted pod %s", name)
        for line in text.splitlines():
            if not line.startswith(REPORT_MARK):
                log.info("[%s] %s", name, line)
        report = report_of(text)
        if report is None:
            tail = " | ".join(text.strip().splitlines()[-3:]) or "(no output)"
            raise RuntimeFailure(f"cleanup pod {name} on claim {claim} printed no report: {tail}")
        report["root"] = f"claim:{claim}" + (f"/{subdir}" if subdir else "")
        report["note"] = OPEN_FILES_NOTE
        return report

    def _owned(self, claim: str) -> dict[str, Any]:
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

    def _wait_ended(self, name: str, log: LineLogger) -> None:
        started = said = time.monotonic()
        while True:
            pod = self.api.get("v1", "Pod", name, self.namespace)
            if pod is None:
                raise RuntimeFailure(f"cleanup pod {name} is gone before it ended")
            if pod_ended(pod):
                return
            waited = time.monotonic() - started
            problem = pod_problem(pod)
            if problem is None and waited > self.timeout:
                problem = f"not done after {self.timeout:.0f}s ({pending_reason(pod)})"
            if problem is not None:
                raise RuntimeFailure(f"cleanup pod {name}: {problem}")
            if time.monotonic() - said >= PROGRESS_EVERY:
                said = time.monotonic()
                log.info("cleanup pod %s: %s after %.0fs", name, pending_reason(pod), waited)
            time.sleep(POLL)
