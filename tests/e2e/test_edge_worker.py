"""A stack on another host: its tasks run on a real Airflow Edge worker serving the stack's
queue, while the scheduler, DAG processor, triggerer and API server run separately.

The e2e demo stack is placed on queue ``host-b`` (``placement: {queue: host-b}``). Two
edge workers are started by ``scripts/edge-worker``, each in a network namespace of its
own (``ip netns``, one veth pair, addresses the test assigns): ``host-b`` and ``host-c``
(serving another queue). A worker reaches the API server only over its link; the Docker
Engine's unix socket is shared, and host-b's own loopback carries the stack's published
ports (``support.netns.loopback_bridge``), as a real stack host's does.

The tests check what ran where from the metadata DB (each task's hostname and queue) and
the task logs, what the stack answers and what the engine runs, and the ledger and lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support import REPO_ROOT
from support.demo import WORKER, DemoDeployment
from support.netns import NetworkNamespace, loopback_bridge, network_namespace
from support.services import free_port
from support.standalone_airflow import FAST, Airflow, airflow_processes, wait_until
from support.upgrades import Upgrades, upgrade_stack

pytestmark = pytest.mark.e2e

QUEUE = "host-b"
EDGE_WORKER = REPO_ROOT / "scripts" / "edge-worker"
EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
# Worker settings a stack host would have: what reaches the stack, never Airflow's own.
STACK_HOST_KEYS = ("OPSFLOW_STACKS_DIR", "OPSFLOW_STATE_DIR", "OPSFLOW_ALLOWED_ROOTS")


@dataclass
class EdgeWorker:
    """One ``scripts/edge-worker`` process in its own network namespace."""

    name: str
    space: NetworkNamespace
    home: Path
    env: dict[str, str]
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        log = (self.home.parent / f"{self.name}-{self.starts}.log").open("ab")
        self.starts += 1
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def restart_supervised(self, airflow: Airflow, timeout: float = 300) -> int:
        """Start again as systemd's ``Restart=always`` would, until the API server takes the
        worker back: a name whose last worker died is refused until that registration is
        older than five heartbeats. Returns the number of starts it took."""
        deadline, tries = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            tries += 1
            self.start()
            assert self.process is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
            if self.process.poll() is None and self.online(airflow):
                return tries
            time.sleep(5)
        raise AssertionError(f"{self.name} was not taken back within {timeout:.0f}s")

    def kill(self) -> None:
        """The host goes away at once: the worker and every task process it started."""
        for pid in airflow_processes(self.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        wait_until(f"{self.name}'s processes to end", lambda: not airflow_processes(self.home), 30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()

    def ran(self) -> list[Path]:
        """Task logs this worker wrote for the demo stack's DAGs."""
        return sorted((self.home / "logs").glob("dag_id=demo__*/run_id=*/task_id=*/*.log"))

    def online(self, airflow: Airflow) -> bool:
        with airflow._db() as db:
            row = db.execute(
                "SELECT state FROM edge_worker WHERE worker_name = ?", (self.name,)
            ).fetchone()
        return bool(row and row[0] in ("idle", "running"))


@dataclass
class Fleet:
    upgrades: Upgrades
    airflow: Airflow
    host_b: EdgeWorker
    host_c: EdgeWorker

    def trigger(self, dag_id: str, version: str) -> str:
        run_id = f"edge-{version}-{int(time.time())}"
        self.airflow.cli("dags", "unpause", dag_id)
        self.airflow.cli("dags", "trigger", dag_id, "--run-id", run_id,
                         "--conf", json.dumps({"version": version}))  # fmt: skip
        return run_id

    def wait_for_end(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        return str(
            wait_until(
                f"{dag_id} {run_id} to end",
                lambda: (
                    self.airflow.run_state(run_id, dag_id) in ("success", "failed")
                    and self.airflow.run_state(run_id, dag_id)
                ),
                timeout=timeout,
                interval=2,
            )
        )

    def placements(self, dag_id: str, run_id: str) -> dict[str, tuple[str, str, str]]:
        """task -> (hostname, queue, executor) as the metadata DB recorded them."""
        with self.airflow._db() as db:
            rows = db.execute(
                "SELECT task_id, hostname, queue, executor FROM task_instance "
                "WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        return {task: (host, queue, executor) for task, host, queue, executor in rows}


def _worker(
    name: str, queue: str, space: NetworkNamespace, port: int, secret: Path, root: Path,
    base_env: dict[str, str],
) -> EdgeWorker:  # fmt: skip
    home = root / name
    home.mkdir()
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home),
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": base_env["AIRFLOW__EDGE__HEARTBEAT_INTERVAL"],
        "OPSFLOW_DAGS_DIR": str(REPO_ROOT / "dags"),
        **{key: base_env[key] for key in STACK_HOST_KEYS},
        # The stack's own settings a host has: its demo's ports and connections.
        **{k: v for k, v in base_env.items() if k.startswith(("DEMO_", "AIRFLOW_CONN_"))},
    }
    argv = space.argv(
        str(EDGE_WORKER), "--api-url", f"http://{space.host_address}:{port}",
        "--queues", queue, "--secret-file", str(secret), "--home", str(home),
        "--hostname", name, "--no-install",
        hostname=name,
    )  # fmt: skip
    return EdgeWorker(name=name, space=space, home=home, env=env, argv=argv)


@pytest.fixture(scope="module")
def fleet(deployment: DemoDeployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("edge")
    # Two subnets per pytest worker: two workers never share one.
    subnet = 10 + 2 * int(WORKER.removeprefix("gw") or 0)
    with upgrade_stack(deployment, root / "backups") as upgrades:
        stack = yaml.safe_load(upgrades.stack_file.read_text())
        stack["placement"] = {"queue": QUEUE}
        upgrades.stack_file.write_text(yaml.safe_dump(stack, sort_keys=False))
        secret = root / "edge.secret"
        secret.write_text(secrets.token_hex(32) + "\n")
        secret.chmod(0o600)
        port = free_port()
        with (
            network_namespace("b", subnet) as space_b,
            network_namespace("c", subnet + 1) as space_c,
            loopback_bridge(space_b, [int(deployment.env[f"DEMO_{name}_PORT"])
                                      for name in ("API", "POSTGRES", "REDIS")]),
        ):  # fmt: skip
            env = {
                **deployment.env,
                **FAST,
                "AIRFLOW__CORE__EXECUTOR": f"LocalExecutor,{EDGE_EXECUTOR}",
                "AIRFLOW__EDGE__API_ENABLED": "True",
                # A dead worker's name is free again after 5 heartbeats (25 s, not 150 s).
                "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "5",
                "AIRFLOW__EDGE__API_URL": f"http://127.0.0.1:{port}/edge_worker/v1/rpcapi",
                "AIRFLOW__API_AUTH__JWT_SECRET": secret.read_text().strip(),
                # Reachable from the workers' links (their only way to this machine).
                "AIRFLOW__API__HOST": "0.0.0.0",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "PYTHONUNBUFFERED": "1",
            }
            home = Path(env["OPSFLOW_AIRFLOW_HOME"])
            airflow = Airflow(env=env, home=home, log_dir=root, port=port)
            host_b = _worker("host-b", QUEUE, space_b, port, secret, root, env)
            host_c = _worker("host-c", "host-c", space_c, port, secret, root, env)
            try:
                airflow.cli("db", "migrate")  # the edge tables of the provider
                airflow.standalone()
                wait_until("the API server", airflow.api_up, timeout=240, interval=2)
                assert space_b.reaches(space_b.host_address, port)
                assert not space_b.reaches("127.0.0.1", port), "the worker must not share lo"
                for worker in (host_c, host_b):
                    worker.start()
                for worker in (host_c, host_b):
                    wait_until(f"{worker.name} online", lambda w=worker: w.online(airflow), 180)
                wait_until(
                    "the demo DAGs to be parsed",
                    lambda: "demo__upgrade" in airflow.cli("dags", "list", "-o", "plain"),
                    timeout=180,
                    interval=3,
                )
                yield Fleet(upgrades, airflow, host_b, host_c)
            finally:
                for worker in (host_b, host_c):
                    worker.stop()
                airflow.stop()
                for log in sorted(root.glob("*.log")):
                    lines = log.read_text(errors="replace").splitlines()[-30:]
                    print(f"---- {log.name} (last lines)\n" + "\n".join(lines))


def test_a_placed_stack_is_deployed_by_its_host_s_edge_worker(fleet: Fleet) -> None:
    upgrades = fleet.upgrades
    upgrades.deployment.reset()
    run_id = fleet.trigger("demo__deploy", "1.0.0")

    assert fleet.wait_for_end("demo__deploy", run_id) == "success"

    placed = fleet.placements("demo__deploy", run_id)
    assert placed and set(placed.values()) == {("host-b", QUEUE, "EdgeExecutor")}, placed
    assert upgrades.serving("1.0.0")
    assert upgrades.current() == "1.0.0" and upgrades.lock_free()
    # The task logs the API server serves were written on host-b: the summary names the
    # host every step ran on, and the worker of another queue took none of them
    # (pushed by the worker in chunks, so it may arrive a moment after the run ended).
    wait_until(
        "the summary's log, as the API server serves it, to name host-b",
        lambda: (
            "steps ran on: host-b"
            in fleet.airflow.task_log(run_id, "summary", dag_id="demo__deploy")
        ),
        timeout=120,
        interval=2,
    )
    assert any(f"run_id={run_id}" in str(path) for path in fleet.host_b.ran())
    assert fleet.host_c.ran() == []


def test_the_worker_killed_in_the_middle_of_an_upgrade_leaves_no_stuck_run(
    fleet: Fleet,
) -> None:
    upgrades = fleet.upgrades
    upgrades.arrive_at("1.0.0")
    run_id = fleet.trigger("demo__upgrade", "1.1.0")
    wait_until(
        "start to run on host-b",
        lambda: fleet.airflow.tasks(run_id).get("start", (None, 0))[0] == "running",
        timeout=600, interval=0.5,
    )  # fmt: skip
    fleet.host_b.kill()
    tries = fleet.host_b.restart_supervised(fleet.airflow)

    state = fleet.wait_for_end("demo__upgrade", run_id, timeout=900)

    entry = next(e for e in upgrades.entries() if e["entry_id"] == f"demo__upgrade/{run_id}")
    assert upgrades.lock_free()
    served = [version for version in ("1.0.0", "1.1.0") if upgrades.serving(version)]
    assert len(served) == 1, f"healthy on {served}: {entry}"
    if state == "success":
        assert (entry["outcome"], served) == ("succeeded", ["1.1.0"]), entry
    else:
        # Failed: the ledger says which release runs, and that is the one that answers.
        assert entry["outcome"] in ("rolled-back", "failed"), entry
        assert upgrades.current() == served[0], (entry, served)
    placed = fleet.placements("demo__upgrade", run_id)
    assert {(queue, executor) for _host, queue, executor in placed.values()} == {
        (QUEUE, "EdgeExecutor")
    }
    # Tasks the run skipped never ran anywhere (no host); the others ran on host-b.
    assert {host for host, _queue, _executor in placed.values() if host} == {"host-b"}
    print(f"worker killed during start: run {state}, ledger {entry['outcome']}, "
          f"serving {served[0]}, worker back after {tries} start(s)")  # fmt: skip
    assert fleet.host_c.ran() == []
