"""What a test does when a service it needs is missing, and free ports for the servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_redis(client: Any, process: subprocess.Popen[bytes], what: str) -> None:
    """Until the Redis ``client`` answers PING; raises naming ``what`` (and the server's
    stderr, when it was captured) when ``process`` ended or 15 s passed first."""
    import redis

    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                _out, err = process.communicate(timeout=5) if process.poll() else (b"", b"")
                raise RuntimeError(f"{what} did not start: {err!r}") from None
            time.sleep(0.05)


def service_unavailable(what: str) -> NoReturn:
    """A missing service fails under CI (the setup must provide it) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true requires it)")
    pytest.skip(what)


def service_missing(what: str) -> NoReturn:
    service_unavailable(f"{what} is not installed")


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
