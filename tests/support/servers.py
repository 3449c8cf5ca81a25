"""Service servers the health checks and backups talk to: PostgreSQL, Redis, an HTTP
health endpoint, gRPC health, a TCP listener; all real, all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.services import free_port, service_missing


def _postgres_bin(name: str) -> str | None:
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def uri(self) -> str:
        return f"postgres://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (password auth over TCP)."""
    import shutil
    import tempfile

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        service_missing("PostgreSQL server (initdb, pg_ctl; Debian package postgresql-15)")
    assert initdb and pg_ctl
    server = PostgresServer("127.0.0.1", free_port(), "postgres", "pg-Secret-0psflow", "postgres")
    # Not under pytest's tmp dir: that one is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="opsflow-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    (root / "pwfile").write_text(server.password + "\n")
    if as_postgres:
        shutil.chown(root / "pwfile", "postgres", "postgres")
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if as_postgres:
        shutil.chown(sockets, "postgres", "postgres")
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-U", server.user, "--pwfile", str(root / "pwfile"),
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    options = f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg = [*as_postgres, pg_ctl, "-D", str(data)]
    subprocess.run(
        [*pg, "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    try:
        yield server
    finally:
        subprocess.run([*pg, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    host: str
    port: int
    password: str


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real ``redis-server`` on 127.0.0.1 with a password and no persistence."""
    import shutil

    binary = shutil.which("redis-server")
    if not binary:
        service_missing("redis-server (Debian package redis-server)")
    assert binary
    server = RedisServer("127.0.0.1", free_port(), "redis-Secret-0psflow")
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", server.password, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection((server.host, server.port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class SwitchableHealthServer:
    """HTTP health endpoint whose answer a test switches.

    Modes: ``healthy`` (200, good JSON), ``503``, ``wrong_json`` (200, a field is wrong),
    ``flapping`` (healthy and 503 on alternate requests), ``slow`` (healthy after 3 s).
    The first ``fail_first`` requests answer 503 whatever the mode.
    """

    port: int
    mode: str = "healthy"
    fail_first: int = 0
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health/ready"


@pytest.fixture
def health_http_server() -> Iterator[SwitchableHealthServer]:
    state = SwitchableHealthServer(port=0)
    healthy = json.dumps({"status": "healthy", "checks": {"db": "ok"}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            with state.lock:
                state.hits += 1
                hit, mode = state.hits, state.mode
            status, body = 200, healthy
            if hit <= state.fail_first or mode == "503" or (mode == "flapping" and hit % 2 == 0):
                status, body = 503, json.dumps({"status": "down"}).encode()
            elif mode == "wrong_json":
                body = json.dumps({"status": "degraded", "checks": {"db": "ok"}}).encode()
            elif mode == "slow":
                time.sleep(3)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class GrpcHealthServer:
    """A real gRPC server with the standard health service; ``set`` switches a status."""

    port: int
    servicer: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, service: str, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.SERVING
        if not serving:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        self.servicer.set(service, status)


@pytest.fixture
def grpc_health_server() -> Iterator[GrpcHealthServer]:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state = GrpcHealthServer(port=port, servicer=servicer)
    state.set("", serving=True)
    state.set("opsflow.Api", serving=True)
    try:
        yield state
    finally:
        server.stop(grace=None).wait(5)


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    """A port that accepts TCP connections (and closes them at once)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
