"""A Kubernetes release as data: the stack's manifests, rendered with the release's images.

Rendering is plain data work, no templating: a value in a manifest reaches the cluster as
written, except the tag of every image whose repository is a versioned service's image
(set to the release version) and the labels that tie each object to the stack. The
rendered set is serialised deterministically, so the same manifests and version give the
same bytes: what the ledger stores and a rollback applies again.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes_status import normal_reference
from opsflow.stack.model import KubernetesRuntime, Stack, check_version

MANAGED_BY = "app.kubernetes.io/managed-by"
STACK_LABEL = "opsflow.io/stack"
SERVICE_LABEL = "opsflow.io/service"
RELEASE_ANNOTATION = "opsflow.io/release"
CONFIG_ANNOTATION = "opsflow.io/config-digest"

# Helm's install order: what others refer to goes first (config before the pods reading
# it, workloads before the autoscaler and ingress pointing at them).
APPLY_ORDER = (
    "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget", "ServiceAccount",
    "Secret", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "Service",
    "DaemonSet", "Pod", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "Ingress",
)  # fmt: skip
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# What a stack may not apply: objects of the whole cluster, not of its namespace.
CLUSTER_SCOPED = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "IngressClass", "PriorityClass", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Node",
})  # fmt: skip


def manifest_files(working_dir: Path, listed: Sequence[str]) -> list[Path]:
    """The manifest files ``listed`` names: files as given, directories as their
    ``*.yaml``/``*.yml`` files by name (not recursive)."""
    found: list[Path] = []
    for index, name in enumerate(listed):
        path = working_dir / name
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not inside:
                raise RuntimeFailure(f"runtime.manifests[{index}]: {path} has no *.yaml file")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise RuntimeFailure(f"runtime.manifests[{index}]: {path} does not exist")
    return found


def _kind_name(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def load_objects(files: Iterable[Path], namespace: str) -> list[dict[str, Any]]:
    """Every object of the files, checked: a mapping with apiVersion, kind and a name, of a
    namespaced kind, in the stack's namespace (or none), each named once."""
    objects: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            raise RuntimeFailure(f"{path}: not valid YAML: {error}") from None
        for number, obj in enumerate(documents):
            where = f"{path} (document {number + 1})"
            if obj is None:
                continue
            if not isinstance(obj, dict) or not all(obj.get(k) for k in ("apiVersion", "kind")):
                raise RuntimeFailure(f"{where}: not a Kubernetes object (apiVersion and kind)")
            metadata = obj.get("metadata")
            if not isinstance(metadata, dict) or not metadata.get("name"):
                raise RuntimeFailure(f"{where}: {obj['kind']} without metadata.name")
            if obj["kind"] == "Job":
                raise RuntimeFailure(
                    f"{where}: Job/{metadata['name']}: a Job's pod template cannot change, and "
                    "a release changes its image; declare the stack's migration (a Job per "
                    "release) or a CronJob instead"
                )
            if obj["kind"] in CLUSTER_SCOPED or obj["kind"].endswith("List"):
                raise RuntimeFailure(
                    f"{where}: {_kind_name(obj)} is not a namespaced object; a stack applies "
                    f"only objects of its namespace {namespace}"
                )
            given = metadata.get("namespace")
            if given not in (None, namespace):
                raise RuntimeFailure(
                    f"{where}: {_kind_name(obj)} names namespace {given!r}, the stack's is "
                    f"{namespace!r}"
                )
            key = f"{obj['apiVersion'].split('/')[0]}:{_kind_name(obj)}"
            if key in seen:
                raise RuntimeFailure(f"{where}: {_kind_name(obj)} is already in {seen[key]}")
            seen[key] = where
            objects.append(obj)
    if not objects:
        raise RuntimeFailure("the manifests hold no object")
    return objects


def repository(reference: str) -> str:
    """``registry:5000/team/api:1.0`` -> ``registry:5000/team/api`` (digest dropped too)."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def pod_spec_of(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload, job or cron job (None for other kinds)."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template") if isinstance(spec, dict) else None
    return template if isinstance(template, dict) else None


def _containers(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = template.get("spec") or {}
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def namespace_of(stack: Stack) -> str:
    if not isinstance(stack.runtime, KubernetesRuntime):
        raise RuntimeFailure(f"stack {stack.name} does not use the kubernetes runtime")
    return stack.runtime.namespace


def service_of(stack: Stack, workload: str) -> str | None:
    """The stack service a workload runs (``runtime.workloads``, else the same name)."""
    workloads = getattr(stack.runtime, "workloads", {})
    for service, name in workloads.items():
        if name == workload:
            return str(service)
    names = {service.name for service in stack.services}
    return workload if workload in names and workload not in workloads else None


def workload_of(stack: Stack, service: str) -> str:
    return str(getattr(stack.runtime, "workloads", {}).get(service, service))


def release_images(stack: Stack, version: str) -> dict[str, str]:
    """Repository -> reference of every versioned service's image in ``version``."""
    tag = check_version(version)
    return {
        normal_reference(s.image): f"{s.image}:{tag}"
        for s in stack.services
        if s.versioned and s.image
    }


def render(
    stack: Stack, objects: Sequence[Mapping[str, Any]], version: str
) -> list[dict[str, Any]]:
    """The objects of release ``version``, in apply order: namespaced, labelled as the
    stack's, pod templates labelled with their service, release images tagged."""
    images = release_images(stack, version)
    namespace = namespace_of(stack)
    rendered = []
    for original in objects:
        obj = copy.deepcopy(dict(original))
        metadata = obj["metadata"]
        metadata["namespace"] = namespace
        metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_BY: "opsflow",
                              STACK_LABEL: stack.name}  # fmt: skip
        metadata["annotations"] = {**(metadata.get("annotations") or {}),
                                   RELEASE_ANNOTATION: version}  # fmt: skip
        template = pod_spec_of(obj)
        if template is not None:
            template_meta = template.get("metadata") or {}
            template["metadata"] = template_meta
            labels = template_meta["labels"] = {**(template_meta.get("labels") or {}),
                                                STACK_LABEL: stack.name}  # fmt: skip
            service = service_of(stack, metadata["name"])
            if service is not None and obj["kind"] in WORKLOAD_KINDS:
                labels[SERVICE_LABEL] = service
            for container in _containers(template):
                wanted = images.get(normal_reference(repository(str(container.get("image", "")))))
                if wanted is not None:
                    container["image"] = wanted
        rendered.append(obj)
    scaled = {
        ((o.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
        for o in rendered
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    for obj in rendered:
        if obj["kind"] in WORKLOAD_KINDS and obj["metadata"]["name"] in scaled:
            # The autoscaler owns the replicas: a release that set them would undo its
            # scaling at every apply (the field manager forces its values).
            obj.get("spec", {}).pop("replicas", None)
    config = config_digest(rendered)
    for obj in rendered:
        template = pod_spec_of(obj)
        if template is not None and obj["kind"] in WORKLOAD_KINDS:
            # A changed ConfigMap or Secret restarts the pods that read it, as a new image
            # does (Helm charts' checksum/config annotation).
            annotations = template["metadata"].get("annotations") or {}
            template["metadata"]["annotations"] = {**annotations, CONFIG_ANNOTATION: config}
    order = {kind: index for index, kind in enumerate(APPLY_ORDER)}
    return sorted(rendered, key=lambda o: order.get(str(o["kind"]), len(order)))


def config_digest(objects: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the content of the release's ConfigMaps and Secrets (not of the release
    version their metadata carries: a new release alone restarts only its own images)."""
    config = [
        {"kind": o["kind"], "name": o["metadata"]["name"],
         **{k: o[k] for k in ("data", "stringData", "binaryData") if k in o}}
        for o in objects
        if o.get("kind") in ("ConfigMap", "Secret")
    ]  # fmt: skip
    text = yaml.safe_dump_all(config, sort_keys=True) if config else ""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def release_text(objects: Sequence[Mapping[str, Any]]) -> str:
    """The rendered set as one YAML stream, the same bytes for the same objects."""
    return yaml.safe_dump_all(list(objects), sort_keys=True, default_flow_style=False)


def parse_release(text: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all(text) if obj]


def workloads(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments and StatefulSets of a release: what its gate follows."""
    return [dict(o) for o in objects if o.get("kind") in WORKLOAD_KINDS]


def migration_job(
    stack: Stack, objects: Sequence[Mapping[str, Any]], version: str, name: str,
    command: Sequence[str],
) -> dict[str, Any]:  # fmt: skip
    """A Job running ``command`` (the image's arguments, as ``compose run`` replaces the
    command) in the migration service's pod template of the rendered release: the same
    image, environment, secrets and volumes, without probes or ports, run once."""
    migration = stack.migration
    if migration is None:
        raise RuntimeFailure(f"stack {stack.name} declares no migration")
    workload = workload_of(stack, migration.service)
    source = next(
        (
            o
            for o in objects
            if o.get("kind") in WORKLOAD_KINDS and o["metadata"]["name"] == workload
        ),
        None,
    )
    if source is None:
        raise RuntimeFailure(
            f"migration.service {migration.service}: the manifests have no Deployment or "
            f"StatefulSet named {workload!r} to take its pod template from"
        )
    template = copy.deepcopy(pod_spec_of(source) or {})
    spec = template.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise RuntimeFailure(f"{_kind_name(source)}: its pod template has no container")
    container = containers[0]
    for key in ("livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle"):
        container.pop(key, None)
    container["args"] = list(command)
    # A StatefulSet's claim templates are no volumes of a pod of its own: mounts of them
    # (and init containers preparing them) have nothing to mount in a Job.
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") in volumes]
    if "volumeMounts" in container:
        container["volumeMounts"] = mounts
    spec.pop("initContainers", None)
    spec["containers"] = [container]
    spec["restartPolicy"] = "Never"
    labels = {MANAGED_BY: "opsflow", STACK_LABEL: stack.name, "opsflow.io/job": "migration"}
    template["metadata"] = {"labels": {**labels}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace_of(stack),
            "labels": labels,
            "annotations": {RELEASE_ANNOTATION: version},
        },
        # The cluster stops the Job at the migration's timeout: a rollback never restores
        # the database under a migration still writing to it.
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(migration.timeout.total_seconds()),
            "template": template,
        },
    }
