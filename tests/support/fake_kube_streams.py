"""Pod exec and port-forward over WebSocket for the fake Kubernetes API server, in the channel
protocol (v5/v4.channel.k8s.io) that `kubernetes.stream` speaks.

A command "runs" through a handler a test registers for the pod (a Python function, or a real
local subprocess with stdin streamed), and a forwarded port is joined to a real TCP backend,
so the product's streaming code moves real bytes; what the pod would have run is the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from support.fake_kube_rules import FakeKubeError, Obj, labels_match, selector_of

if TYPE_CHECKING:
    from aiohttp import web

FakeExecHandler = Callable[[list[str], bytes], tuple[int, bytes, bytes]]
"""(argv, all of stdin) -> (exit code, stdout, stderr)."""
FakeExecTranslator = Callable[[list[str]], list[str]]
"""The pod's argv -> the argv of a real local process that stands in for it."""

STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
_CHUNK = 64 * 1024


@dataclass
class FakePodRoutes:
    """Exec handlers and port backends, chosen by a pod's namespace and labels; the newest
    registration that matches wins, so a test can override a general one."""

    execs: list[tuple[str, dict[str, str], FakeExecHandler | None, FakeExecTranslator | None]] = (
        field(default_factory=list)
    )
    ports: list[tuple[str, dict[str, str], int, str, int]] = field(default_factory=list)

    def exec_for(self, pod: Obj) -> tuple[FakeExecHandler | None, FakeExecTranslator | None]:
        for namespace, selector, handler, translate in reversed(self.execs):
            if _matches(pod, namespace, selector):
                return handler, translate
        return None, None

    def port_for(self, pod: Obj, port: int) -> tuple[str, int] | None:
        for namespace, selector, pod_port, host, real_port in reversed(self.ports):
            if pod_port == port and _matches(pod, namespace, selector):
                return host, real_port
        return None


def _matches(pod: Obj, namespace: str, selector: Mapping[str, str]) -> bool:
    meta = pod["metadata"]
    requirements = selector_of({"matchLabels": dict(selector)})
    return meta.get("namespace") == namespace and labels_match(requirements, meta.get("labels"))


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def pod_container(pod: Obj, container: str) -> str:
    """The container a request addresses; the real server asks for a name when there are
    several containers."""
    name = pod["metadata"]["name"]
    names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
    if not container:
        if len(names) != 1:
            raise FakeKubeError(
                400,
                "BadRequest",
                f"a container name must be specified for pod "
                f"{name}, choose one of: [{' '.join(names)}]",
            )
        container = names[0]
    if container not in names:
        raise FakeKubeError(400, "BadRequest", f"container {container} is not valid for pod {name}")
    return container


def running_pod_container(pod: Obj, container: str, what: str) -> str:
    """The container a stream addresses; streams reach running pods only."""
    name = pod["metadata"]["name"]
    container = pod_container(pod, container)
    phase = pod.get("status", {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise FakeKubeError(
            400,
            "BadRequest",
            f"cannot {what} a container in a completed pod; current phase is {phase}",
        )
    if phase != "Running":
        raise FakeKubeError(
            400,
            "BadRequest",
            f"unable to upgrade connection: pod {name} is not running (phase {phase})",
        )
    return container


def exit_status(code: int, argv: list[str]) -> Obj:
    """The error-channel Status the kubelet sends when a command ends."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
        f"{argv}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _frame(message: Any) -> bytes:
    """A client frame's bytes: `kubernetes.stream` sends str data as text frames."""
    from aiohttp import WSMsgType

    if message.type == WSMsgType.BINARY:
        return bytes(message.data)
    if message.type == WSMsgType.TEXT:
        return str(message.data).encode()
    return b""


async def _send(ws: web.WebSocketResponse, channel: int, data: bytes) -> None:
    for start in range(0, max(len(data), 1), _CHUNK):
        chunk = data[start : start + _CHUNK]
        if chunk or not data:
            await ws.send_bytes(bytes([channel]) + chunk)


async def serve_exec(request: web.Request, pod: Obj, routes: FakePodRoutes) -> web.StreamResponse:
    """Run one exec request: stdin on channel 0, stdout 1, stderr 2, the exit Status on 3."""
    from aiohttp import web

    query = request.query
    argv = query.getall("command", [])
    running_pod_container(pod, query.get("container", ""), "exec into")
    want = {
        ch: _truthy(query.get(name))
        for ch, name in ((STDIN, "stdin"), (STDOUT, "stdout"), (STDERR, "stderr"))
    }
    if not any(want.values()):
        raise FakeKubeError(
            400, "BadRequest", "you must specify at least 1 of stdin, stdout, stderr"
        )
    if not argv:
        raise FakeKubeError(
            400, "BadRequest", "you must specify at least one command for the container"
        )
    handler, translate = routes.exec_for(pod)
    ws = web.WebSocketResponse(protocols=(V5, V4))
    await ws.prepare(request)
    stdin_queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def read_client() -> None:
        async for message in ws:
            data = _frame(message)
            if not data:
                continue
            if data[0] == STDIN:
                await stdin_queue.put(data[1:])
            elif data[0] == CLOSE and data[1:2] == bytes([STDIN]):
                await stdin_queue.put(None)
        await stdin_queue.put(None)

    reader = asyncio.ensure_future(read_client())
    try:
        if translate is not None:
            code = await _run_subprocess(ws, translate(list(argv)), want, stdin_queue)
        elif handler is not None:
            stdin = b""
            if want[STDIN]:
                while (chunk := await stdin_queue.get()) is not None:
                    stdin += chunk
            code, out, err = await asyncio.get_running_loop().run_in_executor(
                None, handler, list(argv), stdin
            )
            if want[STDOUT] and out:
                await _send(ws, STDOUT, out)
            if want[STDERR] and err:
                await _send(ws, STDERR, err)
        else:
            name = pod["metadata"]["name"]
            message = (
                f"fake cluster: no exec handler is registered for pod "
                f"{pod['metadata']['namespace']}/{name} (argv {argv})"
            )
            # The shape of the real kubelet's answer to a missing executable.
            refusal = {
                "metadata": {},
                "status": "Failure",
                "reason": "InternalError",
                "message": message,
                "details": {"causes": [{"message": message}]},
            }
            await _send(ws, ERROR, json.dumps(refusal).encode())
            return ws
        await _send(ws, ERROR, json.dumps(exit_status(code, list(argv))).encode())
        return ws
    finally:
        await ws.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _run_subprocess(
    ws: web.WebSocketResponse,
    argv: list[str],
    want: Mapping[int, bool],
    stdin_queue: asyncio.Queue[bytes | None],
) -> int:
    """A real local process, its stdin fed from channel 0 as it arrives."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if want[STDIN] else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def feed() -> None:
        assert process.stdin is not None
        while (chunk := await stdin_queue.get()) is not None:
            process.stdin.write(chunk)
            with contextlib.suppress(ConnectionError):
                await process.stdin.drain()
        process.stdin.close()

    async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
        assert stream is not None
        while chunk := await stream.read(_CHUNK):
            if want[channel]:
                await _send(ws, channel, chunk)

    feeder = asyncio.ensure_future(feed()) if want[STDIN] else None
    await asyncio.gather(pump(process.stdout, STDOUT), pump(process.stderr, STDERR))
    code = await process.wait()
    if feeder is not None:
        feeder.cancel()
    return code


async def serve_portforward(
    request: web.Request, pod: Obj, routes: FakePodRoutes
) -> web.StreamResponse:
    """Join each requested pod port to its registered TCP backend and pump bytes both ways."""
    from aiohttp import web

    ports = [int(p) for value in request.query.getall("ports", []) for p in value.split(",") if p]
    if not ports:
        raise FakeKubeError(400, "BadRequest", "ports is required")
    running_pod_container(pod, pod["spec"]["containers"][0]["name"], "port-forward to")
    ws = web.WebSocketResponse(protocols=(V5, V4))
    await ws.prepare(request)
    writers: dict[int, asyncio.StreamWriter] = {}
    pumps: list[asyncio.Future[Any]] = []
    meta = pod["metadata"]
    for index, port in enumerate(ports):
        prefix = port.to_bytes(2, "little")
        await ws.send_bytes(bytes([2 * index]) + prefix)
        await ws.send_bytes(bytes([2 * index + 1]) + prefix)
        backend = routes.port_for(pod, port)
        try:
            if backend is None:
                raise ConnectionRefusedError("nothing is routed to this port in the fake cluster")
            reader, writer = await asyncio.open_connection(*backend)
        except OSError as error:
            message = (
                f"error forwarding port {port} to pod {meta['namespace']}/{meta['name']}, "
                f"uid {meta['uid']}: failed to connect to localhost:{port}: {error}"
            )
            await ws.send_bytes(bytes([2 * index + 1]) + message.encode())
            continue
        writers[index] = writer
        pumps.append(asyncio.ensure_future(_backend_to_ws(ws, reader, 2 * index)))

    async def client_to_backends() -> None:
        async for message in ws:
            data = _frame(message)
            if data and data[0] % 2 == 0:
                writer = writers.get(data[0] // 2)
                if writer is not None and len(data) > 1:
                    writer.write(data[1:])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()

    client = asyncio.ensure_future(client_to_backends())
    waits: list[asyncio.Future[Any]] = [client]
    try:
        if pumps:
            waits.append(asyncio.ensure_future(asyncio.gather(*pumps)))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for writer in writers.values():
            writer.close()
        await ws.close()
        for task in [*waits, *pumps]:
            task.cancel()
        await asyncio.gather(*waits, *pumps, return_exceptions=True)
    return ws


async def _backend_to_ws(ws: web.WebSocketResponse, reader: asyncio.StreamReader, ch: int) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(_CHUNK):
            await ws.send_bytes(bytes([ch]) + chunk)
