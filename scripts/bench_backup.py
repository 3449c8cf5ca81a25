#!/usr/bin/env python
"""Backup benchmark: opsflow's PostgreSQL backup and verification next to the raw tools.

A throwaway PostgreSQL 15 cluster (host binaries, its own temp dir) gets pgbench databases
of about 1 GB (``-s 70``) and 2 GB (``-s 140``); moto's S3 server stands in for the
offsite bucket. The cluster keeps PostgreSQL's durable defaults (``fsync=on``): every
contender only reads it, so its durability costs none of them anything, and all of them
read the same database on the same server with the same settings. Then, one after the
other, in rounds (``--repeat``, default 3; the fastest run of each contender is kept, the
highest peak memory too):

1. **raw pg_dump**: ``pg_dump -Fc -f FILE`` (pg_dump's default zlib compression);
2. **seed script**: ``pg_dump DB | gzip > FILE.sql.gz; md5sum FILE.sql.gz``, as the seed
   systems' backup scripts do it (a ``bash -c`` pipeline with ``pipefail``);
3. **opsflow backup**: ``StackBackups.take_backup`` (the code path of the DAGs: pg_dump
   ``-Z0`` into ``zstd -T0``, the snapshot fingerprint, local publish, S3 upload with SSE
   and the offsite check) in a child Python process that pays for its interpreter and
   imports (Airflow's S3 hook included) as a task process does;
4. **raw pg_restore + count**: contender 1's dump restored by plain ``pg_restore
   --no-owner --no-privileges`` into a new database of a scratch server started from the
   same image and with the same settings (tmpfs, durability off) as opsflow's scratch
   server, then ``count(*)`` of every table on one connection. That server is started
   before the clock runs (a DBA restores into a server that exists); opsflow's
   verification starts its own inside its time;
5. **opsflow verification**: ``StackBackups.verify`` (scratch container, artifact check,
   ``pg_restore --single-transaction``, fingerprint comparison) of contender 3's artifact,
   in a child Python process.

Contenders 1 and 3 run on the doubled database too (``--double-all``: 4 and 5 as well).
Before each contender: ``sync`` (no writeback owed by the previous one) and a read of the
database's files (or of the dump to restore): every contender starts cache-warm.

Peak memory is the sum of the resident set sizes of every process in the contender's tree
(its root and all descendants, found through ``/proc/<pid>/stat``; a child caught between
fork and exec, whose pages are its parent's, is not counted twice), sampled from ``/proc``
every 20 ms; servers (host cluster, scratch containers) are outside every tree. GNU time's
max RSS (largest single process) is printed beside it, and CPU seconds: the tree's (GNU
time) plus the host cluster's meanwhile, a figure less sensitive to other load than wall
time.

``--data pgbench`` (default) is ``pgbench -i``'s data, whose blank-padded filler compresses
about 60x; ``--data hex`` fills the same column with md5 hex text (about 2x, closer to
application data), which makes compression, not the server, the dump's main cost.

Targets (from the issue): opsflow backup within 1.15x of raw pg_dump's wall time and at
least 2x faster than the seed script; its peak memory under 150 MB and flat when the
database doubles (within +10% or +5 MB); verification within 1.3x of raw pg_restore plus
counting. Exit status 1 when a target is missed, 2 when the benchmark could not run or a
result was wrong. ``--quick`` is a smoke run on tiny databases (about a minute): targets
are printed, not enforced (fixed start-up costs dominate there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    GNU_TIME,
    MB,
    BenchError,
    Check,
    TimedLog,
    TreeSampler,
    finish,
    free_port,
    gnu_time_argv,
    gnu_time_result,
    ignore_signals,
    kill_tree,
    machine_line,
    print_beside,
    raise_on_signals,
    run,
    wait_port,
)

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# The demo stack's PostgreSQL image under the benchmark's own name: building it here must never
# retag the image a running `make demo` uses (opsflow-demo/postgres:15).
IMAGE = "opsflow-bench/postgres:15"
STACK = "bench-backup"
SOURCE = "db"
BUCKET = "opsflow-bench"
S3_CONN = "bench_s3"
PG_CONN = "bench_pg"
SCRATCH_LABEL = "io.opsflow.scratch"
OWNER_FILE = "bench-owner.pid"
TMP_PREFIX = "opsflow-bench-backup-"
PG_USER = "postgres"

FULL_SCALE = 70
QUICK_SCALE = 4
SAMPLE_EVERY = 0.02

BACKUP_VS_DUMP = 1.15
SEED_SPEEDUP = 2.0
PEAK_LIMIT_MB = 150.0
FLAT_GROWTH = 0.10
FLAT_SLACK_MB = 5.0
VERIFY_VS_RESTORE = 1.3

# One psql statement counting every user table, one after the other on one connection.
COUNT_SQL = """
SELECT format('%I.%I', table_schema, table_name),
       (xpath('/row/c/text()', query_to_xml(
            format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name),
            false, true, '')))[1]::text::bigint
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""
# pgbench's own rows (its "G" step), the accounts' filler as md5 hex instead of blanks.
HEX_FILL = """
INSERT INTO pgbench_branches (bid, bbalance) SELECT g, 0 FROM generate_series(1, {scale}) g;
INSERT INTO pgbench_tellers (tid, bid, tbalance)
    SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, {scale} * 10) g;
INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
    SELECT g, (g - 1) / 100000 + 1, 0,
           left(md5(g::text) || ' ' || md5((g * 7)::text) || ' ' || md5((g * 13)::text), 84)
    FROM generate_series(1, {scale} * 100000) g;
"""
SEED_SCRIPT = 'set -euo pipefail; pg_dump "$1" | gzip > "$2"; md5sum "$2" > "$2.md5"'
RESTORE_SCRIPT = (
    "set -euo pipefail; "
    'psql -X -q -v ON_ERROR_STOP=1 -d "$SCRATCH_DB" -c "CREATE DATABASE $2"; '
    'pg_restore --no-owner --no-privileges -d "$2" "$1"; '
    'psql -X -At -v ON_ERROR_STOP=1 -d "$2" -c "$3"'
)


# ====================================================================== measuring


@dataclass
class Measured:
    wall: float
    peak_mb: float
    max_proc_mb: float | None
    at_peak: dict[str, float]  # process name -> MB, at the moment of the peak
    stdout: str
    cpu_client: float | None = None  # user+sys of the contender's tree (GNU time)
    cpu_server: float | None = None  # the host cluster's processes meanwhile


def server_cpu(data: Path | None) -> float | None:
    """CPU seconds used so far by the cluster of ``data``: the postmaster, the children it
    reaped (ended backends) and the live ones."""
    if data is None:
        return None
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == postmaster:
            ticks += sum(int(value) for value in fields[11:15])
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(
    argv: list[str],
    env: Mapping[str, str],
    log: Path,
    scratch: Path,
    server: Path | None = None,
) -> Measured:
    """Run ``argv`` under GNU time with a /proc sampler; raise on a non-zero exit.

    ``server``: data directory of a local cluster whose CPU time is charged to the contender.
    """
    rss_file = scratch / "gnu-time.rss"
    rss_file.unlink(missing_ok=True)
    out_file = scratch / "contender.stdout"
    server_before = server_cpu(server)
    with out_file.open("w+b") as out, log.open("ab") as err:
        started = time.perf_counter()
        child = subprocess.Popen(
            gnu_time_argv(argv, rss_file),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        sampler = TreeSampler(child.pid, SAMPLE_EVERY)
        sampler.start()
        try:
            code = child.wait()
        except BaseException:
            sampler.sample()
            kill_tree(sampler.seen | {child.pid})
            child.wait()
            raise
        finally:
            sampler.stop()
        wall = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise BenchError(f"{Path(argv[0]).name} exited with {code}:\n" + "\n".join(tail))
    max_proc, cpu_client = gnu_time_result(rss_file) or (None, None)
    cpu_server = None
    if server_before is not None:
        time.sleep(0.5)  # the postmaster reaps the contender's backends
        after = server_cpu(server)
        cpu_server = after - server_before if after is not None else None
    return Measured(
        wall=wall,
        peak_mb=sampler.peak / MB,
        max_proc_mb=max_proc,
        at_peak={name: rss / MB for name, rss in sampler.at_peak.items()},
        stdout=stdout,
        cpu_client=cpu_client,
        cpu_server=cpu_server,
    )


def warm(paths: list[Path]) -> None:
    """``sync``, then read ``paths`` (files or trees) so the contender starts cache-warm."""
    subprocess.run(["sync"], check=True)
    for top in paths:
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            with contextlib.suppress(OSError), path.open("rb") as handle:
                while handle.read(8 * MB):
                    pass


# ====================================================================== services


@dataclass
class Cluster:
    """A PostgreSQL 15 cluster from the host binaries in ``root`` (run as postgres if root)."""

    root: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    started: bool = False

    @property
    def as_postgres(self) -> list[str]:
        return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []

    @property
    def data(self) -> Path:
        return self.root / "data"

    def env(self, database: str = "postgres") -> dict[str, str]:
        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": PG_USER,
            "PGPASSWORD": self.password,
            "PGDATABASE": database,
        }

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile, sockets = self.root / "pwfile", self.root / "sock"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        sockets.mkdir(exist_ok=True)
        if self.as_postgres:
            for path in (self.root, pwfile, sockets):
                shutil.chown(path, PG_USER, PG_USER)
        run(
            [*self.as_postgres, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", PG_USER,
             "--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--locale=C.UTF-8"],
            timeout=180,
        )  # fmt: skip
        pwfile.unlink()
        # Durable defaults (fsync, synchronous_commit, full_page_writes on): every contender
        # only reads this server, so they cost none of them anything; a larger max_wal_size
        # only spares the data generation some checkpoints.
        options = (
            f"-p {self.port} -k {sockets} -c listen_addresses=127.0.0.1 "
            "-c max_wal_size=4GB -c checkpoint_timeout=30min"
        )
        run(
            [*self.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.data),
             "-l", str(self.root / "server.log"), "-w", "-t", "120", "-o", options, "start"],
            timeout=150,
        )  # fmt: skip
        self.started = True

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [*self.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                 "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip

    def connect(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, password=self.password,
            dbname=database, autocommit=True,
        )  # fmt: skip

    def query(self, sql: str, database: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        try:
            with self.connect(database) as conn:
                cursor = conn.execute(sql)
                return list(cursor.fetchall()) if cursor.description else []
        except psycopg.Error as err:
            raise BenchError(f"{sql.strip()[:60]}...: {err}") from err

    def database_dir(self, database: str) -> Path:
        rows = self.query(f"SELECT oid FROM pg_database WHERE datname = '{database}'")  # noqa: S608
        return self.data / "base" / str(rows[0][0])


@dataclass
class Moto:
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self) -> str:
        """An Airflow AWS connection (``AIRFLOW_CONN_<ID>``) like tests/support/s3.py's."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "opsflow-bench-key",
                "password": "opsflow-bench-secret",
                "extra": {"endpoint_url": self.url, "region_name": "us-east-1"},
            }
        )

    def start(self, owner_dir: Path) -> None:
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            raise BenchError(f"{binary} is missing (pip package moto[server]: make setup)")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        (owner_dir / "moto.pid").write_text(str(self.process.pid))
        wait_port(self.port, self.process, "moto_server", 30)
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="opsflow-bench-key", aws_secret_access_key="opsflow-bench-secret",  # noqa: S106
        )  # fmt: skip
        client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def docker(*args: str, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
    return run(["docker", *args], timeout=timeout, env=env).strip()


def ensure_image() -> None:
    probe = subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, timeout=60, check=False
    )
    if probe.returncode == 0:
        return
    print(f"building {IMAGE} from docker/postgres", flush=True)
    subprocess.run(
        ["docker", "build", "--network", "host", "-t", IMAGE, str(REPO / "docker" / "postgres")],
        check=True, timeout=900,
    )  # fmt: skip


def remove_containers(label_prefix: str) -> None:
    """Every scratch container whose opsflow label starts with ``label_prefix``."""
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={SCRATCH_LABEL}",
         "--format", f'{{{{.ID}}}} {{{{.Label "{SCRATCH_LABEL}"}}}}'],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    ids = [
        line.split()[0]
        for line in listed.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith(label_prefix)
    ]
    if ids:
        subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True, timeout=120)


@dataclass
class RawScratch:
    """The raw restore's server: opsflow's scratch image and settings, started by hand."""

    label: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    container: str = ""
    port: int = 0

    def start(self, database_bytes: int) -> None:
        from opsflow.backup.postgres import verify as pg

        tmpfs = pg.tmpfs_bytes(database_bytes)  # the same sizing as verify_postgres
        argv = [
            "run", "-d", "--label", f"{SCRATCH_LABEL}={self.label}", "--shm-size", "256m",
            "-p", "127.0.0.1::5432", "-e", "POSTGRES_PASSWORD",
            "-e", f"POSTGRES_USER={pg.SCRATCH_USER}", "-e", f"POSTGRES_DB={pg.SCRATCH_DB}",
        ]  # fmt: skip
        if tmpfs:
            mount = f"{pg.SCRATCH_TMPFS}:rw,nosuid,nodev,mode=1777,size={tmpfs // MB}m"
            argv += ["-e", f"PGDATA={pg.SCRATCH_TMPFS}/pgdata", "--tmpfs", mount]
        argv.append(IMAGE)
        for name, value in pg.SCRATCH_SETTINGS.items():
            argv += ["-c", f"{name}={value}"]
        self.container = docker(*argv, env={"POSTGRES_PASSWORD": self.password})
        published = docker("port", self.container, "5432/tcp").splitlines()[0]
        self.port = int(published.rpartition(":")[2])
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [str(PG_BIN / "psql"), "-X", "-At", "-c", "SELECT 1"],
                env={**os.environ, **self.env()}, capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"raw scratch server not ready: {probe.stderr!r}")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        from opsflow.backup.postgres import verify as pg

        return {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": pg.SCRATCH_USER,
            "PGPASSWORD": self.password,
            "PGDATABASE": pg.SCRATCH_DB,
            "SCRATCH_DB": pg.SCRATCH_DB,
        }

    def remove(self) -> None:
        if self.container:
            subprocess.run(["docker", "rm", "-f", "-v", self.container], capture_output=True)
            self.container = ""


def sweep_stale(parent: Path) -> None:
    """Leftovers of an earlier run killed too hard to clean up (its owner pid is gone)."""
    running = False
    for root in parent.glob(f"{TMP_PREFIX}*"):
        owner = root / OWNER_FILE
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            running = True  # another run in progress: leave it and its containers alone
            continue
        print(f"removing leftovers of an interrupted run in {root}", flush=True)
        moto_pid = root / "moto.pid"
        with contextlib.suppress(OSError, ValueError):
            stale = int(moto_pid.read_text())
            if b"moto_server" in Path(f"/proc/{stale}/cmdline").read_bytes():
                os.kill(stale, signal.SIGKILL)
        Cluster(root / "pg").stop()
        shutil.rmtree(root, ignore_errors=True)
    if not running:
        remove_containers(f"{STACK}.")


# ====================================================================== workers (child side)


def _vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _stack_backups(spec: dict[str, Any]) -> Any:
    from opsflow.backup.stack_backup import StackBackups
    from opsflow.connections import Endpoint
    from opsflow.stack.model import Stack

    stack = Stack.model_validate(
        {
            "name": STACK,
            "runtime": {"kind": "compose", "project": "bench", "working_dir": spec["local_dir"]},
            "services": [{"name": "postgres", "role": "database", "versioned": False}],
            "backup": {
                "local_dir": spec["local_dir"],
                "s3": {"conn_id": S3_CONN, "bucket": BUCKET, "prefix": "backups", "sse": "AES256"},
                "compression_level": spec["level"],
                "sources": {
                    "postgres": [
                        {
                            "name": SOURCE,
                            "conn_id": PG_CONN,
                            "database": spec["database"],
                            "major_version": 15,
                            "client_bin_dir": str(PG_BIN),
                            "verify_image": IMAGE,
                        }
                    ]
                },
            },
        }
    )
    endpoint = Endpoint(
        host="127.0.0.1",
        port=int(spec["port"]),
        login=PG_USER,
        password=os.environ.pop("BENCH_PGPASSWORD", ""),
    )
    return StackBackups(stack, resolve=lambda _conn_id: endpoint)


def worker_backup(spec: dict[str, Any], started: float) -> dict[str, Any]:
    """``take_backup`` as the pre-restore/pre-upgrade backups call it, unverified."""
    # What an Airflow task has loaded before it calls opsflow (S3Hook pulls in Airflow).
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401

    sb = _stack_backups(spec)
    imported = time.perf_counter()
    baseline = _vm_rss_mb()
    log = TimedLog(sys.stderr)  # the contender's log file
    manifest = sb.take_backup(
        [SOURCE], spec["backup_id"], "manual", "bench-backup", log, verify=False
    )
    total = time.perf_counter() - imported
    dumped = log.when(r"dumped \d+ tables") or 0.0
    local = log.when(r"local store: published") or dumped
    uploaded = log.when(r"s3 store: uploaded") or local
    s3_done = log.when(r"s3 store: published") or uploaded
    source = manifest.sources[0]
    return {
        "imports_s": imported - started,
        "run_s": total,
        "dump_s": dumped,
        "local_s": local - dumped,
        "upload_s": uploaded - local,
        "s3_check_s": s3_done - uploaded,
        "rest_s": total - s3_done,
        "baseline_rss_mb": baseline,
        "artifact_bytes": source.artifacts[0].size,
        "rows": sum(int(t["rows"]) for t in source.fingerprint["tables"].values()),
        "destinations": manifest.destinations,
    }


def worker_verify(spec: dict[str, Any], started: float) -> dict[str, Any]:
    """``StackBackups.verify`` of the published local copy (scratch server from the image)."""
    from airflow.providers.docker.hooks.docker import DockerHook  # noqa: F401

    sb = _stack_backups(spec)
    imported = time.perf_counter()
    baseline = _vm_rss_mb()
    log = TimedLog(sys.stderr)  # the contender's log file
    store = sb.primary_store()
    manifest = next(m for m in store.list_manifests(log) if m.backup_id == spec["backup_id"])
    artifact_dir = Path(store.root) / manifest.backup_id
    ctx = sb.context(manifest.backup_id, log, staging=artifact_dir)
    try:
        verification = sb.verify(manifest.sources[0], artifact_dir, ctx)
    finally:
        ctx.pipeline.terminate()
    return {
        "imports_s": imported - started,
        "run_s": time.perf_counter() - imported,
        "baseline_rss_mb": baseline,
        "status": verification.status,
        "differences": verification.differences,
        "details": verification.details,
    }


def worker(kind: str, spec_json: str) -> int:
    started = time.perf_counter()
    sys.path.insert(0, str(REPO / "plugins"))
    spec = json.loads(spec_json)
    result = worker_backup(spec, started) if kind == "backup" else worker_verify(spec, started)
    print(json.dumps(result))
    return 0


# ====================================================================== the benchmark


@dataclass
class Row:
    """One contender on one database: its fastest run, with the peak memory of all runs."""

    contender: str
    database_gb: float
    measured: Measured
    output_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)


@dataclass
class Bench:
    base: Path
    cluster: Cluster
    moto: Moto
    level: int
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    runs: dict[tuple[str, float], list[Row]] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    scratch: RawScratch | None = None
    count: int = 0

    @property
    def local_dir(self) -> Path:
        return self.base / "opsflow-local"

    def log(self, name: str) -> Path:
        self.count += 1
        path = self.base / "logs" / f"{self.count:02d}-{name}.log"
        path.parent.mkdir(exist_ok=True)
        return path

    def client_env(self, database: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.cluster.env(database),
            "PATH": f"{PG_BIN}:{os.environ.get('PATH', '')}",
        }

    def raw_dump(self, database: str, gb: float) -> Path:
        dest = self.base / f"{database}.pgdump"
        argv = [str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dest), database]
        warm([self.cluster.database_dir(database)])
        env = self.client_env(database)
        measured = measure(argv, env, self.log("pg_dump"), self.base, self.cluster.data)
        self.add(Row("raw pg_dump -Fc", gb, measured, dest.stat().st_size / MB))
        return dest

    def seed(self, database: str, gb: float) -> None:
        dest = self.base / f"{database}.sql.gz"
        argv = ["bash", "-c", SEED_SCRIPT, "bash", database, str(dest)]
        warm([self.cluster.database_dir(database)])
        env = self.client_env(database)
        measured = measure(argv, env, self.log("seed"), self.base, self.cluster.data)
        if not (self.base / f"{database}.sql.gz.md5").read_text().strip():
            raise BenchError("the seed script wrote no md5sum")
        self.add(Row("seed pg_dump|gzip; md5sum", gb, measured, dest.stat().st_size / MB))

    def spec(self, database: str, backup_id: str) -> dict[str, Any]:
        return {
            "database": database,
            "port": self.cluster.port,
            "local_dir": str(self.local_dir),
            "level": self.level,
            "backup_id": backup_id,
        }

    def worker_env(self) -> dict[str, str]:
        home = self.base / "airflow-home"
        home.mkdir(exist_ok=True)
        return {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "OPSFLOW_STATE_DIR": str(self.base / "opsflow-state"),
            f"AIRFLOW_CONN_{S3_CONN.upper()}": self.moto.connection(),
            "BENCH_PGPASSWORD": self.cluster.password,
        }

    def worker_argv(self, kind: str, database: str, backup_id: str) -> list[str]:
        spec = json.dumps(self.spec(database, backup_id))
        return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, spec]

    def opsflow_backup(self, database: str, gb: float, rows: int) -> str:
        from opsflow.backup.manifest import new_backup_id, utcnow

        backup_id = new_backup_id(utcnow(), f"{self.token}-{database}-{self.count}")
        self.labels.append(f"{STACK}.{backup_id}")
        argv = self.worker_argv("backup", database, backup_id)
        warm([self.cluster.database_dir(database)])
        log = self.log("opsflow-backup")
        measured = measure(argv, self.worker_env(), log, self.base, self.cluster.data)
        result = json.loads(measured.stdout.strip().splitlines()[-1])
        if result["rows"] != rows:
            raise BenchError(f"opsflow backup fingerprinted {result['rows']} rows, not {rows}")
        s3 = result["destinations"].get("s3", {})
        if s3.get("status") != "verified":
            raise BenchError(f"opsflow backup: offsite copy not verified: {s3}")
        size = result["artifact_bytes"] / MB
        self.add(Row("opsflow backup local+S3", gb, measured, size, result))
        return backup_id

    def raw_restore(self, dump: Path, database: str, gb: float, expected: dict[str, int]) -> None:
        if self.scratch is None:
            self.scratch = RawScratch(f"{STACK}.raw-{self.token}")
            self.labels.append(self.scratch.label)
            self.scratch.start(int(gb * 1e9))
        target = f"raw_{database}_{self.count}"
        argv = ["bash", "-c", RESTORE_SCRIPT, "bash", str(dump), target, COUNT_SQL]
        env = {**os.environ, **self.scratch.env(), "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
        warm([dump])
        measured = measure(argv, env, self.log("pg_restore"), self.base)
        counted = {
            line.split("|")[0]: int(line.split("|")[1])
            for line in measured.stdout.splitlines()
            if "|" in line
        }
        if counted != expected:
            raise BenchError(f"raw restore counted {counted}, expected {expected}")
        # Free the tmpfs for the next restore (not timed).
        with contextlib.suppress(BenchError):
            run(
                [str(PG_BIN / "psql"), "-X", "-q", "-c", f"DROP DATABASE {target}"],
                timeout=120, env=self.scratch.env(),
            )  # fmt: skip
        self.add(Row("raw pg_restore + count(*)", gb, measured, dump.stat().st_size / MB))

    def opsflow_verify(self, database: str, gb: float, backup_id: str) -> None:
        artifact = self.local_dir / backup_id
        argv = self.worker_argv("verify", database, backup_id)
        warm([artifact])
        measured = measure(argv, self.worker_env(), self.log("opsflow-verify"), self.base)
        result = json.loads(measured.stdout.strip().splitlines()[-1])
        if result["status"] != "passed":
            raise BenchError(f"opsflow verification {result['status']}: {result}")
        size = sum(p.stat().st_size for p in artifact.glob("*.zst")) / MB
        self.add(Row("opsflow verification", gb, measured, size, result))

    def add(self, row: Row) -> None:
        self.runs.setdefault((row.contender, row.database_gb), []).append(row)
        m = row.measured
        print(
            f"  {row.contender:<28} {row.database_gb:5.2f} GB  {m.wall:7.2f} s  "
            f"peak {m.peak_mb:6.1f} MB  (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    def rows(self) -> list[Row]:
        """Per contender and size: the fastest run (noise only adds time), the highest peak."""
        found = []
        for runs in self.runs.values():
            best = min(runs, key=lambda row: row.measured.wall)
            best.measured.peak_mb = max(row.measured.peak_mb for row in runs)
            best.walls = [row.measured.wall for row in runs]
            found.append(best)
        return found


def generate(
    cluster: Cluster, database: str, scale: int, data: str
) -> tuple[float, dict[str, int]]:
    """pgbench's tables at ``scale``; ``hex`` replaces the blank filler with md5 hex text."""
    started = time.perf_counter()
    cluster.query(f'CREATE DATABASE "{database}"')
    env = {**cluster.env(database)}
    pgbench = [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale)]
    if data == "pgbench":
        # Server-side generation (G), then vacuum (hint bits, visibility map) and keys.
        run([*pgbench, "-I", "dtGvp", database], timeout=3600, env=env)
    else:
        run([*pgbench, "-I", "dt", database], timeout=600, env=env)
        cluster.query(HEX_FILL.format(scale=scale), database)
        run([*pgbench, "-I", "vp", database], timeout=3600, env=env)
    cluster.query("CHECKPOINT")
    size = int(cluster.query(f"SELECT pg_database_size('{database}')")[0][0])
    counts = {name: int(count) for name, count in cluster.query(COUNT_SQL, database)}
    print(
        f"generated {database}: pgbench -s {scale} ({data} data), {size / 1e9:.2f} GB "
        f"(pg_database_size), {sum(counts.values()):,} rows, "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return size / 1e9, counts


def machine_facts(cluster: Cluster, level: int) -> list[str]:
    version = cluster.query("SELECT version()")[0][0]
    zstd = run(["zstd", "--version"], timeout=10).strip(" *\n")
    return [
        machine_line(),
        f"PostgreSQL: {version}",
        f"opsflow: zstd level {level} with -T0 ({zstd}); S3 = moto_server on 127.0.0.1, SSE AES256",
    ]


def report(bench: Bench, quick: bool) -> list[Check]:
    rows = bench.rows()

    def find(contender: str, gb: float | None = None) -> Row | None:
        for row in rows:
            if row.contender == contender and (gb is None or row.database_gb == gb):
                return row
        return None

    sizes = sorted({row.database_gb for row in rows})
    checks: dict[int, list[Check]] = {}
    ops_1x = find("opsflow backup local+S3", sizes[0])
    for row in rows:
        index = rows.index(row)
        same = [r for r in rows if r.database_gb == row.database_gb]
        wall = row.measured.wall
        where = f"{row.contender} ({row.database_gb:.2f} GB)"
        found: list[Check] = []
        if row.contender == "opsflow backup local+S3":
            dump = next(r for r in same if r.contender == "raw pg_dump -Fc")
            ratio = wall / dump.measured.wall
            target = f"<= {BACKUP_VS_DUMP}x"
            found.append(
                Check("vs raw pg_dump", where, f"{ratio:.2f}x", target, ratio <= BACKUP_VS_DUMP)
            )
            seed = next((r for r in same if r.contender.startswith("seed")), None)
            if seed is not None:
                speedup = seed.measured.wall / wall
                value, target = f"{speedup:.2f}x faster", f">= {SEED_SPEEDUP}x"
                found.append(Check("vs seed script", where, value, target, speedup >= SEED_SPEEDUP))
            peak = row.measured.peak_mb
            value, target = f"{peak:.1f} MB", f"< {PEAK_LIMIT_MB:.0f} MB"
            found.append(Check("peak memory", where, value, target, peak < PEAK_LIMIT_MB))
            if ops_1x is not None and row is not ops_1x:
                base = ops_1x.measured.peak_mb
                limit = max(base * (1 + FLAT_GROWTH), base + FLAT_SLACK_MB)
                label = f"memory flat vs {ops_1x.database_gb:.2f} GB"
                value, target = f"{peak - base:+.1f} MB", f"<= +{limit - base:.1f} MB"
                found.append(Check(label, where, value, target, peak <= limit))
        elif row.contender == "opsflow verification":
            restore = next(r for r in same if r.contender.startswith("raw pg_restore"))
            ratio = wall / restore.measured.wall
            value, target = f"{ratio:.2f}x", f"<= {VERIFY_VS_RESTORE}x"
            found.append(
                Check("vs pg_restore+count", where, value, target, ratio <= VERIFY_VS_RESTORE)
            )
        if found:
            checks[index] = found

    print()
    print(
        f"{'contender':<27}{'DB GB':>6}{'wall s':>8}{'CPU cli+srv':>12}{'peak MB':>8}"
        f"{'1-proc':>7}{'out MB':>7}  {'check':<21}{'value':>13}  {'target':<12}{'result'}"
    )
    print("-" * 133)
    for index, row in enumerate(rows):
        m = row.measured
        one = f"{m.max_proc_mb:.1f}" if m.max_proc_mb is not None else "-"
        out = f"{row.output_mb:.1f}" if row.output_mb is not None else "-"
        client = f"{m.cpu_client:.1f}" if m.cpu_client is not None else "?"
        server = f"{m.cpu_server:.1f}" if m.cpu_server is not None else "-"
        cpu = f"{client}+{server}"
        head = (
            f"{row.contender:<27}{row.database_gb:>6.2f}{m.wall:>8.2f}{cpu:>12}{m.peak_mb:>8.1f}"
            f"{one:>7}{out:>7}  "
        )
        found = checks.get(index) or [Check("baseline", "", "", "", True)]
        print_beside(
            head,
            (
                f"{check.label:<21}{check.value:>13}  {check.target:<12}"
                + ("" if check.label == "baseline" else ("PASS" if check.ok else "FAIL"))
                for check in found
            ),
        )
    print()
    print("details:")
    for row in rows:
        m = row.measured
        parts = ", ".join(f"{name} {mb:.1f}" for name, mb in sorted(m.at_peak.items()))
        walls = ", ".join(f"{wall:.2f}" for wall in row.walls)
        print(
            f"  {row.contender} ({row.database_gb:.2f} GB): wall s of the runs {walls}; "
            f"MB at the peak: {parts}"
        )
        extra = row.extra
        if row.contender.startswith("opsflow backup"):
            print(
                f"    interpreter+imports {extra['imports_s']:.2f} s (RSS after imports "
                f"{extra['baseline_rss_mb']:.1f} MB); take_backup {extra['run_s']:.2f} s = "
                f"dump+fingerprint {extra['dump_s']:.2f} + local publish {extra['local_s']:.2f}"
                f" + S3 upload {extra['upload_s']:.2f} + S3 check {extra['s3_check_s']:.2f}"
                f" + rest {extra['rest_s']:.2f}; tree peak above the post-import RSS "
                f"{m.peak_mb - extra['baseline_rss_mb']:.1f} MB"
            )
            dump = find("raw pg_dump -Fc", row.database_gb)
            if dump is not None:
                cpu = (m.cpu_client or 0) + (m.cpu_server or 0)
                raw = (dump.measured.cpu_client or 0) + (dump.measured.cpu_server or 0)
                print(
                    f"    without interpreter+imports: {extra['run_s'] / dump.measured.wall:.2f}x "
                    f"raw pg_dump's wall time; CPU seconds (tree + server) {cpu:.1f} vs "
                    f"{raw:.1f} ({cpu / max(raw, 0.01):.2f}x)"
                )
        if row.contender == "opsflow verification":
            details = extra["details"]
            print(
                f"    interpreter+imports {extra['imports_s']:.2f} s (RSS after imports "
                f"{extra['baseline_rss_mb']:.1f} MB); verify {extra['run_s']:.2f} s: scratch "
                f"start {details.get('startup_seconds')} s (artifact sha256 check meanwhile), "
                f"restore {details.get('restore_seconds')} s, fingerprint "
                f"{details.get('fingerprint_seconds')} s, tmpfs {details.get('tmpfs')}; "
                f"{details.get('tables')} tables, {details.get('rows')} rows"
            )
    flat = [c for found in checks.values() for c in found]
    if quick:
        print("\n--quick: a smoke run; targets shown but not enforced")
    return flat


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=None, help=f"pgbench scale ({FULL_SCALE})")
    parser.add_argument("--no-double", action="store_true", help="skip the doubled database")
    parser.add_argument(
        "--double-all", action="store_true", help="run restore+verify on the doubled DB too"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: scale {QUICK_SCALE}, targets not enforced"
    )
    parser.add_argument(
        "--data",
        choices=("pgbench", "hex"),
        default="pgbench",
        help="pgbench: pgbench -i's rows (blank filler, ~60x compressible); "
        "hex: the same tables with md5 hex filler (~2x, like application data)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per contender, best wall kept (3; quick 1)"
    )
    parser.add_argument("--level", type=int, default=None, help="zstd level (stack default)")
    parser.add_argument("--dir", type=Path, default=None, help="work dir parent ($TMPDIR)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)

    sys.path.insert(0, str(REPO / "plugins"))
    from opsflow.stack.model import Backup

    level = args.level or Backup().compression_level
    scale = args.scale or (QUICK_SCALE if args.quick else FULL_SCALE)
    for tool in (str(GNU_TIME), str(PG_BIN / "initdb"), str(PG_BIN / "pgbench")):
        if not Path(tool).exists():
            print(f"{tool} is missing: run make setup", file=sys.stderr)
            return 2
    parent = Path(args.dir or tempfile.gettempdir())
    sweep_stale(parent)
    base = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=parent))
    base.chmod(0o711)  # the cluster's directory inside belongs to postgres
    (base / OWNER_FILE).write_text(str(os.getpid()))
    cluster = Cluster(base / "pg")
    moto = Moto(base / "moto.log")
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    bench = Bench(base, cluster, moto, level)

    raise_on_signals()
    started = time.perf_counter()
    checks: list[Check] = []
    try:
        ensure_image()
        cluster.start()
        moto.start(base)
        print("\n".join(machine_facts(cluster, level)), flush=True)
        one_gb, one_rows = generate(cluster, "bench1x", scale, args.data)
        doubled = None
        if not args.no_double:
            doubled = generate(cluster, "bench2x", scale * 2, args.data)
        print(
            f"contenders in {repeat} round(s), one after the other (best wall time kept; "
            f"peak memory sampled every {SAMPLE_EVERY * 1000:.0f} ms):",
            flush=True,
        )
        for number in range(repeat):
            print(f"round {number + 1} of {repeat}:", flush=True)
            dump = bench.raw_dump("bench1x", one_gb)
            bench.seed("bench1x", one_gb)
            backup_id = bench.opsflow_backup("bench1x", one_gb, sum(one_rows.values()))
            bench.raw_restore(dump, "bench1x", one_gb, one_rows)
            bench.opsflow_verify("bench1x", one_gb, backup_id)
            if doubled is not None:
                two_gb, two_rows = doubled
                dump2 = bench.raw_dump("bench2x", two_gb)
                backup2 = bench.opsflow_backup("bench2x", two_gb, sum(two_rows.values()))
                if args.double_all:
                    bench.raw_restore(dump2, "bench2x", two_gb, two_rows)
                    bench.opsflow_verify("bench2x", two_gb, backup2)
        checks = report(bench, args.quick)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        ignore_signals()  # cleanup runs to the end
        if bench.scratch is not None:
            bench.scratch.remove()
        for label in bench.labels:
            remove_containers(label)
        moto.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(
        "\nmethod: wall = from spawn to exit of the contender's process; peak MB = max over "
        f"{SAMPLE_EVERY * 1000:.0f} ms samples of the summed RSS of its whole process tree "
        "(/proc); 1-proc = GNU time's max RSS (largest single process). Servers are "
        "outside every tree. CPU cli+srv = user+sys seconds of the tree (GNU time) + of the "
        "host cluster meanwhile (- = a scratch container's, not counted). opsflow rows "
        "include interpreter start and imports."
    )
    return finish(checks, started, enforce=not args.quick)


if __name__ == "__main__":
    sys.exit(main())
