"""The Kubernetes variants of ai-doc, Backend2 and kratos (include/stacks/<system>-k8s.yaml
over the manifests of include/replicas/<system>/k8s), rendered as the runtime renders a
release, against the real Kubernetes OpenAPI schema (kubernetes-validate, strict) and
against what the schema cannot see: the release tag on every versioned service's workload,
Services that select exactly one workload, and claims, ConfigMaps, Secrets, volumes and
ports that resolve. No API server is involved: admission, scheduling and the pods
themselves need a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from opsflow.runtimes.kubernetes_manifests import (
    SERVICE_LABEL,
    STACK_LABEL,
    WORKLOAD_KINDS,
    load_objects,
    manifest_files,
    migration_job,
    pod_spec_of,
    render,
    repository,
    service_of,
    workload_of,
)
from opsflow.stack.loader import load_stack_file, resolve_working_dir
from opsflow.stack.model import ComposeRuntime, KubernetesRuntime, Stack

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "include" / "stacks"
REPLICAS = REPO / "include" / "replicas"
RELEASES = ("1.0.0", "1.1.0")
SCHEMA_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))


@dataclass(frozen=True)
class System:
    """What a system's manifests leave to the operator: Secrets (name -> keys, None for a
    TLS Secret) and ConfigMaps created out of band, which the header of the first file
    says how to create."""

    namespace: str
    secrets: dict[str, frozenset[str] | None]
    configmaps: frozenset[str] = field(default_factory=frozenset)


SYSTEMS = {
    "ai-doc": System(
        namespace="ai-doc",
        secrets={
            "ai-doc-secrets": frozenset({"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "JWT_SECRET"})
        },
        configmaps=frozenset({"ai-doc-initdb"}),
    ),
    "backend2": System(
        namespace="backend2",
        secrets={
            "backend-secrets": frozenset(
                {"postgres-password", "redis-password", "database-url", "redis-url", "secret-key"}
            ),
            "api-tls-secret": None,
        },
    ),
    "kratos": System(
        namespace="kratos", secrets={"kratos-secrets": frozenset({"POSTGRES_PASSWORD"})}
    ),
}
CASES = [(system, version) for system in SYSTEMS for version in RELEASES]


def shipped(system: str) -> Stack:
    return load_stack_file(STACKS / f"{system}-k8s.yaml")


def on_replica(system: str) -> Stack:
    """The overlay with its working dir moved from the production checkout (/opt/...) to
    the replica, as the replica's own overlay moves the compose runtime's."""
    stack = shipped(system)
    assert isinstance(stack.runtime, KubernetesRuntime)
    runtime = stack.runtime.model_copy(update={"working_dir": str(REPLICAS / system)})
    return stack.model_copy(update={"runtime": runtime})


def release(stack: Stack, version: str) -> list[dict[str, Any]]:
    """What ``KubernetesCluster.release`` applies for ``version``."""
    assert isinstance(stack.runtime, KubernetesRuntime)
    files = manifest_files(resolve_working_dir(stack, STACKS), stack.runtime.manifests)
    return render(stack, load_objects(files, stack.runtime.namespace), version)


def by_kind_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def containers(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = template.get("spec") or {}
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def assert_valid(obj: dict[str, Any]) -> None:
    for version in SCHEMA_VERSIONS:
        problem = None
        try:
            used = kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problem = f"{'.'.join(str(part) for part in error.path)}: {error.message}"
        if problem is not None:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{name} is not valid for Kubernetes {version}: {problem}")
        assert used == version, f"validated against {used}, not {version}"


def assert_template_references(
    template: dict[str, Any],
    named: dict[tuple[str, str], dict[str, Any]],
    system: System,
    claims: set[str],
    where: str,
) -> None:
    """Every volume, mount, ConfigMap, Secret and named probe port of a pod template
    exists in the release or among the system's out-of-band objects."""
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def config_map(name: str, key: str | None = None) -> None:
        if name in system.configmaps:
            return
        assert ("ConfigMap", name) in named, (where, "ConfigMap", name)
        if key is not None:
            assert key in named[("ConfigMap", name)]["data"], (where, name, key)

    def secret(name: str, key: str | None = None) -> None:
        assert name in system.secrets, (where, "Secret", name)
        keys = system.secrets[name]
        if key is not None:
            assert keys is not None and key in keys, (where, name, key)

    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert ("PersistentVolumeClaim", claim) in named, (where, claim)
        if "configMap" in volume:
            config_map(volume["configMap"]["name"])
        if "secret" in volume:
            secret(volume["secret"]["secretName"])
    for container in containers(template):
        ports = {p["name"] for p in container.get("ports", []) if "name" in p}
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes or mount["name"] in claims, (where, mount)
            source = volumes.get(mount["name"], {})
            if "subPath" in mount and "configMap" in source:
                config_map(source["configMap"]["name"], mount["subPath"])
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                config_map(source["configMapRef"]["name"])
            if "secretRef" in source:
                secret(source["secretRef"]["name"])
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                config_map(ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
            if "secretKeyRef" in ref:
                secret(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if isinstance(port, str):
                assert port in ports, (where, container["name"], probe, port)


# --------------------------------------------------------------------------- the stack files


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_the_variant_is_the_checkouts_k8s_directory(system: str) -> None:
    """The cluster variant reads the manifests from the same checkout the compose runtime
    runs in, so the replica's overlay (which moves that checkout) finds them too."""
    stack = shipped(system)
    assert stack.name == f"{system}-k8s"
    assert isinstance(stack.runtime, KubernetesRuntime)
    (compose,) = [v for v in stack.variants if isinstance(v, ComposeRuntime)]
    assert stack.runtime.working_dir == compose.working_dir
    assert stack.runtime.manifests == ["k8s"]
    assert stack.runtime.namespace == SYSTEMS[system].namespace
    assert stack.backup.local_dir == f"/var/backups/opsflow/{system}-k8s"
    assert stack.logs.roots == []
    for service in stack.services:
        assert [c.kind for c in service.health] == ["container"], service.name
    assert (REPO / "dags" / f"{system}-k8s.py").is_file()


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize(("system", "version"), CASES)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(
    system: str, version: str
) -> None:
    objects = release(on_replica(system), version)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service"} <= kinds
    for obj in objects:
        assert_valid(obj)


@pytest.mark.parametrize(("system", "version"), CASES)
def test_the_migration_job_is_valid_and_runs_in_the_release_image(
    system: str, version: str
) -> None:
    stack = on_replica(system)
    if system == "ai-doc":
        # Its SQL files are in the checkout, in no release image: nothing to run them from.
        assert stack.migration is None
        return
    assert stack.migration is not None
    objects = release(stack, version)
    job = migration_job(stack, objects, version, f"{system}-migrate-test", stack.migration.command)
    assert_valid(job)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    image = stack.service(stack.migration.service).image
    assert container["image"] == f"{image}:{version}"
    assert "command" not in container
    assert container["args"] == list(stack.migration.command)
    assert SERVICE_LABEL not in job["spec"]["template"]["metadata"]["labels"]
    assert_template_references(job["spec"]["template"], by_kind_name(objects),
                               SYSTEMS[system], set(), "migration Job")  # fmt: skip


# --------------------------------------------------------------------------- the rendering


@pytest.mark.parametrize(("system", "version"), CASES)
def test_every_service_has_its_workload_running_the_release_or_its_fixed_image(
    system: str, version: str
) -> None:
    stack = on_replica(system)
    named = by_kind_name(release(stack, version))
    workloads = {name: obj for (kind, name), obj in named.items() if kind in WORKLOAD_KINDS}
    versioned = {s.image for s in stack.services if s.versioned}
    for service in stack.services:
        name = workload_of(stack, service.name)
        assert name in workloads, (service.name, name, sorted(workloads))
        template = pod_spec_of(workloads[name]) or {}
        first = template["spec"]["containers"][0]["image"]
        if service.versioned:
            assert first == f"{service.image}:{version}", service.name
        else:
            assert first == service.image, service.name
        assert template["metadata"]["labels"][SERVICE_LABEL] == service_of(stack, name)
        assert template["metadata"]["labels"][STACK_LABEL] == stack.name
    # Every container of a versioned repository, anywhere, runs the release.
    for obj in named.values():
        for container in containers(pod_spec_of(obj) or {}):
            if repository(container["image"]) in versioned:
                assert container["image"].endswith(f":{version}"), container


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_a_new_release_changes_only_the_versioned_workloads(system: str) -> None:
    stack = on_replica(system)
    old, new = by_kind_name(release(stack, "1.0.0")), by_kind_name(release(stack, "1.1.0"))
    assert old.keys() == new.keys()
    changed = {key[1] for key in old if pod_spec_of(old[key]) != pod_spec_of(new[key])}
    assert changed == {workload_of(stack, s.name) for s in stack.services if s.versioned}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_services_select_exactly_one_workload_and_references_resolve(system: str) -> None:
    stack = on_replica(system)
    objects = release(stack, "1.1.0")
    named = by_kind_name(objects)
    templates: dict[str, dict[str, Any]] = {}
    for obj in objects:
        template = pod_spec_of(obj)
        if template is None:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        assert_template_references(template, named, SYSTEMS[system], claims, where)
        if obj["kind"] in WORKLOAD_KINDS:
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template["metadata"]["labels"].items(), where
        templates[where] = template
    for (kind, name), obj in named.items():
        if kind == "Service":
            selector = obj["spec"]["selector"]
            chosen = [
                w for w, t in templates.items()
                if selector.items() <= t["metadata"]["labels"].items()
            ]  # fmt: skip
            assert len(chosen) == 1, (name, chosen)
            ports = {
                p.get("name") for c in templates[chosen[0]]["spec"]["containers"]
                for p in c.get("ports", [])
            }  # fmt: skip
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in ports, (name, port)
        if kind == "StatefulSet":
            governing = named[("Service", obj["spec"]["serviceName"])]
            assert governing["spec"]["clusterIP"] == "None", name
        if kind == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in named, name
        if kind == "Ingress":
            for secret in obj["spec"].get("tls", []):
                assert secret["secretName"] in SYSTEMS[system].secrets
            for rule in obj["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = named[("Service", backend["name"])]
                    given = {p["name"] for p in service["spec"]["ports"]} | {
                        p["port"] for p in service["spec"]["ports"]
                    }
                    assert backend["port"].get("name", backend["port"].get("number")) in given


# --------------------------------------------------------------------------- the manifests


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_the_manifests_hold_no_namespace_no_secret_and_say_how_to_create_them(
    system: str,
) -> None:
    facts = SYSTEMS[system]
    files = manifest_files(REPLICAS / system, ["k8s"])
    assert files[0].name == "00-config.yaml"
    header = files[0].read_text().split("apiVersion:", 1)[0]
    for name, keys in facts.secrets.items():
        kind = "generic" if keys is not None else "tls"
        assert f"kubectl -n {facts.namespace} create secret {kind} {name}" in header
        for key in keys or ():
            assert f"--from-literal={key}=" in header, (name, key)
    for name in facts.configmaps:
        assert f"kubectl -n {facts.namespace} create configmap {name}" in header
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in obj["metadata"], path
            assert obj["kind"] not in ("Secret", "Namespace", "Job"), path
