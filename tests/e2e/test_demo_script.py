"""End to end: ``scripts/demo.sh`` (``make demo`` / ``make demo-stop``) run for real.

The script runs here with everything of its own, so a demo of yours on the same machine
(project ``opsflow-demo``, ports 8080/18080, ``airflow-home/``, ``.state/``) is never
touched: its own Airflow home, API port, state dir and backup dir, and a stacks dir whose
demo stack file is moved to the project ``opsflow-demoscript``, its own ports and its own
image names. One Airflow standalone serves the module's tests in order: a first run
deploys, a second deploys nothing, ``--stop`` ends every process, a run after the stop
brings the recorded release back, and a scheduler killed under standalone is noticed.

The first test also proves that no test or benchmark builds an image under a name the
demo uses, so a test run never rebuilds an image under a running demo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchlib import write_demo_compose_copy

from opsflow.runtimes.compose import compose_base_argv
from support import REPO_ROOT
from support.backup import DEMO_POSTGRES_IMAGE, DEMO_REDIS_IMAGE
from support.demo import DEMO_DIR, DemoDeployment, without_demo_settings
from support.services import free_port, get_json, service_unavailable

pytestmark = pytest.mark.e2e

PROJECT = "opsflow-demoscript"
IMAGE_PREFIX = "opsflow-test/demo-script"
SCRIPT = REPO_ROOT / "scripts" / "demo.sh"
AIRFLOW_CLI = REPO_ROOT / "scripts" / "airflow"
DEMO_STACK_FILE = REPO_ROOT / "include" / "stacks" / "demo.yaml"
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api")
RUN_TIMEOUT = 2400  # s: the first run builds every image of the demo
# A process that ignores SIGTERM in a session of its own: what a task's child that left
# Airflow's process group looks like to `--stop`.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


# ============================================================================ helpers


def repository(ref: str) -> str:
    """``opsflow-demo/api:1.0.0`` -> ``opsflow-demo/api`` (a registry port is kept)."""
    name, sep, tag = ref.rpartition(":")
    return name if sep and "/" not in tag else ref


def compose_images(argv: list[str], env: dict[str, str]) -> set[str]:
    """Repositories of every service image as ``docker compose config`` resolves them."""
    result = subprocess.run(
        [*argv, "config", "--format", "json"],
        env={**env, "OPSFLOW_VERSION": "1.0.0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    return {repository(spec["image"]) for spec in services.values()}


def stack_images(stack_file: Path) -> set[str]:
    data = yaml.safe_load(stack_file.read_text())
    return {repository(service["image"]) for service in data["services"]}


def demo_argv(project: str) -> list[str]:
    return compose_base_argv(project, DEMO_DIR, ["docker-compose.yml"], ".env")


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    sid: int
    start: int  # clock ticks after boot: with the pid, one process for good
    cmd: str
    env: frozenset[bytes]  # empty once a process retitled itself (setproctitle)

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def proc_info(pid: int) -> Proc | None:
    """None once the process is gone; a zombie has no command line and no environment."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    cmdline, environ = "", frozenset[bytes]()
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        environ = frozenset(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    return Proc(pid, fields[0], int(fields[1]), int(fields[3]), int(fields[19]),
                cmdline.strip(), environ)  # fmt: skip


def all_processes() -> list[Proc]:
    found = (proc_info(int(path.name)) for path in Path("/proc").iterdir() if path.name.isdigit())
    return [info for info in found if info is not None]


def living(pid: int, started: int | None = None) -> bool:
    """Alive (not a zombie), and the same process as the one that started at ``started``."""
    info = proc_info(pid)
    return info is not None and info.alive and started in (None, info.start)


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


# ============================================================================ the isolated demo


@dataclass
class DemoScript:
    """One isolated `make demo`: its directories, ports and environment."""

    root: Path
    ports: dict[str, int]
    env: dict[str, str]
    sessions: set[int] = field(default_factory=set)  # pids of every standalone seen

    @property
    def home(self) -> Path:
        return self.root / "airflow-home"

    @property
    def stacks(self) -> Path:
        return self.root / "stacks"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def log(self) -> Path:
        return self.home / "standalone.log"

    @property
    def password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def run(self, *args: str) -> tuple[int, str]:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        with contextlib.suppress(OSError, ValueError):
            self.standalone_pid()  # remembered: its session finds its processes
        return result.returncode, result.stdout

    def airflow(self, *args: str) -> str:
        result = subprocess.run(
            [str(AIRFLOW_CLI), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def runs(self, dag_id: str) -> list[str]:
        """Ids of the runs of a DAG that someone triggered (not the nightly schedule's)."""
        lines = [line for line in self.airflow("dags", "list-runs", dag_id, "-o", "json")
                 .splitlines() if line.startswith("[")]  # fmt: skip
        runs = json.loads(lines[-1]) if lines else []
        return sorted(r["run_id"] for r in runs if not r["run_id"].startswith("scheduled__"))

    def compose(self, *args: str, version: str = "1.0.0") -> str:
        result = subprocess.run(
            [*demo_argv(PROJECT), *args],
            env={**self.env, "OPSFLOW_VERSION": version},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return result.stdout

    def get(self, path: str) -> tuple[int, Any]:
        return get_json(f"http://127.0.0.1:{self.ports['demo_api']}{path}")

    def health(self) -> dict[str, Any]:
        try:
            status, body = get_json(f"http://127.0.0.1:{self.ports['ui']}/api/v2/monitor/health")
        except OSError:
            return {}
        return body if status == 200 else {}

    def standalone_pid(self) -> int:
        pid = int((self.home / "standalone.pid").read_text())
        self.sessions.add(pid)
        return pid

    def processes(self) -> dict[int, Proc]:
        """Every live process of this demo: in a session of its standalone (setsid), or
        with its Airflow home in the environment (those that left the session)."""
        entry = f"AIRFLOW_HOME={self.home}".encode()
        return {
            info.pid: info
            for info in all_processes()
            if info.alive and (info.sid in self.sessions or entry in info.env)
        }

    def component(self, name: str) -> int:
        """Pid of a live component that standalone started (one of its children)."""
        leader = self.standalone_pid()
        for info in all_processes():
            if info.ppid == leader and info.alive and name in info.cmd:
                return info.pid
        pytest.fail(f"no live {name} under standalone {leader}: {self.processes()}")

    def ledger_versions(self) -> list[str]:
        """Versions of the releases the ledger records, as opsflow itself reads them."""
        code = (
            "from opsflow.releases.ledger import Ledger\n"
            "print(' '.join(r.version for r in Ledger('demo').releases()))"
        )
        out = self.airflow("--exec", str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", code)
        return out.split()


def write_stack_file(root: Path, ports: dict[str, int]) -> Path:
    """The demo stack file moved to this module's project, ports, images and backup dir."""
    stack = yaml.safe_load(DEMO_STACK_FILE.read_text())
    stack["runtime"]["project"] = PROJECT
    stack["runtime"]["working_dir"] = str(DEMO_DIR)
    for service in stack["services"]:
        service["image"] = f"{IMAGE_PREFIX}/{service['image'].partition('/')[2]}"
        service["ports"] = [
            port.replace("18080:", f"{ports['demo_api']}:")
            .replace("15432:", f"{ports['postgres']}:")
            .replace("16379:", f"{ports['redis']}:")
            for port in service.get("ports", [])
        ]
        for check in service["health"]:
            if check["kind"] == "http":
                check["url"] = check["url"].replace(":18080/", f":{ports['demo_api']}/")
            if check["kind"] == "tcp":
                check["port"] = ports["demo_api"]
    for log_root in stack["logs"]["roots"]:
        if log_root.get("volume") == "opsflow-demo_applogs":
            log_root["volume"] = f"{PROJECT}_applogs"
    stack["backup"]["local_dir"] = str(root / "backups")
    stack["health_gate"] = {"consecutive": 2, "interval": "1s", "timeout": "1m"}
    stacks = root / "stacks"
    stacks.mkdir(exist_ok=True)
    target = stacks / "demo.yaml"
    target.write_text(yaml.safe_dump(stack, sort_keys=False))
    return target


def script_environment(root: Path, ports: dict[str, int]) -> dict[str, str]:
    return {
        **without_demo_settings(os.environ),
        "OPSFLOW_AIRFLOW_HOME": str(root / "airflow-home"),
        "AIRFLOW__API__PORT": str(ports["ui"]),
        "OPSFLOW_STATE_DIR": str(root / "state"),
        "OPSFLOW_STACKS_DIR": str(root / "stacks"),
        # The backup directory is the test's own, outside the default allowed roots.
        "OPSFLOW_ALLOWED_ROOTS": str(root),
        "DEMO_API_PORT": str(ports["demo_api"]),
        "DEMO_POSTGRES_PORT": str(ports["postgres"]),
        "DEMO_REDIS_PORT": str(ports["redis"]),
        "DEMO_IMAGE_PREFIX": IMAGE_PREFIX,
        "DEMO_STOP_GRACE": "10",
    }


def new_ports() -> dict[str, int]:
    return {name: free_port() for name in ("ui", "demo_api", "postgres", "redis")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoScript]:
    for tool in ("docker", "curl", "setsid"):
        if shutil.which(tool) is None:
            service_unavailable(f"{tool} not found (run scripts/setup.sh)")
    probe = subprocess.run(
        ["docker", "image", "inspect", "debian:bookworm-slim"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        service_unavailable("Docker Engine or its debian:bookworm-slim base image is missing")
    subprocess.run([str(DEMO_DIR / "make-env.sh")], check=True, capture_output=True)
    root = tmp_path_factory.mktemp("demo-script")
    ports = new_ports()
    write_stack_file(root, ports)
    script = DemoScript(root=root, ports=ports, env=script_environment(root, ports))
    try:
        yield script
    finally:
        script.run("--stop")
        for pid in script.processes():  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)
        script.compose("down", "--volumes", "--remove-orphans", version="0")
        shutil.rmtree(root, ignore_errors=True)


def assert_secrets_private(demo: DemoScript) -> None:
    password = json.loads(demo.password_file.read_text())["admin"]
    assert len(password) >= 16
    for path in (demo.password_file, demo.log):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path} has mode {mode:o}"
    assert stat.S_IMODE(demo.home.stat().st_mode) == 0o700
    for log in demo.home.glob("standalone.log*"):
        assert password not in log.read_text(errors="replace"), f"admin password in {log}"


# ============================================================================ tests


def test_tests_and_benchmarks_never_use_an_image_name_of_the_demo(
    deployment: DemoDeployment, tmp_path: Path
) -> None:
    """The demo's images (compose file and stack file, as `make demo` runs them) against
    every image a test or benchmark builds or runs: not one repository in common."""
    demo = compose_images(demo_argv("opsflow-demo"), without_demo_settings(os.environ))
    demo |= stack_images(DEMO_STACK_FILE)
    assert "opsflow-demo/api" in demo and "opsflow-demo/postgres" in demo, demo

    used: dict[str, set[str]] = {}
    e2e_stack = yaml.safe_load((deployment.stacks / "demo.yaml").read_text())
    e2e_argv = demo_argv(e2e_stack["runtime"]["project"])
    used["e2e deployment (compose)"] = compose_images(e2e_argv, deployment.env)
    used["e2e deployment (stack file)"] = stack_images(deployment.stacks / "demo.yaml")
    used["integration scratch servers"] = {
        repository(DEMO_POSTGRES_IMAGE),
        repository(DEMO_REDIS_IMAGE),
    }
    ports = new_ports()
    stack_file = write_stack_file(tmp_path, ports)
    used["demo script (compose)"] = compose_images(
        demo_argv(PROJECT), script_environment(tmp_path, ports)
    )
    used["demo script (stack file)"] = stack_images(stack_file)

    def load_script(name: str) -> Any:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
        return module

    used["bench_backup"] = {repository(load_script("bench_backup").IMAGE)}
    bench = load_script("bench_rollback")
    bench_ports = {"api": free_port(), "postgres": free_port(), "redis": free_port()}
    layout = bench.Layout(tmp_path / "bench", bench_ports, "unused")
    layout.base.mkdir()
    write_demo_compose_copy(layout.working_dir)
    bench.write_stack_file(layout)
    passwords = {"POSTGRES_PASSWORD": "unused", "REDIS_PASSWORD": "unused"}
    bench_env = {**os.environ, **bench.environment(layout, passwords)}
    bench_argv = compose_base_argv(
        bench.PROJECT, layout.working_dir, ["docker-compose.yml"], ".env"
    )
    used["bench_rollback (compose)"] = compose_images(bench_argv, bench_env)
    used["bench_rollback (stack file)"] = stack_images(layout.stacks / "demo.yaml")
    mttr = load_script("bench_mttr")
    mttr_layout = mttr.Layout(tmp_path / "mttr", dict(bench_ports))
    mttr_layout.base.mkdir()
    write_demo_compose_copy(mttr_layout.working_dir)
    mttr_stack = mttr.write_stack_file(mttr_layout)
    mttr_env = {**os.environ, **mttr.demo_env(mttr_layout), **passwords}
    mttr_argv = compose_base_argv(
        mttr.PROJECT, mttr_layout.working_dir, ["docker-compose.yml"], ".env"
    )
    used["bench_mttr (compose)"] = compose_images(mttr_argv, mttr_env)
    used["bench_mttr (stack file)"] = stack_images(mttr_stack)

    shared = {where: sorted(images & demo) for where, images in used.items() if images & demo}
    assert not shared, f"image names of the demo used by tests or benchmarks: {shared}"


def test_first_run_deploys_1_0_0_and_takes_one_backup(demo: DemoScript) -> None:
    code, out = demo.run()

    assert code == 0, out[-6000:]
    assert demo.get("/version") == (200, {"version": "1.0.0", "schema_head": "0001"})
    assert demo.ledger_versions() == ["1.0.0"]
    assert len(demo.runs("demo__deploy")) == 1
    assert len(list(demo.backups.glob("*/manifest.json"))) == 1, out[-3000:]
    images = {
        row["Service"]: row["Image"]
        for row in map(json.loads, demo.compose("ps", "--format", "json").splitlines())
    }
    assert images["api"] == f"{IMAGE_PREFIX}/api:1.0.0"
    assert images["postgres"] == f"{IMAGE_PREFIX}/postgres:15"
    assert_secrets_private(demo)


def test_second_run_deploys_nothing_and_shows_what_runs(demo: DemoScript) -> None:
    deploys, backups = demo.runs("demo__deploy"), demo.runs("demo__backup")
    standalone = demo.standalone_pid()

    code, out = demo.run()

    assert code == 0, out[-6000:]
    assert demo.runs("demo__deploy") == deploys
    assert demo.runs("demo__backup") == backups
    assert "release 1.0.0 of stack demo is deployed" in out
    assert "not deploying again" in out and "not taking another" in out
    for service in ("api", "worker", "postgres", "redis"):
        assert f"{PROJECT}-{service}-1" in out  # docker compose ps of the project
    assert demo.standalone_pid() == standalone
    assert demo.get("/version")[1]["version"] == "1.0.0"


def test_stop_ends_every_process_even_those_ignoring_sigterm(demo: DemoScript) -> None:
    # Standalone's own environment, which every task process inherits.
    standalone_env = Path(f"/proc/{demo.standalone_pid()}/environ").read_bytes().split(b"\0")
    environ = dict(e.decode().split("=", 1) for e in standalone_env if b"=" in e)
    stubborn = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], env=environ, start_new_session=True
    )
    try:
        wait_until(lambda: stubborn.pid in demo.processes(), 10, "the stubborn process")
        before = demo.processes()
        assert any("LocalExecutor" in info.cmd for info in before.values()), before

        code, out = demo.run("--stop")

        assert code == 0, out[-4000:]
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()
    survivors = {pid: info.cmd for pid, info in before.items() if living(pid, info.start)}
    assert not survivors, out[-4000:]
    assert demo.processes() == {}, out[-4000:]
    assert "ignored SIGTERM" in out
    assert demo.compose("ps", "--quiet").strip() == ""
    assert_secrets_private(demo)


def test_run_after_stop_brings_the_recorded_release_back_without_deploying(
    demo: DemoScript,
) -> None:
    deploys = demo.runs("demo__deploy")

    code, out = demo.run()

    assert code == 0, out[-6000:]
    assert "release 1.0.0 of stack demo is deployed" in out
    assert demo.runs("demo__deploy") == deploys
    assert demo.get("/version") == (200, {"version": "1.0.0", "schema_head": "0001"})
    assert_secrets_private(demo)


def test_a_killed_scheduler_is_named_and_standalone_restarted(demo: DemoScript) -> None:
    standalone, scheduler = demo.standalone_pid(), demo.component("scheduler")
    deploys = demo.runs("demo__deploy")
    os.kill(scheduler, signal.SIGKILL)
    # Standalone neither restarts nor reaps it: it stays a zombie child.
    wait_until(lambda: not living(scheduler), 10, "the scheduler to die")
    zombie = proc_info(scheduler)
    assert zombie is not None and zombie.state == "Z" and zombie.ppid == standalone

    code, out = demo.run()

    assert code == 0, out[-6000:]
    assert "the scheduler of Airflow standalone died" in out
    assert "restarting the whole Airflow standalone" in out
    assert demo.standalone_pid() != standalone
    assert not living(standalone)
    for name in COMPONENTS:
        assert demo.component(name) != scheduler
    wait_until(
        lambda: demo.health().get("scheduler", {}).get("status") == "healthy",
        120,
        "the new scheduler's heartbeat",
    )
    assert demo.runs("demo__deploy") == deploys
