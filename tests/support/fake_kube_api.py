"""A fake Kubernetes API server on 127.0.0.1 for tests: the real `kubernetes` client, the
cncf-kubernetes provider's KubernetesHook and `kubernetes_asyncio` talk to it unchanged, so it
proves the requests the product sends (discovery, server-side apply, patches, deletes with
propagation, pod logs, exec and port-forward streams) and the status rules the product reads.

It cannot prove what only a real cluster does: scheduling, a real kubelet and container
runtime, cluster networking, admission webhooks, RBAC enforcement, watches, and the full
OpenAPI validation and merge-key semantics of the real apiserver.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from support.fake_kube_rules import BY_PLURAL, RESOURCE_TYPES, FakeKubeError, FakeResourceType, Obj
from support.fake_kube_store import APPLY, FakeKubeStore, not_found
from support.fake_kube_streams import (
    FakeExecHandler,
    FakeExecTranslator,
    FakePodRoutes,
    pod_container,
    serve_exec,
    serve_portforward,
)

if TYPE_CHECKING:
    from aiohttp import web

VERSION = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-fake",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class FakeKubeRequest:
    """One request as the server saw it, for tests that assert how the product called."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


class FakeKubeApi:
    """The HTTP server: discovery, CRUD with the store's rules, pod logs, exec, port-forward.

    Runs aiohttp in a background thread with its own event loop; `url` is valid after
    `start()`. Plain HTTP without authentication: the kubeconfig it writes points at it.
    """

    def __init__(self, store: FakeKubeStore | None = None) -> None:
        self.store = store or FakeKubeStore()
        self.routes = FakePodRoutes()
        self._requests: list[FakeKubeRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeKubeApi.url read before start()")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> FakeKubeApi:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:  # reported to start(), the caller's thread
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-kube-api", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"fake Kubernetes API did not start: {failure}")
        return self

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or self._thread is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose only context points at this server (dummy bearer token)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------ test API

    @property
    def requests(self) -> list[FakeKubeRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def route_port(
        self, namespace: str, selector: Mapping[str, str], port: int, host: str, real_port: int
    ) -> None:
        """Port-forwards to `port` of pods matching `selector` reach `host:real_port`."""
        self.routes.ports.append((namespace, dict(selector), port, host, real_port))

    def route_exec(
        self, namespace: str, selector: Mapping[str, str], handler: FakeExecHandler
    ) -> None:
        """Exec into pods matching `selector` calls `handler(argv, stdin) -> (code, out, err)`."""
        self.routes.execs.append((namespace, dict(selector), handler, None))

    def route_exec_subprocess(
        self, namespace: str, selector: Mapping[str, str], translate: FakeExecTranslator
    ) -> None:
        """Exec into pods matching `selector` runs the real local argv `translate(argv)`,
        with stdin, stdout and stderr streamed as they happen."""
        self.routes.execs.append((namespace, dict(selector), None, translate))

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        raw = await request.read() if request.can_read_body else b""
        content_type = request.headers.get("Content-Type", "")
        body: Any = None
        try:
            if raw:
                body = yaml.safe_load(raw) if content_type.startswith(APPLY) else json.loads(raw)
        except (ValueError, yaml.YAMLError) as error:
            body = None
            bad: FakeKubeError | None = FakeKubeError(400, "BadRequest", f"invalid body: {error}")
        else:
            bad = None
        query = {key: request.query.getall(key) for key in request.query}
        with self._lock:
            self._requests.append(
                FakeKubeRequest(request.method, request.path, query, content_type, body)
            )
        try:
            if bad is not None:
                raise bad
            return await self._dispatch(request, body)
        except FakeKubeError as error:
            return web.json_response(error.status(), status=error.code)

    async def _dispatch(self, request: web.Request, body: Any) -> web.StreamResponse:
        from aiohttp import web

        parts = [p for p in request.path.split("/") if p]
        if parts in (["version"], ["version", ""]):
            return web.json_response(VERSION)
        if parts == ["api"]:
            return web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.split("//")[1]}
                    ],
                }
            )
        if parts == ["apis"]:
            return web.json_response(
                {"kind": "APIGroupList", "apiVersion": "v1", "groups": _groups()}
            )
        if len(parts) >= 2 and parts[0] == "apis" and len(parts) == 2:
            found = next((g for g in _groups() if g["name"] == parts[1]), None)
            if found is None:
                raise _unknown_resource()
            return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **found})
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _unknown_resource()
        types = [rt for rt in RESOURCE_TYPES if (rt.group, rt.version) == (group, version)]
        if not types:
            raise _unknown_resource()
        if not rest:
            resources = [entry for rt in types for entry in rt.discovery()]
            return web.json_response(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": types[0].api_version,
                    "resources": resources,
                }
            )
        namespace = ""
        plurals = {rt.plural for rt in types if rt.namespaced}
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in plurals:
            namespace, rest = rest[1], rest[2:]
        rt = next((t for t in types if t.plural == rest[0]), None)
        if rt is None or len(rest) > 3 or (namespace and not rt.namespaced):
            raise _unknown_resource()
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rt.subresources:
            raise _unknown_resource()
        if rt.namespaced and name and not namespace:
            raise _unknown_resource()
        return await self._verb(request, rt, namespace, name, sub, body)

    async def _verb(
        self,
        request: web.Request,
        rt: FakeResourceType,
        namespace: str,
        name: str,
        sub: str,
        body: Any,
    ) -> web.StreamResponse:
        from aiohttp import web

        store, query, method = self.store, request.query, request.method
        dry_run = "All" in query.getall("dryRun", [])
        manager = query.get("fieldManager", "")
        if not manager:
            agent = request.headers.get("User-Agent", "unknown")
            manager = agent.split("/")[0] or "unknown"
        if sub in ("exec", "portforward"):
            pod = store.get("pods", namespace, name)
            if pod is None:
                raise not_found(rt, name)
            if request.headers.get("Upgrade", "").lower() != "websocket":
                raise FakeKubeError(400, "BadRequest", "Upgrade request required")
            serve = serve_exec if sub == "exec" else serve_portforward
            return await serve(request, pod, self.routes)
        if method == "GET" and sub == "log":
            return web.Response(
                text=self._pod_log(namespace, name, query), content_type="text/plain"
            )
        if method == "GET" and name:
            found = store.get(rt.plural, namespace, name)
            if found is None:
                raise not_found(rt, name)
            return web.json_response(found)
        if method == "GET":
            if query.get("watch", "").lower() in ("true", "1"):
                raise FakeKubeError(
                    400,
                    "BadRequest",
                    "the fake cluster does not serve watches; poll with list or get",
                )
            items = store.list(
                rt.plural,
                namespace if rt.namespaced and namespace else None,
                query.get("labelSelector"),
                query.get("fieldSelector"),
            )
            return web.json_response(self._list_body(rt, items, query))
        if method == "POST" and not name:
            created = store.create(
                rt.plural, body, namespace=namespace, manager=manager, dry_run=dry_run
            )
            return web.json_response(created, status=201)
        if method == "PUT" and name:
            replaced = store.replace(
                rt.plural,
                namespace,
                name,
                body or {},
                manager=manager,
                dry_run=dry_run,
                subresource=sub,
            )
            return web.json_response(replaced)
        if method == "PATCH" and name:
            patched = store.patch(
                rt.plural,
                namespace,
                name,
                body,
                request.headers.get("Content-Type", ""),
                manager=query.get("fieldManager", "")
                if request.headers.get("Content-Type", "").startswith(APPLY)
                else manager,
                force=query.get("force", "").lower() in ("true", "1"),
                dry_run=dry_run,
                subresource=sub,
            )
            return web.json_response(patched)
        if method == "DELETE":
            options = body if isinstance(body, dict) else {}
            policy = query.get("propagationPolicy") or options.get("propagationPolicy")
            orphan = query.get("orphanDependents") or options.get("orphanDependents")
            if policy is None and orphan is not None:
                policy = "Orphan" if str(orphan).lower() == "true" else "Background"
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            if name:
                gone = store.delete(rt.plural, namespace, name, propagation=policy, dry_run=dry_run)
                if rt.plural == "pods":
                    return web.json_response(gone)
                return web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": rt.group,
                            "kind": rt.plural,
                            "uid": gone["metadata"]["uid"],
                        },
                    }
                )
            items = store.list(
                rt.plural, namespace or None, query.get("labelSelector"), query.get("fieldSelector")
            )
            for item in items:
                meta = item["metadata"]
                store.delete(
                    rt.plural,
                    meta.get("namespace", ""),
                    meta["name"],
                    propagation=policy,
                    dry_run=dry_run,
                )
            return web.json_response(self._list_body(rt, items, {}))
        raise FakeKubeError(405, "MethodNotAllowed", f"{method} is not supported on this path")

    def _list_body(self, rt: FakeResourceType, items: list[Obj], query: Mapping[str, str]) -> Obj:
        meta: Obj = {"resourceVersion": self.store.resource_version}
        start = int(base64.b64decode(query.get("continue") or "MA==").decode() or 0)
        limit = int(query.get("limit") or 0)
        page = items[start : start + limit] if limit else items[start:]
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        for item in page:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": meta,
            "items": page,
        }

    def _pod_log(self, namespace: str, name: str, query: Mapping[str, str]) -> str:
        pod = self.store.get("pods", namespace, name)
        if pod is None:
            raise not_found(BY_PLURAL["pods"], name)
        container = pod_container(pod, query.get("container", ""))
        for status in pod.get("status", {}).get("containerStatuses", []):
            waiting = status.get("state", {}).get("waiting")
            if status["name"] == container and waiting and not status.get("restartCount"):
                reason = waiting.get("reason", "ContainerCreating")
                raise FakeKubeError(
                    400,
                    "BadRequest",
                    f'container "{container}" in pod "{name}" is waiting to start: {reason}',
                )
        text = self.store.pod_log(namespace, name, container)
        lines = text.splitlines(keepends=True)
        tail = query.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) else []
        if query.get("timestamps", "").lower() in ("true", "1"):
            # The kubelet prefixes each line with its RFC 3339 time; the fake has one time.
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
            lines = [f"{stamp} {line}" for line in lines]
        text = "".join(lines)
        limit = query.get("limitBytes")
        return text.encode()[: int(limit)].decode(errors="ignore") if limit else text


def _unknown_resource() -> FakeKubeError:
    return FakeKubeError(404, "NotFound", "the server could not find the requested resource")


def _groups() -> list[Obj]:
    groups: list[Obj] = []
    for rt in RESOURCE_TYPES:
        if rt.group and all(g["name"] != rt.group for g in groups):
            version = {"groupVersion": rt.api_version, "version": rt.version}
            groups.append({"name": rt.group, "versions": [version], "preferredVersion": version})
    return groups


def iter_fake_kube_requests(
    api: FakeKubeApi, method: str, path_part: str
) -> Iterator[FakeKubeRequest]:
    """Requests of one method whose path contains `path_part` (for assertions)."""
    return (r for r in api.requests if r.method == method and path_part in r.path)
