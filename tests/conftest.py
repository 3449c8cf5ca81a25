"""Shared pytest fixtures; each part of the project keeps its fixtures in a marked section."""

from __future__ import annotations

import email
import io
import json
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest
import yaml

from opsflow.runtimes.compose import compose_base_argv
from opsflow.stack.safety import ALLOWED_ROOTS_ENV

if TYPE_CHECKING:
    from datetime import datetime

    from opsflow.backup.context import RunContext
    from opsflow.backup.manifest import Artifact, Manifest, VerificationStatus

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# Tests that share the e2e Compose project or the test image tags run on one worker, in
# order; every other module is one unit of work (its module fixtures are set up once).
ENGINE_GROUP = "engine"
ENGINE_MODULES = ("tests/e2e/", "tests/integration/test_demo_stack.py")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under ``pytest -n N`` (make test)."""
    module = nodeid.split("::", 1)[0]
    return ENGINE_GROUP if module.startswith(ENGINE_MODULES) else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Workers get whole units (see :func:`work_unit`): the waits are on Docker, PostgreSQL
    and Airflow subprocesses, so two workers overlap them on two cores. (xdist's own
    ``loadgroup`` marks are ignored by pytest 9's node ids, hence a scheduler.)"""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return UnitScheduling(config, log)


# ============================================================================================
# Section: Airflow home, SMTP server and HTTP receiver (used by the alert notifier tests)
# ============================================================================================


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated SQLite Airflow home for ``airflow dags test`` subprocesses.

    Sets ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER`` (``<home>/dags``, where tests
    write their DAG files), ``AIRFLOW__CORE__LOAD_EXAMPLES`` and
    ``AIRFLOW__CORE__PLUGINS_FOLDER`` in ``os.environ`` for the session. An Airflow
    already imported in the pytest process keeps its config: run DAGs in a subprocess.
    """
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        airflow = Path(sys.executable).parent / "airflow"
        result = subprocess.run(
            [str(airflow), "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"airflow db migrate failed:\n{result.stderr[-3000:]}"
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_for_items(items: list[T], count: int, timeout: float) -> list[T]:
    """Wait until a list filled by a server thread holds ``count`` items (or time is up)."""
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return items


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a GET, for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@dataclass
class SmtpCapture:
    """A real SMTP server on 127.0.0.1 that keeps what it receives."""

    host: str
    port: int
    login: str
    password: str
    messages: list[Message] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        return wait_for_items(self.messages, count, timeout)


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """aiosmtpd with AUTH (no TLS) accepting only ``capture.login``/``capture.password``."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    capture = SmtpCapture(
        host="127.0.0.1", port=free_port(), login="alerts", password="smtp-Pa55-0f-opsflow"
    )

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content or envelope.content
            capture.envelopes.append(
                {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)}
            )
            capture.messages.append(email.message_from_bytes(content))
            return "250 Message accepted for delivery"

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = login == capture.login and auth_data.password.decode() == capture.password
        if ok:
            capture.logins.append(login)
        return AuthResult(success=ok)

    controller = Controller(
        Handler(),
        hostname=capture.host,
        port=capture.port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield capture
    finally:
        controller.stop()


@dataclass
class HttpCapture:
    """A real HTTP server on 127.0.0.1 recording every request; answers ``status``."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    reply: bytes = b"ok"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def json_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_for_items(self.requests, count, timeout)


@pytest.fixture
def http_receiver() -> Iterator[HttpCapture]:
    """``http.server`` in a thread, capturing method, path, headers and body of requests."""
    capture = HttpCapture(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            capture.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"),
                }
            )
            self.send_response(capture.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(capture.reply)))
            self.end_headers()
            self.wfile.write(capture.reply)

        do_POST = _record
        do_GET = _record
        do_PUT = _record

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    capture.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ============================================================================================
# End of section: Airflow home, SMTP server and HTTP receiver
# ============================================================================================


# ============================================================================================
# Section: health check servers (used by the trigger, sensor and health check tests)
# ============================================================================================


def service_unavailable(what: str) -> NoReturn:
    """A missing service fails under CI (the setup must provide it) and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} (CI=true requires it)")
    pytest.skip(what)


def _service_missing(what: str) -> NoReturn:
    service_unavailable(f"{what} is not installed")


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
        _service_missing("PostgreSQL server (initdb, pg_ctl; Debian package postgresql-15)")
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
        _service_missing("redis-server (Debian package redis-server)")
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


# ============================================================================================
# End of section: health check servers
# ============================================================================================


# ============================================================================================
# Section: the demo stack deployed for the end-to-end tests (tests/e2e)
# ============================================================================================
# It runs as its own Compose project on free ports with its own Airflow home and state
# dir, so a `make demo` stack on the same machine is never touched.

E2E_PROJECT = "opsflow-e2e"
# Tests build and run the demo's images under their own names: a test run must never
# rebuild or retag an image a running `make demo` (prefix opsflow-demo) uses.
TEST_IMAGE_PREFIX = "opsflow-test"
DEMO_DIR = REPO_ROOT / "include" / "demo"
AIRFLOW_CLI = REPO_ROOT / "scripts" / "airflow"


SAME_RUN = """
import json, sys
from datetime import datetime
from airflow.utils.cli import get_bagged_dag
dag = get_bagged_dag(None, sys.argv[1])
when = datetime.fromisoformat(sys.argv[2])
run = dag.test(run_after=when, logical_date=when, run_conf=json.loads(sys.argv[3]))
sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
"""


@dataclass
class DemoDeployment:
    home: Path
    stacks: Path
    api_port: int
    env: dict[str, str]

    def dags_test(
        self,
        conf: dict[str, Any],
        *extra_env: dict[str, str],
        dag_id: str = "demo__deploy",
        logical_date: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._dags_test_argv(conf, dag_id, logical_date),
            env=self._env(extra_env),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    def start_dags_test(
        self,
        conf: dict[str, Any],
        *extra_env: dict[str, str],
        dag_id: str = "demo__deploy",
        logical_date: str | None = None,
    ) -> subprocess.Popen[str]:
        """``dags test`` in the background, its output line by line as it happens."""
        return subprocess.Popen(
            self._dags_test_argv(conf, dag_id, logical_date),
            env={**self._env(extra_env), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def _dags_test_argv(
        self, conf: dict[str, Any], dag_id: str, logical_date: str | None
    ) -> list[str]:
        """``airflow dags test``; with a logical date, the same run every time.

        The CLI names each run after the moment it starts, so running it again never
        continues a run. With ``logical_date`` the DAG's own ``test()`` is called with it as
        the run's date too: a second call clears that run's tasks and runs them again,
        which is what clearing a run in the UI does.
        """
        if logical_date is None:
            return [str(AIRFLOW_CLI), "dags", "test", dag_id, "-c", json.dumps(conf)]
        python = str(REPO_ROOT / ".venv" / "bin" / "python")
        return [str(AIRFLOW_CLI), "--exec", python, "-c", SAME_RUN, dag_id, logical_date,
                json.dumps(conf)]  # fmt: skip

    def _env(self, extra_env: tuple[dict[str, str], ...]) -> dict[str, str]:
        env = dict(self.env)
        for more in extra_env:
            env.update(more)
        return env

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.api_port}{path}")

    def ensure_deployed(self) -> None:
        """Deploy 1.0.0 unless some release of the stack already answers."""
        try:
            self.get("/health/live")
        except OSError:
            result = self.dags_test({"version": "1.0.0"})
            assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    def reset(self) -> None:
        """Back to a machine that never ran the stack: no containers, volumes or ledger.

        Earlier modules (backups, crash recovery) leave releases and data behind; a test
        that starts from nothing asks for nothing explicitly instead of relying on order.
        """
        self.compose("down", "--volumes", "--remove-orphans")
        shutil.rmtree(self.env["OPSFLOW_STATE_DIR"], ignore_errors=True)

    def volume(self, name: str) -> Path:
        """Host path of one of the project's named volumes."""
        out = subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{E2E_PROJECT}_{name}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return Path(out.stdout.strip())

    def compose(self, *args: str) -> str:
        argv = [*compose_base_argv(E2E_PROJECT, DEMO_DIR, ["docker-compose.yml"], ".env"), *args]
        env = {**self.env, "OPSFLOW_VERSION": "0"}
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


def _demo_passwords() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEMO_DIR / ".env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def prefixed_image(demo_ref: str, prefix: str = TEST_IMAGE_PREFIX) -> str:
    """``opsflow-demo/api`` -> ``opsflow-test/api``: a demo image name under a test's prefix."""
    repository, sep, rest = demo_ref.partition("/")
    assert sep and repository == "opsflow-demo", f"not a demo image name: {demo_ref!r}"
    return f"{prefix}/{rest}"


def _stack_file(api_port: int, target: Path) -> None:
    """The demo stack file, moved to its own project, ports and image names, with a quicker
    gate. The compose file takes the image names from ``DEMO_IMAGE_PREFIX`` (see env)."""
    stack = yaml.safe_load((REPO_ROOT / "include" / "stacks" / "demo.yaml").read_text())
    stack["runtime"]["project"] = E2E_PROJECT
    stack["runtime"]["working_dir"] = str(DEMO_DIR)
    for service in stack["services"]:
        service["image"] = prefixed_image(service["image"])
        for check in service["health"]:
            if check["kind"] == "http":
                check["url"] = check["url"].replace(":18080/", f":{api_port}/")
            if check["kind"] == "tcp":
                check["port"] = api_port
    for root in stack["logs"]["roots"]:
        if root.get("volume") == "opsflow-demo_applogs":
            root["volume"] = f"{E2E_PROJECT}_applogs"
    stack["health_gate"] = {"consecutive": 2, "interval": "1s", "timeout": "20s"}
    target.write_text(yaml.safe_dump(stack, sort_keys=False))


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoDeployment]:
    subprocess.run([str(DEMO_DIR / "make-env.sh")], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("e2e")
    home, stacks = root / "airflow-home", root / "stacks"
    stacks.mkdir()
    ports = {"api": free_port(), "postgres": free_port(), "redis": free_port()}
    _stack_file(ports["api"], stacks / "demo.yaml")
    passwords = _demo_passwords()
    env = {
        **os.environ,
        "OPSFLOW_AIRFLOW_HOME": str(home),
        "OPSFLOW_STACKS_DIR": str(stacks),
        "OPSFLOW_STATE_DIR": str(root / "state"),
        # The e2e tests put backups in pytest's temp dirs: allowed next to the defaults.
        "OPSFLOW_ALLOWED_ROOTS": (
            f"{tmp_path_factory.getbasetemp()}:/var/log/opsflow:/var/backups/opsflow"
        ),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "DEMO_API_PORT": str(ports["api"]),
        "DEMO_POSTGRES_PORT": str(ports["postgres"]),
        "DEMO_REDIS_PORT": str(ports["redis"]),
        "DEMO_IMAGE_PREFIX": TEST_IMAGE_PREFIX,
        "AIRFLOW_CONN_DEMO_POSTGRES": json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": ports["postgres"],
                "login": "app",
                "password": passwords["POSTGRES_PASSWORD"],
                "schema": "app",
            }
        ),
        "AIRFLOW_CONN_DEMO_REDIS": json.dumps(
            {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": ports["redis"],
                "password": passwords["REDIS_PASSWORD"],
            }
        ),
    }
    env.pop("AIRFLOW_HOME", None)
    migrate = subprocess.run(
        [str(AIRFLOW_CLI), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    deployment = DemoDeployment(home=home, stacks=stacks, api_port=ports["api"], env=env)
    deployment.compose("down", "--volumes", "--remove-orphans")
    try:
        yield deployment
    finally:
        deployment.compose("down", "--volumes", "--remove-orphans")
        shutil.rmtree(root, ignore_errors=True)


def demo_pg(deployment: DemoDeployment, dbname: str = "app") -> Any:
    """An autocommit connection to the e2e stack's PostgreSQL."""
    import psycopg

    conn = json.loads(deployment.env["AIRFLOW_CONN_DEMO_POSTGRES"])
    return psycopg.connect(
        host="127.0.0.1",
        port=conn["port"],
        user=conn["login"],
        password=conn["password"],
        dbname=dbname,
        autocommit=True,
    )


def table_digests(deployment: DemoDeployment, dbname: str = "app") -> dict[str, tuple[int, str]]:
    """Row count and an ordered md5 of every row of every user table (plain SQL)."""
    from psycopg import sql

    with demo_pg(deployment, dbname) as conn:
        tables = list(
            conn.execute(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            )
        )
        digests = {}
        for table in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} AS t"
            ).format(sql.Identifier(*table))
            row = conn.execute(query).fetchone()
            assert row is not None
            digests[".".join(table)] = (int(row[0]), str(row[1]))
    return digests


def alert_connections(smtp: SmtpCapture, receiver: HttpCapture) -> dict[str, str]:
    """Environment giving the demo stack's alert routes real endpoints."""
    return {
        "AIRFLOW_CONN_DEMO_ALERT_WEBHOOK": json.dumps(
            {"conn_type": "http", "host": f"{receiver.base_url}/alerts"}
        ),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": smtp.host,
                "port": smtp.port,
                "login": smtp.login,
                "password": smtp.password,
                "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0},
            }
        ),
    }


# ============================================================================================
# End of section: the demo stack deployed for the end-to-end tests
# ============================================================================================


# ============================================================================================
# Section: S3 endpoint (moto's server) for backup destinations and bucket sources
# ============================================================================================


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
        _service_missing("moto_server (pip package moto[server], see requirements-dev.txt)")
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


# ============================================================================================
# End of section: S3 endpoint
# ============================================================================================


# ============================================================================================
# Section: backup test helpers (tests/unit/test_backup_*.py, tests/integration/test_backup_*.py)
# ============================================================================================
# opsflow.backup is imported inside the helpers: a module being edited there must not stop
# every other test from being collected.

# The demo stack's PostgreSQL and Redis images under the tests' own name (TEST_IMAGE_PREFIX),
# never the tags a running demo uses.
DEMO_POSTGRES_IMAGE = "opsflow-test/postgres:15"
DEMO_REDIS_IMAGE = "opsflow-test/redis:7"


class ListLog:
    """A LineLogger keeping every formatted line (to check what reaches the task log)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: Any, /, *args: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))

    def text(self) -> str:
        return "\n".join(self.lines)


def demo_image(tag: str, context: str, timeout: float) -> str:
    """The local image ``tag``, built from docker/<context> when missing (no registry here)."""
    if not shutil.which("docker"):
        service_unavailable("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        service_unavailable("Docker Engine is not running")
    present = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if present.returncode != 0:
        subprocess.run(
            ["docker", "build", "--network", "host", "-t", tag,
             str(REPO_ROOT / "docker" / context)],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
    return tag


@pytest.fixture(scope="session")
def pg_image() -> str:
    """The demo stack's PostgreSQL image: scratch servers that verify dumps run from it."""
    return demo_image(DEMO_POSTGRES_IMAGE, "postgres", timeout=900)


@pytest.fixture(scope="session")
def redis_image() -> str:
    """The demo stack's Redis image: scratch servers that verify RDB files run from it."""
    return demo_image(DEMO_REDIS_IMAGE, "redis", timeout=600)


def scratch_containers(run: str) -> list[str]:
    """Ids of the scratch containers, running or not, labelled for ``run`` (stack.backup_id)."""
    from opsflow.backup.scratch import SCRATCH_LABEL

    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={SCRATCH_LABEL}={run}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


def flip_byte(data: bytes, index: int | None = None, mask: int = 0xFF) -> bytes:
    """``data`` with one byte XORed with ``mask``: the one at ``index``, else the middle one."""
    changed = bytearray(data)
    changed[len(changed) // 2 if index is None else index] ^= mask
    return bytes(changed)


def retar(artifact: Path, change: str, payload: bytes) -> bytes:
    """The tar inside a .tar.zst artifact, with member ``change``'s content replaced."""
    raw = subprocess.run(["zstd", "-d", "-c", str(artifact)], capture_output=True, check=True)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw.stdout), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            if member.name == change:
                member.size = len(payload)
                dst.addfile(member, io.BytesIO(payload))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def consistent_artifact(ctx: RunContext, path: Path, content: bytes, level: int) -> Artifact:
    """``content`` compressed to ``path`` with a matching manifest entry: damage that only
    reading the content (verify, restore) can find, not the sha256 check."""

    def writer(sink: IO[bytes]) -> None:
        sink.write(content)

    return ctx.pipeline.compress_to_file(path, level=level, writer=writer)


def demo_manifest(
    backup_id: str,
    started: datetime,
    run_id: str,
    artifacts: list[Artifact],
    verification: VerificationStatus | None,
) -> Manifest:
    """A scheduled backup of stack "demo": one postgres source per artifact, named after the
    artifact's first dotted part, each verified with ``verification`` (None: unverified)."""
    from opsflow.backup.manifest import Manifest, SourceBackup, Verification

    stamp = started.isoformat()
    return Manifest(
        backup_id=backup_id,
        stack="demo",
        trigger="scheduled",
        run_id=run_id,
        started_at=stamp,
        ended_at=stamp,
        sources=[
            SourceBackup(
                name=Path(artifact.name).name.split(".")[0],
                kind="postgres",
                artifacts=[artifact],
                started_at=stamp,
                ended_at=stamp,
                verification=Verification(status=verification) if verification else None,
            )
            for artifact in artifacts
        ],
    )


# ============================================================================================
# End of section: backup test helpers
# ============================================================================================


# ============================================================================================
# Section: stack-file path safety (tests/unit/test_log_files.py, test_backup_files.py)
# ============================================================================================


@pytest.fixture
def system_victim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away directory inside a system directory (/dev/shm, else /run), with the
    default allow-list in force: what a symlink planted after load could point to."""
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="opsflow-victim-", dir=shm if shm.is_dir() else "/run"))
    try:
        yield base
    finally:
        shutil.rmtree(base)
