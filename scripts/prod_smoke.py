#!/usr/bin/env python
"""``make prod-smoke``: the production compose file up for real, one edge worker, the demo's
deploy and backup run on them, then everything torn down.

1. Builds the production images (``docker compose build``; the base image is built by
   ``make setup``) and brings ``docker-compose.airflow.yml`` up (PostgreSQL metadata DB,
   Redis, Celery worker, API server, scheduler, DAG processor, triggerer) as Compose
   project ``opsflow-prod-smoke``, with freshly generated secrets and a free API port.
   A generated override mounts a stacks directory holding only the demo stack, moved to its
   own project (``opsflow-smoke``), ports and image names and placed on queue
   ``smoke-host``; a user's ``make demo`` is untouched.
2. Starts ``scripts/edge-worker`` on this machine (the stack's host) for that queue against
   the API server, its secret read from a file.
3. Triggers ``demo__deploy`` (1.0.0), then ``demo__backup``, through the REST API, and waits
   for each.
4. Prints each component's start time and how long it took to report healthy (polled each
   second while it starts), the edge worker's, each run's duration and the hosts its tasks
   ran on; then tears everything down (``down --volumes``, the demo project, the backup
   directory) whatever happened.

Exit status 0 when both runs succeeded, 1 when one did not, 2 when the smoke could not run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from base64 import urlsafe_b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from demo_copy import DEMO_DIR, moved_demo_stack

REPO = Path(__file__).resolve().parents[1]
PROJECT = "opsflow-prod-smoke"
STACK_PROJECT = "opsflow-smoke"
IMAGE_PREFIX = "opsflow-smoke"
QUEUE = "smoke-host"
ADMIN = "admin"
AIRFLOW_SERVICES = ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer",
                    "worker")  # fmt: skip
COMPONENTS = ("postgres", "redis", *AIRFLOW_SERVICES)
CONTAINER_STACKS = "/var/lib/airflow/include/stacks"
CONTAINER_DAGS = "/var/lib/airflow/dags"


class SmokeError(Exception):
    """The smoke could not run (exit 2), as opposed to a run that failed (exit 1)."""


def say(message: str) -> None:
    print(f"prod-smoke: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise SmokeError(
            f"{' '.join(argv[:6])} ... failed:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result


def demo_passwords() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEMO_DIR / ".env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


class Smoke:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.ports = {"API": free_port(), "POSTGRES": free_port(), "REDIS": free_port()}
        self.backups = Path("/var/backups/opsflow") / f"prod-smoke-{secrets.token_hex(4)}"
        self.admin_password = secrets.token_urlsafe(18)
        self.jwt_secret = secrets.token_hex(32)
        self.edge: subprocess.Popen[bytes] | None = None
        self.edge_started: datetime | None = None
        self.token = ""
        self.first_healthy: dict[str, datetime] = {}
        self._watching = threading.Event()

    def watch_health(self) -> threading.Thread:
        """Note when each container first reports healthy (Docker keeps only its last five
        health results, so this cannot be read back afterwards)."""
        argv = ["docker", "ps", "--all", "--filter", f"label=com.docker.compose.project={PROJECT}",
                "--format", '{{.Label "com.docker.compose.service"}}\t{{.Status}}']  # fmt: skip

        def poll() -> None:
            while not self._watching.is_set():
                listed = subprocess.run(argv, capture_output=True, text=True, check=False)
                now = datetime.now(UTC)
                for line in listed.stdout.splitlines():
                    service, _, status = line.partition("\t")
                    if "(healthy)" in status:
                        self.first_healthy.setdefault(service, now)
                self._watching.wait(1.0)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return thread

    def stop_watching(self) -> None:
        self._watching.set()

    # ------------------------------------------------------------------ files

    def write_files(self) -> None:
        fernet = urlsafe_b64encode(os.urandom(32)).decode()
        env = {
            "AIRFLOW_DB_PASSWORD": secrets.token_hex(24),
            "AIRFLOW_REDIS_PASSWORD": secrets.token_hex(24),
            "AIRFLOW_FERNET_KEY": fernet,
            "AIRFLOW_API_SECRET_KEY": secrets.token_hex(24),
            "AIRFLOW_JWT_SECRET": self.jwt_secret,
            "AIRFLOW_ADMIN_USER": ADMIN,
            "AIRFLOW_ADMIN_PASSWORD": self.admin_password,
            "DOCKER_GID": str(Path("/var/run/docker.sock").stat().st_gid),
            "OPSFLOW_APPS_DIR": str(REPO / "include"),
            "AIRFLOW_API_PORT": str(self.port),
            "AIRFLOW_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
        }
        env_file = self.work / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        secret = self.work / "edge-worker.secret"
        secret.write_text(self.jwt_secret + "\n")
        secret.chmod(0o600)
        stacks, dags = self.work / "stacks", self.work / "dags"
        stacks.mkdir()
        dags.mkdir()
        shutil.copy(REPO / "dags" / "demo.py", dags / "demo.py")
        (stacks / "demo.yaml").write_text(yaml.safe_dump(self.stack(), sort_keys=False))
        # Every Airflow container sees only the demo stack and its DAG file.
        mounts = [f"{stacks}:{CONTAINER_STACKS}:ro", f"{dags}:{CONTAINER_DAGS}:ro"]
        override = {"services": {name: {"volumes": mounts} for name in AIRFLOW_SERVICES}}
        (self.work / "override.yml").write_text(yaml.safe_dump(override))
        # The containers run as uid 50000: the stack and DAG file must be readable to them.
        for path in (self.work, stacks, dags):
            path.chmod(0o755)
        for path in (stacks / "demo.yaml", dags / "demo.py"):
            path.chmod(0o644)

    def stack(self) -> dict[str, Any]:
        stack = moved_demo_stack(STACK_PROJECT, IMAGE_PREFIX, self.ports["API"])
        stack["backup"]["local_dir"] = str(self.backups)
        stack["alerts"] = []
        stack["placement"] = {"queue": QUEUE}
        return stack

    def compose(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.airflow.yml"),
                "-f", str(self.work / "override.yml"), "--env-file", str(self.work / "env"),
                *args]  # fmt: skip
        return run(argv, timeout=timeout, cwd=REPO)

    # ------------------------------------------------------------------ the edge worker

    def edge_env(self) -> dict[str, str]:
        passwords = demo_passwords()
        connections = {
            "AIRFLOW_CONN_DEMO_POSTGRES": {"conn_type": "postgres", "host": "127.0.0.1",
                                           "port": self.ports["POSTGRES"], "login": "app",
                                           "password": passwords["POSTGRES_PASSWORD"],
                                           "schema": "app"},
            "AIRFLOW_CONN_DEMO_REDIS": {"conn_type": "redis", "host": "127.0.0.1",
                                        "port": self.ports["REDIS"],
                                        "password": passwords["REDIS_PASSWORD"]},
        }  # fmt: skip
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPSFLOW_"))}
        return {
            **keep,
            **{f"DEMO_{name}_PORT": str(port) for name, port in self.ports.items()},
            "DEMO_IMAGE_PREFIX": IMAGE_PREFIX,
            "OPSFLOW_STACKS_DIR": str(self.work / "stacks"),
            "OPSFLOW_DAGS_DIR": str(self.work / "dags"),
            "OPSFLOW_STATE_DIR": str(self.work / "state"),
            **{key: json.dumps(value) for key, value in connections.items()},
        }

    def start_edge_worker(self) -> None:
        argv = [str(REPO / "scripts" / "edge-worker"), "--api-url", f"http://127.0.0.1:{self.port}",
                "--queues", QUEUE, "--secret-file", str(self.work / "edge-worker.secret"),
                "--home", str(self.work / "edge-home"), "--hostname", "smoke-host",
                "--no-install"]  # fmt: skip
        log = (self.work / "edge-worker.log").open("ab")
        self.edge_started = datetime.now(UTC)
        self.edge = subprocess.Popen(argv, env=self.edge_env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def stop_edge_worker(self) -> None:
        if self.edge is None or self.edge.poll() is not None:
            return
        os.killpg(self.edge.pid, signal.SIGTERM)
        try:
            self.edge.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.edge.pid, signal.SIGKILL)
            self.edge.wait(timeout=30)

    # ------------------------------------------------------------------ the REST API

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json",
                     **({"Authorization": f"Bearer {self.token}"} if self.token else {})},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (http only)
            return json.loads(response.read() or b"null")

    def log_in(self) -> None:
        answer = self.api(
            "POST", "/auth/token", {"username": ADMIN, "password": self.admin_password}
        )
        self.token = str(answer["access_token"])

    def wait_for(self, what: str, check: Any, timeout: float, interval: float = 3.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = check()
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                value = None
            if value:
                return value
            if self.edge is not None and self.edge.poll() is not None:
                raise SmokeError(f"the edge worker exited ({self.edge.returncode}): see its log")
            time.sleep(interval)
        raise SmokeError(f"timed out after {timeout:.0f}s waiting for {what}")

    def worker_online(self) -> bool:
        workers = self.api("GET", "/edge_worker/ui/worker")
        return any(w.get("worker_name") == "smoke-host" and w.get("state") in ("idle", "running")
                   for w in workers.get("workers", []))  # fmt: skip

    def run_dag(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run_id = f"smoke-{int(time.time())}"
        self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                 {"dag_run_id": run_id, "logical_date": None, "conf": conf})  # fmt: skip
        say(f"triggered {dag_id} {run_id}")

        def ended() -> dict[str, Any] | None:
            found: dict[str, Any] = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return found if found.get("state") in ("success", "failed") else None

        found: dict[str, Any] = self.wait_for(f"{dag_id} to end", ended, timeout=1200)
        tasks = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        found["hosts"] = sorted(
            {t["hostname"] for t in tasks["task_instances"] if t.get("hostname")}
        )
        return found

    # ------------------------------------------------------------------ report

    def components(self) -> list[tuple[str, str, str]]:
        rows = []
        for name in COMPONENTS:
            ids = self.compose("ps", "--all", "-q", name, timeout=60).stdout.split()
            if not ids:
                rows.append((name, "-", "not created"))
                continue
            info = json.loads(run(["docker", "inspect", ids[0]]).stdout)[0]
            state = info["State"]
            started = _time(state["StartedAt"])
            health = state.get("Health") or {}
            healthy = self.first_healthy.get(name)
            if name == "airflow-init":
                ended = _time(state["FinishedAt"])
                note = f"exit {state['ExitCode']} after {(ended - started).total_seconds():.1f} s"
            elif healthy:
                note = f"healthy after {(healthy - started).total_seconds():.1f} s"
            else:
                note = f"{state['Status']}, health {health.get('Status', 'none')}"
            rows.append((name, started.strftime("%H:%M:%S.%f")[:-3], note))
        return rows


def _time(value: str) -> datetime:
    # Docker prints nanoseconds; Python's parser takes microseconds.
    head, _, rest = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


def _duration(found: dict[str, Any]) -> float:
    return (_time(found["end_date"]) - _time(found["start_date"])).total_seconds()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="opsflow-prod-smoke-"))
    smoke = Smoke(work)
    runs: list[tuple[str, dict[str, Any]]] = []
    try:
        smoke.write_files()
        started = time.monotonic()
        say("building the production images (docker compose build)")
        smoke.compose("build")
        say(f"images built in {time.monotonic() - started:.0f} s; starting the stack")
        started = time.monotonic()
        smoke.watch_health()
        smoke.compose("up", "-d", "--wait", "--wait-timeout", "600")
        say(f"docker compose up --wait returned after {time.monotonic() - started:.0f} s "
            f"(API on 127.0.0.1:{smoke.port})")  # fmt: skip
        smoke.log_in()
        smoke.start_edge_worker()
        online = smoke.wait_for("the edge worker to be online", smoke.worker_online, 180)
        edge_online = datetime.now(UTC)
        assert online and smoke.edge_started is not None
        smoke.wait_for(
            "demo__deploy to be parsed",
            lambda: smoke.api("GET", "/api/v2/dags/demo__deploy").get("dag_id"),
            timeout=300,
        )
        runs.append(("demo__deploy", smoke.run_dag("demo__deploy", {"version": "1.0.0"})))
        if runs[-1][1]["state"] == "success":
            runs.append(("demo__backup", smoke.run_dag("demo__backup", {})))
        smoke.stop_watching()
        print()
        print(f"{'component':<14} {'started (UTC)':<14} result")
        for name, when, note in smoke.components():
            print(f"{name:<14} {when:<14} {note}")
        edge_after = (edge_online - smoke.edge_started).total_seconds()
        print(
            f"{'edge worker':<14} {smoke.edge_started:%H:%M:%S.%f}"[:-3]
            + f" online after {edge_after:.1f} s (queue {QUEUE}, on this machine)"
        )
        print()
        print(f"{'run':<14} {'state':<8} {'seconds':>8}  tasks ran on")
        for dag_id, found in runs:
            print(f"{dag_id:<14} {found['state']:<8} {_duration(found):>8.1f}  "
                  f"{', '.join(found['hosts'])}")  # fmt: skip
        ok = len(runs) == 2 and all(found["state"] == "success" for _, found in runs)
        say("PASS" if ok else "FAIL: a run did not succeed (see the task logs in the UI)")
        return 0 if ok else 1
    except SmokeError as error:
        say(f"could not run: {error}")
        return 2
    finally:
        say("tearing down")
        smoke.stop_watching()
        smoke.stop_edge_worker()
        for argv in (
            ["docker", "compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.airflow.yml"),
             "-f", str(work / "override.yml"), "--env-file", str(work / "env"), "down",
             "--volumes", "--remove-orphans"],
            ["docker", "compose", "-p", STACK_PROJECT, "--project-directory", str(DEMO_DIR),
             "-f", str(DEMO_DIR / "docker-compose.yml"), "down", "--volumes",
             "--remove-orphans"],
        ):  # fmt: skip
            subprocess.run(argv, capture_output=True, check=False, timeout=300,
                           env={**os.environ, "OPSFLOW_VERSION": "0"})  # fmt: skip
        edge_log = work / "edge-worker.log"
        if edge_log.exists():
            tail = edge_log.read_text(errors="replace").splitlines()[-5:]
            say("edge worker log (last lines):\n  " + "\n  ".join(tail))
        shutil.rmtree(smoke.backups, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
