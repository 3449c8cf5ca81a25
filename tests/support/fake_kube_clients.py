"""Helpers for tests against the fake Kubernetes cluster, written with the real `kubernetes`
client so the calls in a test are the calls a product makes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from support.fake_kube_controllers import FakeKubeCluster

APPLY = "application/apply-patch+yaml"
NS = "opsflow"  # the namespace the fake_kube_cluster fixture creates and its kubeconfig names


def fake_clients(
    cluster: FakeKubeCluster,
) -> tuple[client.CoreV1Api, client.AppsV1Api, client.BatchV1Api]:
    """Typed API objects on a client loaded from the cluster's kubeconfig, as a product would."""
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    return client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.BatchV1Api(api_client)


def fake_deployment(name: str, image: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
    """A minimal Deployment manifest (label `app=<name>`); each dict is its own copy, so a test
    can change metadata labels without changing the selector."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            **spec,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def apply_deployment(apps: client.AppsV1Api, body: dict[str, Any], manager: str = "opsflow") -> Any:
    """Server-side apply, the way the product applies a release."""
    return apps.patch_namespaced_deployment(
        body["metadata"]["name"], NS, body, field_manager=manager, _content_type=APPLY
    )


def deployment_complete(apps: client.AppsV1Api, name: str) -> Any:
    """The Deployment if its rollout is complete by the kstatus rules, else None."""
    d = apps.read_namespaced_deployment(name, NS)
    s = d.status
    want = d.spec.replicas
    done = (
        s.observed_generation == d.metadata.generation
        and s.updated_replicas == want
        and s.available_replicas == want
        and s.replicas == want
    )
    return d if done else None


def pod_log_text(core: client.CoreV1Api, name: str) -> str:
    """A pod's log as text. kubernetes 36.0.3 returns the repr of the bytes ("b'...'") from a
    plain `read_namespaced_pod_log` (kubernetes-client/python#2596), whatever the server."""
    response = core.read_namespaced_pod_log(name, NS, _preload_content=False)
    return str(response.data.decode())


def status_body(error: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    """The `Status` object the server answered with."""
    body: dict[str, Any] = json.loads(error.value.body)
    return body


def running_pod(cluster: FakeKubeCluster, apps: client.AppsV1Api, name: str) -> str:
    """Deploy one replica labelled `app=<name>` and return its pod's name once it is ready."""
    apply_deployment(apps, fake_deployment(name, f"demo/{name}:1", replicas=1))
    cluster.wait_for(name, lambda: deployment_complete(apps, name))
    pods = cluster.store.list("pods", NS, f"app={name}")
    return str(pods[0]["metadata"]["name"])
