"""A local port streamed through the API server to a pod's port, as ``kubectl
port-forward`` does: how a backup reaches a database that only the cluster can reach.

The backup pipeline (``pg_dump`` with an exported snapshot, the fingerprint on a second
connection, ``pg_restore``, the Redis replication stream) then runs unchanged: every TCP
connection to the local port gets its own port-forward stream to the same pod.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.kubernetes_status import live_pods, pod_ready

log = logging.getLogger(__name__)
CHUNK = 1 << 16


def _pump(source: Any, target: Any, done: threading.Event) -> None:
    try:
        while not done.is_set():
            data = source.recv(CHUNK)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        done.set()
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


class PortForward:
    """``127.0.0.1:<local_port>`` -> ``pod:port`` in ``namespace``, while open."""

    def __init__(self, client: Any, namespace: str, pod: str, port: int) -> None:
        self.client = client
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.local_port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._open: list[Any] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="port-forward")

    def _stream(self) -> Any:
        from kubernetes.client import CoreV1Api
        from kubernetes.stream import portforward

        forward = portforward(
            CoreV1Api(self.client).connect_get_namespaced_pod_portforward,
            self.pod, self.namespace, ports=str(self.port),
        )  # fmt: skip
        return forward, forward.socket(self.port)

    def _serve(self, local: socket.socket) -> None:
        try:
            forward, remote = self._stream()
        except Exception as error:
            log.warning(
                "port-forward to %s/%s:%s failed: %s", self.namespace, self.pod, self.port, error
            )
            local.close()
            return
        remote.setblocking(True)
        self._open += [local, remote, forward]
        done = threading.Event()
        back = threading.Thread(target=_pump, args=(remote, local, done), daemon=True)
        back.start()
        _pump(local, remote, done)
        back.join(timeout=5)
        with contextlib.suppress(Exception):
            forward.close()
        local.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(local,), daemon=True).start()

    def __enter__(self) -> PortForward:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._listener.close()
        for end in self._open:  # sockets, and the streams (closing ends their websocket)
            with contextlib.suppress(Exception):
                end.close()


def ready_pod(pods: list[dict[str, Any]], service: str) -> str:
    """A running, ready pod of ``service`` (by name, so repeated runs pick the same one)."""
    ready = sorted(pod["metadata"]["name"] for pod in live_pods(pods) if pod_ready(pod))
    if not ready:
        raise RuntimeFailure(f"no ready pod of service {service} to stream from")
    return str(ready[0])


@contextlib.contextmanager
def forwarded(client: Any, namespace: str, pod: str, port: int) -> Iterator[int]:
    """The local port of a forward to ``pod:port``, open for the block."""
    with PortForward(client, namespace, pod, port) as forward:
        yield forward.local_port
