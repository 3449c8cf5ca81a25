"""The few Kubernetes API calls the runtime makes, through the provider's ``KubernetesHook``
(its connection: kubeconfig file or content, or in-cluster) and the official client's
dynamic client, so any kind a stack's manifests hold is applied the same way.

Every object goes in and out as the API's plain JSON (``dict``): no client model travels
further, and what the ledger stores is what the server was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from opsflow.runtimes.base import RuntimeFailure


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def api_error(error: Exception) -> str:
    """One line from an ``ApiException`` (the server's ``Status`` message when it sent one)."""
    import json

    body = getattr(error, "body", None)
    status = getattr(error, "status", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return f"{status} {message or getattr(error, 'reason', '') or error}".strip()


class KubeApi:
    """One connection's API client, opened on first use."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id

    @cached_property
    def client(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        try:
            return KubernetesHook(conn_id=self.conn_id).get_conn()
        except Exception as error:
            raise RuntimeFailure(
                f"connection {self.conn_id}: cannot configure a Kubernetes client: {error}"
            ) from None

    @cached_property
    def dynamic(self) -> Any:
        from kubernetes.dynamic import DynamicClient

        try:
            return DynamicClient(self.client)
        except Exception as error:
            raise RuntimeFailure(
                f"connection {self.conn_id}: the API server did not answer discovery: "
                f"{api_error(error)}"
            ) from None

    def resource(self, api_version: str, kind: str) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise RuntimeFailure(f"the API server does not serve {api_version} {kind}") from None

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError

        try:
            return call(*args, **kwargs)
        except (ApiException, DynamicApiError) as error:
            raise RuntimeFailure(f"{what}: {api_error(error)}") from None

    def apply(
        self, obj: Mapping[str, Any], field_manager: str, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply of one object under ``field_manager`` (forcing conflicts: the
        stack's manifests own what they set)."""
        metadata = obj["metadata"]
        resource = self.resource(obj["apiVersion"], obj["kind"])
        extra = {"dry_run": "All"} if dry_run else {}
        applied = self._call(
            f"apply {obj['kind']}/{metadata['name']}",
            resource.server_side_apply,
            body=dict(obj), name=metadata["name"], namespace=metadata.get("namespace"),
            field_manager=field_manager, force_conflicts=True, **extra,
        )  # fmt: skip
        return dict(_plain(applied))

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        resource = self.resource(api_version, kind)
        try:
            return dict(_plain(resource.get(name=name, namespace=namespace)))
        except NotFoundError:
            return None
        except Exception as error:
            raise RuntimeFailure(f"get {kind}/{name}: {api_error(error)}") from None

    def list(
        self, api_version: str, kind: str, namespace: str, selector: str
    ) -> list[dict[str, Any]]:
        resource = self.resource(api_version, kind)
        found = self._call(
            f"list {kind}", resource.get, namespace=namespace, label_selector=selector
        )
        return [dict(item) for item in _plain(found).get("items", [])]

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str,
        *,
        propagation: str = "Background",
    ) -> bool:
        """Delete one object and, by ``propagation``, its pods; False when it was gone."""
        from kubernetes.dynamic.exceptions import NotFoundError

        resource = self.resource(api_version, kind)
        try:
            resource.delete(name=name, namespace=namespace, propagation_policy=propagation)
        except NotFoundError:
            return False
        except Exception as error:
            raise RuntimeFailure(f"delete {kind}/{name}: {api_error(error)}") from None
        return True

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        resource = self.resource(obj["apiVersion"], obj["kind"])
        metadata = obj["metadata"]
        created = self._call(
            f"create {obj['kind']}/{metadata['name']}",
            resource.create, body=dict(obj), namespace=metadata.get("namespace"),
        )  # fmt: skip
        return dict(_plain(created))

    def merge_patch(
        self, api_version: str, kind: str, name: str, namespace: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        resource = self.resource(api_version, kind)
        patched = self._call(
            f"patch {kind}/{name}",
            resource.patch, body=dict(patch), name=name, namespace=namespace,
            content_type="application/merge-patch+json",
        )  # fmt: skip
        return dict(_plain(patched))

    def pod_log(self, namespace: str, name: str, *, tail: int | None = None) -> str:
        from kubernetes.client import CoreV1Api

        kwargs: dict[str, Any] = {"tail_lines": tail} if tail else {}
        try:
            # Raw bytes: the client's preloaded text of a log is the repr of bytes.
            response = CoreV1Api(self.client).read_namespaced_pod_log(
                name, namespace, _preload_content=False, **kwargs
            )
            return bytes(response.data).decode("utf-8", errors="replace")
        except Exception as error:
            return f"(no log: {api_error(error)})"
