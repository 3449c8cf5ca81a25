"""What the triggerer asks a Kubernetes cluster during a gate, through the provider's
``AsyncKubernetesHook`` (``kubernetes_asyncio``): the stack's pods as container states, the
rollout of each of its workloads, and a pod's last log line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from opsflow.runtimes.base import ContainerState, Rollout
from opsflow.runtimes.kubernetes_manifests import SERVICE_LABEL, STACK_LABEL, WORKLOAD_KINDS
from opsflow.runtimes.kubernetes_status import live_pods, pod_ready, pods_states, rollout


@dataclass
class KubernetesContext:
    """The probe context of a stack on Kubernetes, as plain data for the triggerer."""

    conn_id: str
    namespace: str
    stack: str
    workloads: dict[str, str] = field(default_factory=dict)  # service -> workload name

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "kubernetes", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KubernetesContext:
        return cls(
            conn_id=str(data["conn_id"]),
            namespace=str(data["namespace"]),
            stack=str(data["stack"]),
            workloads={str(k): str(v) for k, v in (data.get("workloads") or {}).items()},
        )

    async def _list(self, api_version: str, kind: str, selector: str) -> list[dict[str, Any]]:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client

        found: Any
        async with AsyncKubernetesHook(conn_id=self.conn_id).get_conn() as api:
            if kind == "Pod":
                found = await client.CoreV1Api(api).list_namespaced_pod(
                    self.namespace, label_selector=selector
                )
            elif kind == "Deployment":
                found = await client.AppsV1Api(api).list_namespaced_deployment(
                    self.namespace, label_selector=selector
                )
            else:
                found = await client.AppsV1Api(api).list_namespaced_stateful_set(
                    self.namespace, label_selector=selector
                )
            plain = api.sanitize_for_serialization(found)
        items = [dict(item) for item in plain.get("items", [])]
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    async def pods(self) -> list[dict[str, Any]]:
        return await self._list("v1", "Pod", f"{STACK_LABEL}={self.stack},{SERVICE_LABEL}")

    async def containers(self) -> list[ContainerState]:
        return pods_states(await self.pods(), SERVICE_LABEL, self.workloads)

    async def rollouts(self) -> list[Rollout]:
        """The rollout of every Deployment and StatefulSet of the stack, as it stands."""
        selector = f"{STACK_LABEL}={self.stack}"
        found = []
        for kind in WORKLOAD_KINDS:
            found += [rollout(obj) for obj in await self._list("apps/v1", kind, selector)]
        return found

    async def probe_service(self, service: str) -> tuple[bool, str]:
        """The kubelet's verdict: every container of every pod of the service (of its
        workload, which another service may share) ready."""
        workload = self.workloads.get(service, service)
        pods = [pod for pod in live_pods(await self.pods()) if self._workload_of(pod) == workload]
        if not pods:
            return False, f"no pod of service {service} in namespace {self.namespace}"
        ready = [pod for pod in pods if pod_ready(pod)]
        return len(ready) == len(pods), f"{len(ready)} of {len(pods)} pods ready"

    def _workload_of(self, pod: Mapping[str, Any]) -> str:
        label = str(pod["metadata"]["labels"][SERVICE_LABEL])
        return self.workloads.get(label, label)

    async def published(self, service: str, port: int) -> tuple[str, int]:
        """A Service's cluster DNS name: reachable where Airflow runs in the cluster."""
        workload = self.workloads.get(service, service)
        return f"{workload}.{self.namespace}.svc", port

    async def last_output(self, container: str) -> str:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client

        pod, _, name = container.partition("/")
        options: dict[str, Any] = {"container": name} if name else {}
        try:
            async with AsyncKubernetesHook(conn_id=self.conn_id).get_conn() as api:
                text = await client.CoreV1Api(api).read_namespaced_pod_log(
                    pod, self.namespace, tail_lines=1, **options
                )
        except Exception:
            return ""
        lines = [line for line in str(text).splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else ""

    def unhealthy_window(
        self, env: Mapping[str, str] | None = None, services: Collection[str] | None = None
    ) -> float | None:
        return None
