#!/usr/bin/env python
"""Rollback benchmark: opsflow putting the previous release back, next to plain Compose.

The demo stack (include/demo) runs as its own Compose project (``opsflow-benchrb``) on free
ports, with its stack file, state dir, backups and a copy of its compose file and ``.env``
in a temp dir: a rollback puts back the config files it recorded, and it must never write
into the checkout, which others edit meanwhile. Release 1.1.0 is built, migrated and
started, its database grown to about 200 MB (rows of md5 hex text in the ``items`` table),
it is recorded in the ledger as the running release (images and saved config), a
pre-upgrade backup is taken (``StackBackups.take_backup``, unverified, as the upgrade does),
and release 1.2.0-never-ready is built and started: live, never ready. That is the state a
failed health gate leaves, and every contender starts from it (the never-ready release is
brought back up between contenders, outside the clock). In rounds (``--repeat``, default
3; the fastest run of each contender is kept):

1. **floor**: ``docker compose up -d --no-build --pull never --remove-orphans`` with
   ``OPSFLOW_VERSION=1.1.0``: what an operator types who knows the old version, nothing
   else (no data, no config, no check of the images);
2. **opsflow rollback**: ``ReleaseSwitch`` as the rollback task calls it: ``stop_app`` of
   the failed release, ``put_back_images`` and ``put_back_config`` from the snapshot of
   1.1.0, ``start``;
3. **opsflow rollback + DB restore**: as 2, with ``restore_databases`` from the pre-upgrade
   backup right after ``stop_app`` (restore beside the live database, fingerprint check,
   swap).

Each clock runs from the first command to the end of the health gate: every health check
of the stack file (``run_check``, as the gate trigger runs them) green in 2 rounds in a
row, 1 s apart, the same gate for every contender. The calls run in this process with
their modules imported beforehand, as in a task process that parsed the DAG file.
After contender 3 the ``items`` table must hold the rows it held at the backup.

Targets (from the issue): rollback without data restore within 3x the floor and under
30 s; with data restore under 90 s. Exit status 1 when a target is missed, 2 when the
benchmark could not run or a result was wrong. ``--quick`` is a smoke run on a 20 MB
database: targets are printed, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchlib import (
    BenchError,
    Check,
    TimedLog,
    finish,
    free_port,
    ignore_signals,
    machine_line,
    print_beside,
    raise_on_signals,
    run,
    write_demo_compose_copy,
)

if TYPE_CHECKING:
    from opsflow.health import HealthCheck
    from opsflow.releases.switch import ReleaseSwitch, Snapshot
    from opsflow.runtimes.compose import ComposeProject
    from opsflow.runtimes.compose_probe import ComposeContext
    from opsflow.stack.model import Stack

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "include" / "demo"
DEMO_STACK_FILE = REPO / "include" / "stacks" / "demo.yaml"
PROJECT = "opsflow-benchrb"
# Image names of the benchmark's stack (the compose file's DEMO_IMAGE_PREFIX): its builds and
# retags never touch the images of a running `make demo` (prefix opsflow-demo).
IMAGE_PREFIX = "opsflow-bench"
STACK = "demo"
OLD = "1.1.0"
BROKEN = "1.2.0-never-ready"
SOURCE = "app_db"
TMP_PREFIX = "opsflow-bench-rollback-"
LOCK_FILE = Path(tempfile.gettempdir()) / "opsflow-bench-rollback.lock"
MB = 1 << 20

FULL_MB = 200
QUICK_MB = 20
GATE = {"consecutive": 2, "interval": "1s", "timeout": "2m"}
GATE_TIMEOUT = 300.0  # a contender not healthy by then did not roll back at all
FAILED_STATE_TIMEOUT = 180.0
BUILD_TIMEOUT = 1800.0

NO_DATA_VS_FLOOR = 3.0
NO_DATA_LIMIT_S = 30.0
WITH_DATA_LIMIT_S = 90.0

FLOOR = "floor: compose up -d"
NO_DATA = "opsflow rollback"
WITH_DATA = "opsflow rollback + DB restore"
CONTENDERS = (FLOOR, NO_DATA, WITH_DATA)

GROW_BATCH = 100_000
# Application-like text (md5 hex compresses about 2x), different in every row.
GROW_SQL = """
INSERT INTO items (name)
SELECT left(md5(g::text) || ' ' || md5((g * 7)::text) || ' ' || md5((g * 13)::text), 96)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
"""


# ====================================================================== small helpers


@contextlib.contextmanager
def single_run() -> Iterator[None]:
    """One run at a time: they share the Compose project name."""
    with LOCK_FILE.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another bench_rollback run holds {LOCK_FILE}") from None
        yield


def sweep_stale(parent: Path) -> None:
    """Temp dirs of runs killed too hard to clean up (the lock says none is running)."""
    for root in parent.glob(f"{TMP_PREFIX}*"):
        print(f"removing leftovers of an interrupted run in {root}", flush=True)
        shutil.rmtree(root, ignore_errors=True)


def demo_passwords() -> dict[str, str]:
    env_file = DEMO_DIR / ".env"
    if not env_file.exists():
        run([str(DEMO_DIR / "make-env.sh")], timeout=60)
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    if not values.get("POSTGRES_PASSWORD") or not values.get("REDIS_PASSWORD"):
        raise BenchError(f"{env_file} lacks POSTGRES_PASSWORD or REDIS_PASSWORD")
    return values


# ====================================================================== setup (files, env)


@dataclass
class Layout:
    base: Path
    ports: dict[str, int] = field(default_factory=dict)
    pg_password: str = field(default="", repr=False)

    @property
    def working_dir(self) -> Path:
        return self.base / "demo"

    @property
    def stacks(self) -> Path:
        return self.base / "stacks"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def backups(self) -> Path:
        return self.base / "backups"

    @property
    def log_path(self) -> Path:
        return self.base / "bench.log"


def write_stack_file(layout: Layout) -> None:
    """The demo stack file moved to this project, its ports, image names and temp dir, with a
    quick gate."""
    import yaml

    stack = yaml.safe_load(DEMO_STACK_FILE.read_text())
    stack["runtime"]["project"] = PROJECT
    stack["runtime"]["working_dir"] = str(layout.working_dir)
    api = layout.ports["api"]
    for service in stack["services"]:
        service["image"] = f"{IMAGE_PREFIX}/{service['image'].partition('/')[2]}"
        for check in service.get("health", []):
            if check["kind"] == "http":
                check["url"] = check["url"].replace(":18080/", f":{api}/")
            if check["kind"] == "tcp":
                check["port"] = api
    for root in stack.get("logs", {}).get("roots", []):
        if root.get("volume") == "opsflow-demo_applogs":
            root["volume"] = f"{PROJECT}_applogs"
    stack["health_gate"] = dict(GATE)
    stack["backup"]["local_dir"] = str(layout.backups)
    layout.stacks.mkdir(mode=0o700)
    (layout.stacks / f"{STACK}.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))


def environment(layout: Layout, passwords: dict[str, str]) -> dict[str, str]:
    """What the e2e fixture sets: stack and state dirs, ports, image prefix, the two connections."""
    ports = layout.ports
    return {
        "AIRFLOW_HOME": str(layout.base / "airflow-home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "OPSFLOW_STACKS_DIR": str(layout.stacks),
        "OPSFLOW_STATE_DIR": str(layout.state),
        "OPSFLOW_ALLOWED_ROOTS": str(layout.backups),  # backups outside the working dir
        "DEMO_API_PORT": str(ports["api"]),
        "DEMO_POSTGRES_PORT": str(ports["postgres"]),
        "DEMO_REDIS_PORT": str(ports["redis"]),
        "DEMO_IMAGE_PREFIX": IMAGE_PREFIX,
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


# ====================================================================== the gate


@dataclass
class GateResult:
    seconds: float  # gate start to the end of the last required green round
    first_green: float  # gate start to the end of the round that began the streak
    rounds: int


async def _gate(
    checks: list[HealthCheck],
    compose: ComposeContext,
    consecutive: int,
    interval: float,
    timeout: float,
) -> GateResult:
    """The gate trigger's loop: all checks at once per round, ``consecutive`` green rounds."""
    from opsflow.health import run_check

    started = time.perf_counter()
    rounds = streak = 0
    first_green = 0.0
    while True:
        rounds += 1
        results = await asyncio.gather(*(run_check(check, compose) for check in checks))
        failed = [result for result in results if not result.ok]
        elapsed = time.perf_counter() - started
        if failed:
            streak = 0
        else:
            streak += 1
            if streak == 1:
                first_green = elapsed
        if streak >= consecutive:
            return GateResult(elapsed, first_green, rounds)
        if elapsed > timeout:
            detail = "; ".join(f"{r.name}: {r.detail}" for r in failed) or "streak too short"
            raise BenchError(f"not healthy after {timeout:.0f} s ({rounds} rounds): {detail}")
        await asyncio.sleep(interval)


# ====================================================================== the benchmark


@dataclass
class Run:
    contender: str
    wall: float
    phases: dict[str, float]
    gate: GateResult
    walls: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, layout: Layout, log: TimedLog) -> None:
        from opsflow.releases.switch import ReleaseSwitch
        from opsflow.runtimes.compose import ComposeProject
        from opsflow.stack.loader import load_stack

        self.layout = layout
        self.log = log
        self.stack: Stack = load_stack(STACK, layout.stacks)
        self.project: ComposeProject = ComposeProject.for_stack(self.stack, layout.stacks)
        self.switch: ReleaseSwitch = ReleaseSwitch(self.stack, log, layout.stacks)
        self.compose: ComposeContext = self.project.context()
        self.snapshot: Snapshot | None = None
        self.backup_id = ""
        self.db_mb = 0.0
        self.items = 0
        self.runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
        self.facts: list[str] = []

    # ------------------------------------------------------------------ plumbing

    def compose_run(self, version: str, argv: list[str], timeout: float) -> None:
        self.project.runner(version, self.log).run(argv, timeout=timeout)

    def gate(self, timeout: float = GATE_TIMEOUT) -> GateResult:
        gate = self.stack.health_gate
        return asyncio.run(
            _gate(
                self.stack.checks,
                self.compose,
                gate.consecutive,
                gate.interval.total_seconds(),
                timeout,
            )
        )

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.layout.ports["postgres"], user="app", dbname="app",
            password=self.layout.pg_password, autocommit=True, connect_timeout=10,
        ) as conn:  # fmt: skip
            cursor = conn.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def down(self) -> None:
        self.project.runner(OLD, self.log).run(
            self.project.down_argv(volumes=True), timeout=300, check=False
        )

    # ------------------------------------------------------------------ setup

    def deploy(self, version: str, migrate: bool) -> None:
        started = time.perf_counter()
        print(f"building release {version} (docker compose build)", flush=True)
        self.compose_run(version, self.project.build_argv(), BUILD_TIMEOUT)
        migrate_argv = self.project.migrate_argv()
        if migrate and migrate_argv:
            self.compose_run(version, migrate_argv, 600)
        self.compose_run(version, self.project.up_argv(), 600)
        print(f"  {version} built and started in {time.perf_counter() - started:.0f} s")

    def grow(self, target_mb: float) -> None:
        """Rows in ``items`` until the database is about ``target_mb`` (pg_database_size)."""
        started = time.perf_counter()
        first = int(self.sql("SELECT coalesce(max(id), 0) FROM items")[0][0]) + 1
        size = int(self.sql("SELECT pg_database_size('app')")[0][0])
        while size < target_mb * MB:
            self.sql(GROW_SQL, {"first": first, "last": first + GROW_BATCH - 1})
            first += GROW_BATCH
            size = int(self.sql("SELECT pg_database_size('app')")[0][0])
        self.sql("VACUUM (ANALYZE) items")
        self.sql("CHECKPOINT")
        self.db_mb = int(self.sql("SELECT pg_database_size('app')")[0][0]) / MB
        self.items = int(self.sql("SELECT count(*) FROM items")[0][0])
        print(
            f"  database grown to {self.db_mb:.1f} MB (pg_database_size), {self.items:,} rows "
            f"in items, in {time.perf_counter() - started:.0f} s",
            flush=True,
        )

    def record_release(self) -> None:
        """1.1.0 as the ledger's running release: its images and its saved config."""
        from opsflow.releases.ledger import LedgerEntry, now_iso

        entry = LedgerEntry(
            entry_id=f"bench-deploy-{OLD}",
            stack=STACK,
            action="deploy",
            version=OLD,
            run_id=f"bench__deploy_{OLD}",
            dag_id=f"{STACK}__deploy",
            triggered_by="bench_rollback",
            images=self.switch.images(OLD),
            config_digest=self.switch.save_config().digest,
            ended_at=now_iso(),
            outcome="succeeded",
        )
        self.switch.ledger.write(entry)
        self.snapshot, notes = self.switch.snapshot(OLD)
        if notes:
            raise BenchError(f"snapshot of {OLD} has notes right after recording it: {notes}")

    def pre_upgrade_backup(self) -> None:
        from opsflow.backup.manifest import new_backup_id, utcnow
        from opsflow.backup.stack_backup import StackBackups
        from opsflow.releases.ledger import LedgerEntry

        run_id = "bench__upgrade_pre"
        self.backup_id = new_backup_id(utcnow(), run_id)
        started = time.perf_counter()
        manifest = StackBackups(self.stack, self.layout.stacks).take_backup(
            [SOURCE], self.backup_id, "pre-upgrade", run_id, self.log, verify=False
        )
        size = sum(a.size for s in manifest.sources for a in s.artifacts) / MB
        print(
            f"  pre-upgrade backup {self.backup_id}: {size:.1f} MB compressed in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        assert self.snapshot is not None
        self.switch.ledger.write(
            LedgerEntry(
                entry_id="bench-upgrade",
                stack=STACK,
                action="upgrade",
                version=BROKEN,
                from_version=OLD,
                run_id="bench__upgrade",
                dag_id=f"{STACK}__upgrade",
                triggered_by="bench_rollback",
                backup_id=self.backup_id,
                snapshot=self.snapshot.to_dict(),
            )
        )

    def setup(self, target_mb: float) -> None:
        self.down()  # a project left by a run killed too hard to clean up
        self.deploy(OLD, migrate=True)
        self.gate(timeout=180)
        self.grow(target_mb)
        self.record_release()
        self.pre_upgrade_backup()
        self.deploy(BROKEN, migrate=True)
        self.failed_state()

    def failed_state(self) -> None:
        """The never-ready release up, live and not ready: what a failed gate leaves."""
        from opsflow.health import ContainerCheck, HttpCheck, run_check

        self.compose_run(BROKEN, self.project.up_argv(), 600)
        ready = [c for c in self.stack.checks if isinstance(c, HttpCheck)]
        live = [
            c for c in self.stack.checks if isinstance(c, ContainerCheck) and c.service == "api"
        ]

        async def probe() -> tuple[bool, str]:
            results = await asyncio.gather(*(run_check(c, self.compose) for c in ready + live))
            ready_ok = any(r.ok for r in results[: len(ready)])
            live_ok = all(r.ok for r in results[len(ready) :])
            return live_ok and not ready_ok, "; ".join(f"{r.name}: {r.detail}" for r in results)

        deadline = time.monotonic() + FAILED_STATE_TIMEOUT
        while True:
            reached, detail = asyncio.run(probe())
            if reached:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{BROKEN} did not reach its failed state: {detail}")
            time.sleep(1)

    # ------------------------------------------------------------------ contenders

    def timed(self, contender: str, steps: list[tuple[str, Callable[[], object]]]) -> Run:
        """Run ``steps`` then the gate, on one clock; phases are the steps' own times."""
        phases: dict[str, float] = {}
        self.log.info("=== %s", contender)
        started = time.perf_counter()
        for name, step in steps:
            at = time.perf_counter()
            step()
            phases[name] = time.perf_counter() - at
        at = time.perf_counter()
        gate = self.gate()
        phases["gate"] = time.perf_counter() - at
        wall = time.perf_counter() - started
        run_ = Run(contender, wall, phases, gate)
        self.runs[contender].append(run_)
        parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())
        print(
            f"  {contender:<30} {wall:7.2f} s  ({parts}; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
        return run_

    def floor(self) -> Run:
        return self.timed(
            FLOOR, [("up -d", lambda: self.compose_run(OLD, self.project.up_argv(), 600))]
        )

    def rollback(self, restore: bool, round_no: int) -> Run:
        snap = self.snapshot
        assert snap is not None
        switch = self.switch

        def put_back() -> None:
            switch.put_back_images(snap.images)
            switch.put_back_config(snap.config_digest)

        steps: list[tuple[str, Callable[[], object]]] = [("stop", lambda: switch.stop_app(BROKEN))]
        if restore:
            run_id = f"bench__rollback_{round_no}"
            steps.append(("restore", lambda: switch.restore_databases(self.backup_id, run_id)))
        steps += [("put back", put_back), ("start", lambda: switch.start(OLD))]
        return self.timed(WITH_DATA if restore else NO_DATA, steps)

    def check_restored(self) -> None:
        count = int(self.sql("SELECT count(*) FROM items")[0][0])
        if count != self.items:
            raise BenchError(f"after the restore items holds {count:,} rows, not {self.items:,}")

    def round(self, round_no: int) -> None:
        self.failed_state()
        self.floor()
        self.failed_state()
        self.rollback(restore=False, round_no=round_no)
        self.failed_state()
        self.rollback(restore=True, round_no=round_no)
        self.check_restored()

    # ------------------------------------------------------------------ report

    def best(self, contender: str) -> Run:
        runs = self.runs[contender]
        fastest = min(runs, key=lambda run_: run_.wall)
        fastest.walls = [run_.wall for run_ in runs]
        return fastest

    def report(self, quick: bool) -> list[Check]:
        floor, no_data, with_data = (self.best(name) for name in CONTENDERS)
        ratio = no_data.wall / floor.wall
        checks = {
            NO_DATA: [
                Check(
                    "vs floor",
                    NO_DATA,
                    f"{ratio:.2f}x",
                    f"<= {NO_DATA_VS_FLOOR:g}x",
                    ratio <= NO_DATA_VS_FLOOR,
                ),
                Check(
                    "wall",
                    NO_DATA,
                    f"{no_data.wall:.2f} s",
                    f"< {NO_DATA_LIMIT_S:g} s",
                    no_data.wall < NO_DATA_LIMIT_S,
                ),
            ],
            WITH_DATA: [
                Check(
                    "wall",
                    WITH_DATA,
                    f"{with_data.wall:.2f} s",
                    f"< {WITH_DATA_LIMIT_S:g} s",
                    with_data.wall < WITH_DATA_LIMIT_S,
                ),
            ],
        }
        print()
        print(
            f"{'contender':<31}{'DB MB':>7}{'wall s':>8}{'vs floor':>10}  "
            f"{'check':<10}{'value':>9}  {'target':<9}result"
        )
        print("-" * 93)
        for run_ in (floor, no_data, with_data):
            head = (
                f"{run_.contender:<31}{self.db_mb:>7.1f}{run_.wall:>8.2f}"
                f"{run_.wall / floor.wall:>9.2f}x  "
            )
            found = checks.get(run_.contender)
            if not found:
                print(f"{head}(floor)")
                continue
            print_beside(
                head,
                (
                    f"{check.label:<10}{check.value:>9}  {check.target:<9}"
                    + ("PASS" if check.ok else "FAIL")
                    for check in found
                ),
            )
        print()
        print("where the time goes (fastest run of each; s):")
        for run_ in (floor, no_data, with_data):
            parts = " + ".join(f"{name} {seconds:.2f}" for name, seconds in run_.phases.items())
            walls = ", ".join(f"{wall:.2f}" for wall in run_.walls)
            print(f"  {run_.contender}: {parts} = {run_.wall:.2f}  (runs: {walls})")
            gate = run_.gate
            print(
                f"    gate: first all-green round {gate.first_green:.2f} s after the gate "
                f"started, passed after {gate.seconds:.2f} s, {gate.rounds} rounds"
            )
        flat = [check for found in checks.values() for check in found]
        if quick:
            print("\n--quick: a smoke run on a small database; targets shown but not enforced")
        return flat


def machine_facts() -> list[str]:
    engine = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=60).strip()
    compose = run(["docker", "compose", "version", "--short"], timeout=60).strip()
    return [
        machine_line(),
        f"Docker Engine {engine}, Compose {compose}; project {PROJECT}; gate: every check of "
        f"the stack file, {GATE['consecutive']} green rounds {GATE['interval']} apart",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_MB} MB, targets not enforced"
    )
    parser.add_argument(
        "--db-mb",
        type=float,
        default=None,
        help=f"database size in MB ({FULL_MB}; quick {QUICK_MB})",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="rounds, fastest run kept (3; quick 1)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="work dir parent ($TMPDIR)")
    args = parser.parse_args()

    target_mb = args.db_mb or (QUICK_MB if args.quick else FULL_MB)
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    if not shutil.which("docker"):
        print("docker is missing: run make setup", file=sys.stderr)
        return 2

    raise_on_signals()
    started = time.perf_counter()
    checks: list[Check] = []
    base: Path | None = None
    bench: Bench | None = None
    log: TimedLog | None = None
    try:
        with single_run():
            parent = Path(args.dir or tempfile.gettempdir())
            sweep_stale(parent)
            base = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
            passwords = demo_passwords()
            ports = {name: free_port() for name in ("api", "postgres", "redis")}
            layout = Layout(base, ports, passwords["POSTGRES_PASSWORD"])
            write_demo_compose_copy(layout.working_dir)
            write_stack_file(layout)
            # Before any opsflow or Airflow import: Airflow reads its home and connections
            # from the environment, opsflow its stacks and state dirs.
            os.environ.update(environment(layout, passwords))
            os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
            sys.path.insert(0, str(REPO / "plugins"))
            # The ledger logs each entry it writes; the run log has what matters here.
            logging.getLogger("opsflow").setLevel(logging.WARNING)
            log = TimedLog(layout.log_path.open("a", encoding="utf-8"))
            bench = Bench(layout, log)
            print("\n".join(machine_facts()), flush=True)
            print(f"setup: {OLD} with a {target_mb:g} MB database, then {BROKEN}", flush=True)
            bench.setup(target_mb)
            print(
                f"contenders in {repeat} round(s), each from {BROKEN} running (fastest run kept):",
                flush=True,
            )
            for round_no in range(1, repeat + 1):
                print(f"round {round_no} of {repeat}:", flush=True)
                bench.round(round_no)
            checks = bench.report(args.quick)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure here means the benchmark could not run
        print(f"benchmark could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        if log is not None and log.lines:
            print("last lines of the run log:\n" + "\n".join(log.tail(25)), file=sys.stderr)
        return 2
    finally:
        ignore_signals()  # cleanup runs to the end
        if bench is not None:
            with contextlib.suppress(Exception):
                bench.down()
        if log is not None:
            log.close()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        "\nmethod: wall = from the first command of the contender to the end of the health "
        "gate (every check of the stack file green in 2 rounds in a row, 1 s apart); "
        "opsflow's calls run in this process, modules imported beforehand."
    )
    return finish(checks, started, enforce=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
