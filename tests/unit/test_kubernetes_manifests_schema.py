"""The demo's Kubernetes manifests (include/demo/k8s), rendered as the runtime renders a
release, the migration Job it derives from them and the connection's Role file
(include/kubernetes/opsflow-role.yaml) against the real Kubernetes OpenAPI schema
(kubernetes-validate, strict: an unknown or misspelt field fails), plus what the
rendering must do to the real files. No API server is involved: what an admission
controller or a controller would refuse beyond the schema needs a cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from opsflow.runtimes.kubernetes_manifests import (
    SERVICE_LABEL,
    STACK_LABEL,
    load_objects,
    manifest_files,
    migration_job,
    pod_spec_of,
    render,
)
from opsflow.stack.loader import load_stack_file, parse_stack, resolve_working_dir
from opsflow.stack.model import KubernetesRuntime, Stack

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "include" / "stacks"
DEMO_DIR = REPO / "include" / "demo"
MANIFESTS = DEMO_DIR / "k8s"
ROLE_FILE = REPO / "include" / "kubernetes" / "opsflow-role.yaml"
NAMESPACE = "opsflow-demo"
RELEASES = ("1.0.0", "1.1.0")
# The oldest Kubernetes the manifests promise, and the newest schema the package knows.
SCHEMA_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
SECRET = "opsflow-demo-secrets"
CONFIG = "opsflow-demo-config"
# Workload -> the image it runs: the versioned services get the release's tag, the others
# keep what the manifest says.
VERSIONED = {"api": "opsflow-demo/api", "worker": "opsflow-demo/worker"}
FIXED = {"postgres": "opsflow-demo/postgres:15", "redis": "opsflow-demo/redis:7"}


def demo_with_kubernetes_runtime() -> Stack:
    """demo.yaml's model (services, migration, gate) with the runtime swapped for a
    kubernetes one on include/demo/k8s; its compose-only parts (the variants list, the
    named-volume log root) left out, as the model refuses them on a cluster."""
    path = STACKS / "demo.yaml"
    data = yaml.safe_load(path.read_text())
    data["runtime"] = {
        "kind": "kubernetes",
        "namespace": NAMESPACE,
        "working_dir": str(DEMO_DIR),
        "manifests": ["k8s"],
    }
    data.pop("variants", None)
    data["logs"]["roots"] = []
    return parse_stack(data, path)


def demo_k8s_stack_file() -> Stack:
    """The stack file operators use: demo-k8s.yaml, demo.yaml's kubernetes variant."""
    return load_stack_file(STACKS / "demo-k8s.yaml")


STACK_BUILDERS: dict[str, Callable[[], Stack]] = {
    "demo.yaml-on-kubernetes": demo_with_kubernetes_runtime,
    "demo-k8s.yaml": demo_k8s_stack_file,
}


@pytest.fixture(params=sorted(STACK_BUILDERS))
def stack(request: pytest.FixtureRequest) -> Stack:
    built = STACK_BUILDERS[request.param]()
    assert isinstance(built.runtime, KubernetesRuntime)
    assert resolve_working_dir(built, STACKS) == DEMO_DIR
    return built


def release(stack: Stack, version: str) -> list[dict[str, Any]]:
    """What ``KubernetesCluster.release`` applies for ``version``."""
    assert isinstance(stack.runtime, KubernetesRuntime)
    files = manifest_files(resolve_working_dir(stack, STACKS), stack.runtime.manifests)
    return render(stack, load_objects(files, stack.runtime.namespace), version)


def job_of(stack: Stack, version: str) -> dict[str, Any]:
    assert stack.migration is not None
    return migration_job(
        stack, release(stack, version), version, "demo-migrate-test", stack.migration.command
    )


def by_kind_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    template = pod_spec_of(obj) or {}
    spec = template.get("spec") or {}
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def assert_valid(obj: dict[str, Any]) -> None:
    """Valid for every Kubernetes of SCHEMA_VERSIONS; a failure names the field."""
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


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize("version", RELEASES)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(
    stack: Stack, version: str
) -> None:
    objects = release(stack, version)
    assert sorted(by_kind_name(objects)) == [
        ("ConfigMap", CONFIG),
        ("Deployment", "api"),
        ("Deployment", "redis"),
        ("Deployment", "worker"),
        ("PersistentVolumeClaim", "applogs"),
        ("PersistentVolumeClaim", "redis-data"),
        ("PodDisruptionBudget", "api"),
        ("Service", "api"),
        ("Service", "postgres"),
        ("Service", "redis"),
        ("StatefulSet", "postgres"),
    ]
    for obj in objects:
        assert_valid(obj)


@pytest.mark.parametrize("version", RELEASES)
def test_the_migration_job_is_valid_and_runs_the_migration_in_the_release_image(
    stack: Stack, version: str
) -> None:
    job = job_of(stack, version)
    assert_valid(job)
    assert stack.migration is not None
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"opsflow-demo/api:{version}"
    # The image has no ENTRYPOINT, so args are the whole argv: a `command` taken over from
    # the api's pod template would run the api with the migration as its arguments.
    assert "command" not in container
    assert container["args"] == list(stack.migration.command)
    assert container["envFrom"] == [
        {"configMapRef": {"name": CONFIG}},
        {"secretRef": {"name": SECRET}},
    ]
    assert not {"livenessProbe", "readinessProbe", "ports"} & set(container)
    # Its pod is not an api pod: neither the gate (opsflow.io/service), nor the api
    # Service or disruption budget (app.kubernetes.io/name) count it.
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert SERVICE_LABEL not in labels and "app.kubernetes.io/name" not in labels
    assert labels[STACK_LABEL] == stack.name


def test_the_role_file_is_valid_namespaced_and_names_no_wildcard() -> None:
    documents = [d for d in yaml.safe_load_all(ROLE_FILE.read_text()) if d]
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding"]
    for document in documents:
        assert_valid(document)
        assert "namespace" not in document["metadata"]
    role, binding = documents[1], documents[2]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"watch", "update", "deletecollection", "escalate", "bind"} & set(
            rule["verbs"]
        ), rule
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    applied = {"get", "list", "create", "patch", "delete"}
    assert granted == {
        ("", "configmaps"): applied,
        ("", "secrets"): applied,
        ("", "services"): applied,
        ("", "serviceaccounts"): applied,
        ("", "persistentvolumeclaims"): applied - {"delete"},
        ("apps", "deployments"): applied,
        ("apps", "statefulsets"): applied,
        ("batch", "jobs"): applied,
        ("batch", "cronjobs"): applied,
        ("autoscaling", "horizontalpodautoscalers"): applied,
        ("networking.k8s.io", "ingresses"): applied,
        ("policy", "poddisruptionbudgets"): applied,
        ("", "pods"): {"get", "list", "create", "delete"},
        ("", "pods/log"): {"get"},
        ("", "pods/portforward"): {"get", "create"},
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "opsflow"}]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["spec"].__setitem__("replicas", "two"), "spec.replicas"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__(
                "livenessprobe", {"httpGet": {"path": "/health/live", "port": 8080}}
            ),
            "spec.template.spec.containers.0",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__(
                "containerPort", "8080"
            ),
            "spec.template.spec.containers.0.ports.0.containerPort",
        ),
    ],
    ids=["replicas-not-a-number", "misspelt-field", "port-as-string"],
)
def test_a_broken_manifest_fails_validation(
    stack: Stack, change: Callable[[dict[str, Any]], None], where: str
) -> None:
    api = copy.deepcopy(by_kind_name(release(stack, "1.1.0"))[("Deployment", "api")])
    assert_valid(api)
    change(api)
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(api, "1.30", strict=True)
    assert ".".join(str(part) for part in caught.value.path) == where


# --------------------------------------------------------------------------- the rendering


@pytest.mark.parametrize("version", RELEASES)
def test_release_images_carry_the_release_tag_and_the_others_stay(
    stack: Stack, version: str
) -> None:
    objects = by_kind_name(release(stack, version))
    workloads = {**{("Deployment", name): name for name in ("api", "worker", "redis")},
                 ("StatefulSet", "postgres"): "postgres"}  # fmt: skip
    for key, name in workloads.items():
        images = {c["name"]: c["image"] for c in containers(objects[key])}
        if name in VERSIONED:
            assert images == {name: f"{VERSIONED[name]}:{version}"}, key
        else:
            assert set(images.values()) == {FIXED[name]}, key


@pytest.mark.parametrize("version", RELEASES)
def test_every_object_is_labelled_as_the_stacks_and_in_its_namespace(
    stack: Stack, version: str
) -> None:
    for obj in release(stack, version):
        metadata = obj["metadata"]
        assert metadata["labels"][STACK_LABEL] == stack.name, obj["kind"]
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "opsflow"
        assert metadata["labels"]["app.kubernetes.io/part-of"] == "opsflow-demo"
        assert metadata["annotations"]["opsflow.io/release"] == version
        assert metadata["namespace"] == NAMESPACE


def test_pod_templates_carry_their_stack_service(stack: Stack) -> None:
    objects = by_kind_name(release(stack, "1.1.0"))
    services = {s.name for s in stack.services}
    templated = {key: obj for key, obj in objects.items() if pod_spec_of(obj) is not None}
    assert sorted(templated) == [
        ("Deployment", "api"),
        ("Deployment", "redis"),
        ("Deployment", "worker"),
        ("StatefulSet", "postgres"),
    ]
    for (_, name), obj in templated.items():
        labels = (pod_spec_of(obj) or {})["metadata"]["labels"]
        assert name in services
        assert labels[SERVICE_LABEL] == name
        assert labels[STACK_LABEL] == stack.name


def test_config_and_claims_are_applied_before_the_workloads_reading_them(stack: Stack) -> None:
    kinds = [o["kind"] for o in release(stack, "1.1.0")]
    workloads = [i for i, kind in enumerate(kinds) if kind in ("Deployment", "StatefulSet")]
    assert kinds.index("ConfigMap") < min(workloads)
    assert kinds.index("PersistentVolumeClaim") < min(workloads)
    assert max(i for i, kind in enumerate(kinds) if kind == "Service") < min(workloads)


def test_a_new_release_changes_only_the_versioned_workloads(stack: Stack) -> None:
    """1.0.0 -> 1.1.0 restarts the api and the worker; postgres and redis keep their pod
    template (a changed one would restart the database for nothing)."""
    old, new = by_kind_name(release(stack, "1.0.0")), by_kind_name(release(stack, "1.1.0"))
    assert old.keys() == new.keys()
    changed = sorted(key for key in old if pod_spec_of(old[key]) != pod_spec_of(new[key]))
    assert changed == [("Deployment", "api"), ("Deployment", "worker")]


# --------------------------------------------------------------------------- the manifests


def test_the_manifests_hold_no_namespace_no_secret_and_say_how_to_create_it() -> None:
    files = manifest_files(DEMO_DIR, ["k8s"])
    assert files[0].name == "00-config.yaml"
    header = files[0].read_text().split("apiVersion:", 1)[0]
    assert f"kubectl -n {NAMESPACE} create secret generic {SECRET}" in header
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in obj["metadata"], path
            assert obj["kind"] not in ("Secret", "Namespace"), path


def test_references_between_the_objects_resolve(stack: Stack) -> None:
    """What the schema cannot see and the API server or the pods would trip on: selectors
    that match their pod templates, Services and the budget that select a workload,
    ConfigMap keys, claims, volumes and named ports that exist, the Secret by name."""
    objects = release(stack, "1.1.0")
    named = by_kind_name(objects)
    config = named[("ConfigMap", CONFIG)]["data"]
    assert set(config) == {
        "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_DB", "REDIS_HOST",
        "REDIS_PORT", "APP_LOG_DIR", "WORKER_INTERVAL_SECONDS",
    }  # fmt: skip
    assert all(isinstance(value, str) for value in config.values())
    templates = {}
    for obj in objects:
        template = pod_spec_of(obj)
        if template is None:
            continue
        labels = template["metadata"]["labels"]
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), obj["metadata"]["name"]
        templates[obj["metadata"]["name"]] = template
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in named
        for container in containers(obj):
            ports = {p["name"] for p in container.get("ports", [])}
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in named
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == SECRET
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] == CONFIG
                    assert ref["configMapKeyRef"]["key"] in config
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] == SECRET
                    assert ref["secretKeyRef"]["key"] in ("POSTGRES_PASSWORD", "REDIS_PASSWORD")
            for probe in ("readinessProbe", "livenessProbe"):
                action = container.get(probe, {})
                port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    assert port in ports, (container["name"], probe, port)
    for (kind, name), obj in named.items():
        if kind not in ("Service", "PodDisruptionBudget"):
            continue
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        chosen = [
            w for w, t in templates.items() if selector.items() <= t["metadata"]["labels"].items()
        ]
        assert chosen == [name], (kind, name, chosen)
        if kind == "Service":
            ports = {
                p["name"] for c in templates[name]["spec"]["containers"] for p in c.get("ports", [])
            }
            for port in obj["spec"]["ports"]:
                assert port["targetPort"] in ports, (name, port)
    # The StatefulSet's governing Service is headless.
    assert named[("StatefulSet", "postgres")]["spec"]["serviceName"] == "postgres"
    assert named[("Service", "postgres")]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("modes", [["ReadWriteOnce"], ["ReadWriteMany"]])
def test_the_log_cleanup_pod_is_valid_and_runs_as_the_claims_writer(
    stack: Stack, modes: list[str]
) -> None:
    from opsflow.runtimes.kubernetes_claim_pods import MOUNT, claim_pod, mounts_claim
    from opsflow.runtimes.kubernetes_logs import BOOTSTRAP, cleanup_args

    (api,) = [o for o in release(stack, "1.0.0") if o["metadata"]["name"] == "api"
              and o["kind"] == "Deployment"]  # fmt: skip
    writer = copy.deepcopy(api["spec"]["template"])
    writer["spec"]["nodeName"] = "node-7"
    assert mounts_claim(writer, "applogs")
    args = cleanup_args("api", {"patterns": ["*.log"], "compress_after_days": 1}, dry_run=True)
    pod = claim_pod(
        name="demo-log-cleanup-abc123-def456", namespace="opsflow-demo",
        labels={STACK_LABEL: "demo"}, claim="applogs", image="python:3.12-slim", deadline=1800,
        program=BOOTSTRAP, args=args, writer=writer, access_modes=modes,
    )  # fmt: skip
    assert_valid(pod)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 1800
    assert spec["securityContext"]["runAsUser"] == 10001  # the api's user owns its files
    (container,) = spec["containers"]
    assert container["command"] == ["python3", "-c", BOOTSTRAP]
    assert container["args"][:2] == [MOUNT, "api"] and container["args"][-1] == "dry"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    affinity = spec.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    if modes == ["ReadWriteOnce"]:  # only the writer's node can mount it
        node_fields = terms["nodeSelectorTerms"][0]["matchFields"][0]
        assert node_fields["values"] == ["node-7"]
    else:
        assert terms == {}


def test_the_restore_pod_is_valid_and_writes_into_the_redis_claim(stack: Stack) -> None:
    from opsflow.runtimes.kubernetes_claim_pods import claim_mounted_at, claim_pod
    from opsflow.runtimes.kubernetes_restore import PORT, RECEIVER

    (redis,) = [o for o in release(stack, "1.0.0") if o["metadata"]["name"] == "redis"
                and o["kind"] == "Deployment"]  # fmt: skip
    (postgres,) = [o for o in release(stack, "1.0.0") if o["kind"] == "StatefulSet"]
    assert claim_mounted_at(redis, "/data") == "redis-data"
    assert claim_mounted_at(postgres, "/var/lib/postgresql/data") == "data-postgres-0"
    assert claim_mounted_at(redis, "/nowhere") is None
    pod = claim_pod(
        name="demo-restore-abc123-def456", namespace="opsflow-demo", labels={STACK_LABEL: "demo"},
        claim="redis-data", image="python:3.12-slim", deadline=1800, program=RECEIVER,
        args=["/opsflow/claim", "dump.rdb", "10", "0" * 64, str(PORT)], port=PORT, writer=None,
        access_modes=["ReadWriteOnce"],
    )  # fmt: skip
    assert_valid(pod)
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "receive", "containerPort": PORT}]
