"""``airflow dags test`` for the tests, served by a warmed-up process per Airflow home.

Each run is still the CLI's own ``airflow dags test`` in a process of its own (a fork of
tests/support/dag_test_server.py, which has Airflow imported and the execution API's
routes built), so a test sees what a user's run does, about 15 s of CPU sooner. A run
whose Airflow settings differ from the server's, or a server that cannot start, falls
back to a plain subprocess. ``OPSFLOW_TEST_DAG_SERVER=0`` turns the server off.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support import REPO_ROOT

AIRFLOW_CLI = REPO_ROOT / "scripts" / "airflow"
SERVER = Path(__file__).with_name("dag_test_server.py")
PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
START_TIMEOUT = 180.0


class DagTestServer:
    """One warmed-up ``airflow`` process for the environment it was started with."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.lock = threading.Lock()
        fd, log = tempfile.mkstemp(prefix="dag-test-server-", suffix=".log")
        self.log = Path(log)
        self.process = subprocess.Popen(
            [str(AIRFLOW_CLI), "--exec", str(PYTHON), str(SERVER)],
            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fd,
            text=True, start_new_session=True,
        )  # fmt: skip
        os.close(fd)
        self.ready = self._read(START_TIMEOUT) == {"ready": True}
        if not self.ready:  # the runs still happen, as subprocesses: say why they are slow
            tail = self.log.read_text(errors="replace")[-2000:]
            warnings.warn(f"the dags test server did not start; its log ends:\n{tail}",
                          stacklevel=2)  # fmt: skip

    def _read(self, timeout: float) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def run(
        self, argv: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str] | None:
        """``airflow ARGV`` in a fork; ``None`` when this server cannot serve the request."""
        with self.lock, tempfile.TemporaryDirectory(prefix="dag-test-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"argv": list(argv), "env": wrapped_env(env), "stdout": str(out),
                       "stderr": str(err)}  # fmt: skip
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
            except OSError:
                return None
            started = self._read(30.0)
            if not started or "pid" not in started:
                return None
            done = self._read(timeout)
            if done is None:
                os.killpg(started["pid"], signal.SIGKILL)
                self._read(30.0)
                raise subprocess.TimeoutExpired(["airflow", *argv], timeout)
            return subprocess.CompletedProcess(
                ["airflow", *argv], done["rc"], out.read_text(errors="replace"),
                err.read_text(errors="replace"),
            )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.log.unlink(missing_ok=True)


def wrapped_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment ``scripts/airflow`` gives the CLI for a caller's ``env``."""
    done = subprocess.run(
        [str(AIRFLOW_CLI), "--exec", "/usr/bin/env", "-0"], env=dict(env),
        capture_output=True, check=True,
    )  # fmt: skip
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


_servers: dict[str, DagTestServer] = {}


def dags_test(
    argv: Sequence[str], env: Mapping[str, str], base: Mapping[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``scripts/airflow ARGV`` (a ``dags test``) with ``env``, through the server of the
    deployment whose own environment is ``base``."""
    key = json.dumps(sorted(base.items()))
    server = _servers.get(key)
    if server is None and os.environ.get("OPSFLOW_TEST_DAG_SERVER", "1") != "0":
        server = _servers[key] = DagTestServer(base)
    if server is not None and server.ready:
        result = server.run(argv, env, timeout)
        if result is not None:
            return result
    return subprocess.run(
        [str(AIRFLOW_CLI), *argv], env=dict(env), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


@atexit.register
def stop_servers() -> None:
    while _servers:
        _servers.popitem()[1].stop()
