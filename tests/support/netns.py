"""A stack host of its own on this machine: a network namespace joined to the test's
machine by one veth pair, with addresses the test assigns.

A process started in it (``NetworkNamespace.argv``) reaches the machine only over that
link: its ``127.0.0.1`` is its own. The Docker Engine's unix socket is a file, so the
engine stays reachable from inside, as on a real stack host. What a real stack host also
has, its services' published ports on its own loopback, is given by
:func:`loopback_bridge`: listening sockets made inside the namespace, each forwarding to
the same port on this machine's loopback, where the engine publishes the stack.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class NetworkNamespace:
    name: str
    host_address: str  # this machine's end of the link
    address: str  # the namespace's end

    def argv(self, *command: str, hostname: str | None = None) -> list[str]:
        """``command`` run inside the namespace (with its own host name when given)."""
        inner = list(command)
        if hostname is not None:
            inner = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname,
                     *inner]  # fmt: skip
        return ["ip", "netns", "exec", self.name, *inner]

    def reaches(self, address: str, port: int) -> bool:
        probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)"
        result = subprocess.run(
            self.argv("python3", "-c", probe), capture_output=True, timeout=30, check=False
        )
        return result.returncode == 0


@contextlib.contextmanager
def network_namespace(label: str, subnet: int) -> Iterator[NetworkNamespace]:
    """``ip netns`` + a veth pair on 10.231.<subnet>.0/30; removed afterwards."""
    tag = f"{label}{os.getpid() % 100000}"
    name, outside, inside = f"opsflow-{tag}", f"ofo{tag}"[:15], f"ofi{tag}"[:15]
    space = NetworkNamespace(name, f"10.231.{subnet}.1", f"10.231.{subnet}.2")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("addr", "add", f"{space.host_address}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{space.address}/30", "dev", inside)
        _ip("netns", "exec", name, "ip", "link", "set", inside, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield space
    finally:
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", outside)  # takes its peer with it
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", name)


def _listen_inside(space: NetworkNamespace, ports: Sequence[int]) -> list[socket.socket]:
    """Listening sockets on the namespace's 127.0.0.1; a socket keeps the namespace it was
    made in, so the thread only visits it (``setns``) to make them."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    made: list[socket.socket] = []
    errors: list[str] = []

    def visit() -> None:
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        target = os.open(Path("/run/netns") / space.name, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                errors.append(f"setns: {os.strerror(ctypes.get_errno())}")
                return
            try:
                for port in ports:
                    listener = socket.socket()
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind(("127.0.0.1", port))
                    listener.listen(64)
                    listener.setblocking(False)
                    made.append(listener)
            finally:
                libc.setns(home, CLONE_NEWNET)
        finally:
            os.close(home)
            os.close(target)

    thread = threading.Thread(target=visit)
    thread.start()
    thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return made


@contextlib.contextmanager
def loopback_bridge(space: NetworkNamespace, ports: Sequence[int]) -> Iterator[None]:
    """The namespace's ``127.0.0.1:<port>`` forwarded to this machine's, for each port."""
    listeners = _listen_inside(space, ports)
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        selector = selectors.DefaultSelector()
        for listener in listeners:
            selector.register(listener, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _events in selector.select(timeout=0.2):
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                client.setblocking(True)
                port = listener.getsockname()[1]
                try:
                    upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()
        selector.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield
    finally:
        stop.set()
        server.join(timeout=5)
        for listener in listeners:
            listener.close()
