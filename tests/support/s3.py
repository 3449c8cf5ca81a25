"""An S3 endpoint (moto's server) for backup destinations and bucket sources, and a proxy
that cuts connections to it."""

from __future__ import annotations

import json
import re
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.services import free_port, service_missing, service_unavailable


@dataclass
class S3Server:
    endpoint_url: str
    region: str = "us-east-1"
    access_key: str = "opsflow-test-key"
    secret_key: str = field(default="opsflow-test-secret", repr=False)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def connection(self, endpoint_url: str | None = None) -> str:
        """An Airflow AWS connection (``AIRFLOW_CONN_<ID>`` value) pointing at this server."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key,
                "extra": {
                    "endpoint_url": endpoint_url or self.endpoint_url,
                    "region_name": self.region,
                },
            }
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3-compatible server on 127.0.0.1 (a real HTTP endpoint, not a mock)."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        service_missing("moto_server (pip package moto[server], see requirements-dev.txt)")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    service_unavailable(f"moto_server did not start on port {port}")
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


@dataclass
class CuttingProxy:
    """TCP proxy to moto: forwards, or cuts connections once ``limit`` request bytes passed.

    Once the budget is spent, every connection (including retries and new ones) is cut as
    soon as it sends anything, like an endpoint that went away mid-upload. Request lines
    are recorded so tests can see the order of S3 calls. One thread per connection owns
    both of its sockets (no socket is closed under another thread's feet).
    """

    upstream_port: int
    limit: int | None = None
    cut_requests: re.Pattern[bytes] | None = None
    sent: int = 0
    cuts: int = 0
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    listener: socket.socket = field(init=False)

    REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.1\r\n")

    def start(self) -> int:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.listener.settimeout(0.2)
        self._thread(self._accept)
        return int(self.listener.getsockname()[1])

    def close(self) -> None:
        self.stop.set()
        for thread in list(self.threads):
            thread.join(timeout=5)
        self.listener.close()
        assert not [thread for thread in self.threads if thread.is_alive()]

    def _thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _addr = self.listener.accept()
            except TimeoutError:
                continue
            self._thread(self._serve, client)

    def _should_cut(self, data: bytes) -> bool:
        with self.lock:
            self.sent += len(data)
            lines = [f"{m[1].decode()} {m[2].decode()}" for m in self.REQUEST_LINE.finditer(data)]
            self.requests += lines
            over = self.limit is not None and self.sent > self.limit
            pattern = self.cut_requests
            matched = pattern is not None and any(pattern.search(line.encode()) for line in lines)
            if over or matched:
                self.cuts += 1
            return over or matched

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
        client.settimeout(30)
        peer = {client: upstream, upstream: client}
        with client, upstream, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while not self.stop.is_set():
                for key, _events in selector.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(256 * 1024)
                        if not data or (src is client and self._should_cut(data)):
                            return
                        peer[src].sendall(data)
                    except OSError:
                        return
