"""The fake Kubernetes cluster, exercised only through the real clients the product uses (the
`kubernetes` client, its dynamic client and stream helpers, the provider's KubernetesHook and
`kubernetes_asyncio`), so a passing product test means its requests are ones these clients
really send and the status it reads is shaped as a real server shapes it."""

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.stream import portforward, stream

from support.fake_kube_clients import (
    APPLY,
    NS,
    apply_deployment,
    deployment_complete,
    fake_clients,
    fake_deployment,
    running_pod,
    status_body,
)
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster
from support.services import get_json

__all__ = ["fake_kube_cluster"]


# ---------------------------------------------------------------- API semantics


def test_fake_discovery_serves_the_dynamic_client(fake_kube_cluster: FakeKubeCluster) -> None:
    api_client = config.new_client_from_config(config_file=str(fake_kube_cluster.kubeconfig))
    dynamic = DynamicClient(api_client)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    pods = dynamic.resources.get(api_version="v1", kind="Pod")
    assert deployments.namespaced and deployments.name == "deployments"
    assert "status" in deployments.subresources
    assert {"log", "exec", "portforward", "status"} <= set(pods.subresources)
    dynamic.server_side_apply(
        deployments,
        body=fake_deployment("web", "demo/web:1"),
        namespace=NS,
        field_manager="opsflow",
    )
    listed = deployments.get(namespace=NS)
    assert [item.metadata.name for item in listed.items] == ["web"]
    version = client.VersionApi(api_client).get_code()
    assert version.major == "1"


def test_fake_apply_removes_what_the_same_manager_stops_applying(
    fake_kube_cluster: FakeKubeCluster,
) -> None:
    core, _, _ = fake_clients(fake_kube_cluster)
    first = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "labels": {"app": "api", "tier": "web"}},
        "data": {"LEVEL": "info", "OLD": "1"},
    }
    created = core.patch_namespaced_config_map(
        "settings", NS, first, field_manager="opsflow", _content_type=APPLY
    )
    second = json.loads(json.dumps(first))
    del second["data"]["OLD"], second["metadata"]["labels"]["tier"]
    second["data"]["LEVEL"] = "debug"
    applied = core.patch_namespaced_config_map(
        "settings", NS, second, field_manager="opsflow", _content_type=APPLY
    )
    assert applied.data == {"LEVEL": "debug"}
    assert applied.metadata.labels == {"app": "api"}
    assert applied.metadata.uid == created.metadata.uid
    assert int(applied.metadata.resource_version) > int(created.metadata.resource_version)
    entries = [(e.manager, e.operation) for e in applied.metadata.managed_fields]
    assert entries == [("opsflow", "Apply")]
    again = core.patch_namespaced_config_map(
        "settings", NS, second, field_manager="opsflow", _content_type=APPLY
    )
    assert again.metadata.resource_version == applied.metadata.resource_version  # no-op apply
    applies = [r for r in fake_kube_cluster.api.requests if r.content_type == APPLY]
    assert len(applies) == 3 and {r.param("fieldManager") for r in applies} == {"opsflow"}


def test_fake_apply_needs_a_manager_and_reports_conflicts(
    fake_kube_cluster: FakeKubeCluster,
) -> None:
    _, apps, _ = fake_clients(fake_kube_cluster)
    body = fake_deployment("api", "demo/api:1", replicas=2)
    with pytest.raises(ApiException) as missing:
        apps.patch_namespaced_deployment("api", NS, body, _content_type=APPLY)
    assert missing.value.status == 400 and "fieldManager" in status_body(missing)["message"]
    apply_deployment(apps, body, manager="opsflow")
    body["spec"]["replicas"] = 5
    with pytest.raises(ApiException) as conflict:
        apply_deployment(apps, body, manager="someone-else")
    status = status_body(conflict)
    assert conflict.value.status == 409 and status["reason"] == "Conflict"
    assert status["details"]["causes"][0]["field"] == ".spec.replicas"
    forced = apps.patch_namespaced_deployment(
        "api", NS, body, field_manager="someone-else", force=True, _content_type=APPLY
    )
    assert forced.spec.replicas == 5
    managers = {e.manager for e in forced.metadata.managed_fields}
    assert {"opsflow", "someone-else"} <= managers


def test_fake_generation_follows_spec_and_status_ignores_apply(
    fake_kube_cluster: FakeKubeCluster,
) -> None:
    _, apps, _ = fake_clients(fake_kube_cluster)
    body = fake_deployment("api", "demo/api:1", replicas=1)
    assert apply_deployment(apps, body).metadata.generation == 1
    ready = fake_kube_cluster.wait_for("api complete", lambda: deployment_complete(apps, "api"))
    body["metadata"]["labels"]["extra"] = "x"
    body["status"] = {"replicas": 99, "observedGeneration": 42}
    relabelled = apply_deployment(apps, body)
    assert relabelled.metadata.generation == 1
    assert relabelled.status.replicas == ready.status.replicas == 1
    assert relabelled.status.observed_generation == 1
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "demo/api:2"
    assert apply_deployment(apps, body).metadata.generation == 2
    current = apps.read_namespaced_deployment("api", NS)
    current.status.replicas = 7
    replaced = apps.replace_namespaced_deployment("api", NS, current)
    assert replaced.status.replicas != 7 and replaced.metadata.generation == 2
    core = client.CoreV1Api(apps.api_client)
    service = {
        "metadata": {"name": "api"},
        "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]},
    }
    created = core.create_namespaced_service(NS, service)
    assert created.spec.cluster_ip and created.spec.ports[0].target_port == 80
    lb = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}, "spec": {"ports": []}}
    updated = core.patch_namespaced_service_status("api", NS, lb)
    assert updated.status.load_balancer.ingress[0].ip == "192.0.2.1"
    assert updated.spec.ports[0].port == 80  # the status subresource ignores spec
    defaults = replaced.spec
    assert defaults.progress_deadline_seconds == 600 and defaults.strategy.type == "RollingUpdate"


def test_fake_errors_are_real_status_objects(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("nope", NS)
    assert missing.value.status == 404
    assert status_body(missing)["reason"] == "NotFound"
    assert status_body(missing)["message"] == 'deployments.apps "nope" not found'
    cm = {"metadata": {"name": "one"}, "data": {"a": "1"}}
    core.create_namespaced_config_map(NS, cm)
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(NS, cm)
    assert exists.value.status == 409 and status_body(exists)["reason"] == "AlreadyExists"
    live = core.read_namespaced_config_map("one", NS)
    core.patch_namespaced_config_map("one", NS, {"data": {"a": "2"}})
    live.data = {"a": "3"}
    with pytest.raises(ApiException) as stale:
        core.replace_namespaced_config_map("one", NS, live)
    assert stale.value.status == 409 and status_body(stale)["reason"] == "Conflict"
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map("absent", cm)
    assert no_namespace.value.status == 404
    assert status_body(no_namespace)["message"] == 'namespaces "absent" not found'
    with pytest.raises(ApiException) as invalid:
        apply_deployment(apps, fake_deployment("Bad_Name", "demo/api:1"))
    assert invalid.value.status == 422 and status_body(invalid)["reason"] == "Invalid"
    code, body = get_json(f"{fake_kube_cluster.api.url}/apis/apps/v1/namespaces/{NS}/widgets")
    assert (code, body["reason"]) == (404, "NotFound")


def test_fake_label_selectors_and_dry_run(fake_kube_cluster: FakeKubeCluster) -> None:
    core, _, _ = fake_clients(fake_kube_cluster)
    for name, labels in (
        ("a", {"app": "api", "tier": "web"}),
        ("b", {"app": "api"}),
        ("c", {"app": "worker", "tier": "bg"}),
    ):
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})

    def names(selector: str) -> list[str]:
        found = core.list_namespaced_config_map(NS, label_selector=selector).items
        return [i.metadata.name for i in found]

    assert names("app=api,tier=web") == ["a"]
    assert names("tier") == ["a", "c"]
    assert names("!tier") == ["b"]
    assert names("app!=api") == ["c"]
    assert names("tier in (bg,web),app notin (worker)") == ["a"]
    with pytest.raises(ApiException) as watch:
        core.list_namespaced_config_map(NS, watch=True)
    assert watch.value.status == 400
    dry = core.create_namespaced_config_map(NS, {"metadata": {"name": "d"}}, dry_run="All")
    assert dry.metadata.name == "d" and dry.metadata.uid
    assert "d" not in names("")
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}}, dry_run="All")
    assert core.read_namespaced_config_map("a", NS).data is None
    patched = core.patch_namespaced_config_map(
        "b", NS, [{"op": "add", "path": "/data", "value": {"k": "json-patch"}}]
    )
    assert patched.data == {"k": "json-patch"}
    assert fake_kube_cluster.api.requests[-1].content_type == "application/json-patch+json"
    core.delete_collection_namespaced_config_map(NS, label_selector="app=api")
    assert names("") == ["c"]
    secret = core.create_namespaced_secret(
        NS, {"metadata": {"name": "s"}, "stringData": {"PASSWORD": "pw"}}
    )
    assert secret.data == {"PASSWORD": "cHc="} and secret.string_data is None


# ---------------------------------------------------------------- streams


@pytest.fixture
def fake_echo_server() -> Iterator[int]:
    """A TCP server that sends back what it receives, standing in for a database port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


def test_fake_portforward_reaches_a_real_tcp_backend(
    fake_kube_cluster: FakeKubeCluster, fake_echo_server: int
) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    pod = running_pod(fake_kube_cluster, apps, "db")
    fake_kube_cluster.api.route_port(NS, {"app": "db"}, 5432, "127.0.0.1", fake_echo_server)
    forward = portforward(core.connect_get_namespaced_pod_portforward, pod, NS, ports="5432,6379")
    sock = forward.socket(5432)
    sock.settimeout(5)
    payload = b"x" * 200_000
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += sock.recv(65536)
    assert received == payload
    unrouted = forward.socket(6379)
    unrouted.settimeout(5)
    assert unrouted.recv(10) == b""  # the error channel closed it
    assert "6379" in (forward.error(6379) or "")
    assert forward.error(5432) is None
    forward.close()


def test_fake_exec_streams_output_and_exit_code(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    pod = running_pod(fake_kube_cluster, apps, "tools")
    calls: list[list[str]] = []

    def handler(argv: list[str], stdin: bytes) -> tuple[int, bytes, bytes]:
        calls.append(argv)
        return (3, b"dumped\n", b"warning: old\n") if argv[0] == "pg_dump" else (0, b"ok", b"")

    refused = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        NS,
        command=["pg_dump"],
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    refused.run_forever(timeout=5)  # nothing registered yet: refused like a missing binary
    refusal = json.loads(refused.read_channel(3))
    assert refusal["status"] == "Failure" and "no exec handler" in refusal["message"]
    fake_kube_cluster.api.route_exec(NS, {"app": "tools"}, handler)
    code, out, err = _exec(core, pod, ["pg_dump", "-Fc", "app"])
    assert (code, out, err) == (3, "dumped\n", "warning: old\n")
    assert calls == [["pg_dump", "-Fc", "app"]]
    assert (
        stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            NS,
            command=["true"],
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
        )
        == "ok"
    )
    fake_kube_cluster.api.route_exec_subprocess(NS, {"app": "tools"}, lambda argv: ["cat"])
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        NS,
        command=["psql"],
        stdout=True,
        stderr=True,
        stdin=True,
        tty=False,
        _preload_content=False,
    )
    resp.write_stdin("restore me")
    resp.close_channel(0)
    resp.run_forever(timeout=5)
    assert resp.read_stdout() == "restore me" and resp.returncode == 0


def _exec(core: client.CoreV1Api, pod: str, argv: list[str]) -> tuple[int, str, str]:
    resp = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        NS,
        command=argv,
        stdout=True,
        stderr=True,
        stdin=False,
        tty=False,
        _preload_content=False,
    )
    resp.run_forever(timeout=5)
    out, err = resp.read_stdout(), resp.read_stderr()
    return int(resp.returncode), out, err


# ---------------------------------------------------------------- other clients


def test_fake_cluster_serves_the_provider_hook(
    fake_kube_cluster: FakeKubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    extra = {"kube_config_path": str(fake_kube_cluster.kubeconfig), "namespace": NS}
    monkeypatch.setenv(
        "AIRFLOW_CONN_KUBE_FAKE", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )
    _, apps, _ = fake_clients(fake_kube_cluster)
    pod = running_pod(fake_kube_cluster, apps, "hooked")
    hook = KubernetesHook(conn_id="kube_fake")
    pods = hook.core_v1_client.list_namespaced_pod(NS, label_selector="app=hooked").items
    assert [p.metadata.name for p in pods] == [pod]
    assert hook.get_namespace() == NS
    assert hook.get_pod(pod, NS).status.phase == "Running"
    hook.core_v1_client.create_namespaced_config_map(NS, {"metadata": {"name": "via-hook"}})
    assert fake_kube_cluster.store.get("configmaps", NS, "via-hook") is not None


def test_fake_cluster_serves_the_async_provider_hook(
    fake_kube_cluster: FakeKubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deferrable trigger uses: AsyncKubernetesHook on kubernetes_asyncio."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

    extra = {"kube_config_path": str(fake_kube_cluster.kubeconfig)}
    monkeypatch.setenv(
        "AIRFLOW_CONN_KUBE_FAKE", json.dumps({"conn_type": "kubernetes", "extra": extra})
    )
    _, _, batch = fake_clients(fake_kube_cluster)
    fake_kube_cluster.controllers.job_handler("demo/logs:1", lambda argv, env: (0, "a\nb\n"))
    spec = {
        "backoffLimit": 0,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "demo/logs:1"}],
            }
        },
    }
    batch.create_namespaced_job(NS, {"metadata": {"name": "logs"}, "spec": spec})

    def done_pod() -> str | None:
        pods = fake_kube_cluster.store.list("pods", NS, "job-name=logs")
        if pods and pods[0]["status"]["phase"] == "Succeeded":
            return str(pods[0]["metadata"]["name"])
        return None

    pod = fake_kube_cluster.wait_for("logs job pod", done_pod)

    async def read() -> tuple[Any, list[str]]:
        hook = AsyncKubernetesHook(conn_id="kube_fake")
        return await hook.get_pod(pod, NS), await hook.read_logs(pod, NS, container_name="c")

    found, lines = asyncio.run(read())
    assert found.status.phase == "Succeeded"
    assert [line.split(" ", 1)[1] for line in lines] == ["a", "b"]


def test_fake_cluster_serves_kubernetes_asyncio(fake_kube_cluster: FakeKubeCluster) -> None:
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio import config as aconfig
    from kubernetes_asyncio.stream import WsApiClient

    _, apps, _ = fake_clients(fake_kube_cluster)
    pod = running_pod(fake_kube_cluster, apps, "asyncread")
    fake_kube_cluster.api.route_exec(
        NS, {"app": "asyncread"}, lambda argv, stdin: (0, " ".join(argv).encode(), b"")
    )

    async def read() -> tuple[Any, str]:
        configuration = aclient.Configuration()
        await aconfig.load_kube_config(
            config_file=str(fake_kube_cluster.kubeconfig), client_configuration=configuration
        )
        async with aclient.ApiClient(configuration) as api:
            found = await aclient.AppsV1Api(api).read_namespaced_deployment("asyncread", NS)
        async with WsApiClient(configuration=configuration) as ws:
            exec_in_pod: Any = aclient.CoreV1Api(ws).connect_get_namespaced_pod_exec
            # Annotated `command: str`, but a list is what gives one argv element per item.
            output = await exec_in_pod(
                pod, NS, command=["redis-cli", "ping"], stdout=True, stderr=True, stdin=False
            )
        return found, output

    deployment, output = asyncio.run(read())
    assert deployment.status.available_replicas == 1
    assert deployment.status.observed_generation == deployment.metadata.generation == 1
    assert output == "redis-cli ping"
