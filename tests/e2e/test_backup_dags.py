"""End to end: ``demo__backup`` and ``demo__restore`` run by Airflow against the real demo
stack (PostgreSQL and Redis containers), a real S3 endpoint (moto's server) and real alert
receivers.

The round trip proves the data: table digests computed here with plain SQL (independent
of opsflow's fingerprint) must be equal in the source at backup time, in a database
restored from the backup, and in the live database after a restore. The fault tests prove
the guarantees: no manifest for a broken backup, the previous good backup untouched, the
run failed, an alert delivered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.demo import DemoDeployment, demo_pg, table_digests
from support.receivers import HttpCapture, SmtpCapture, alert_connections
from support.s3 import CuttingProxy, S3Server
from support.services import service_unavailable

pytestmark = pytest.mark.e2e

BUCKET = "opsflow-e2e-backups"
S3_PREFIX = "e2e/"
Completed = subprocess.CompletedProcess[str]
OLD_PG_CLIENT = Path("/opt/opsflow/pg-client-13/usr/lib/postgresql/13/bin")


@dataclass
class BackupSetup:
    deployment: DemoDeployment
    s3: S3Server
    local: Path
    stack_file: Path
    env: dict[str, str]

    def stack(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.stack_file.read_text())
        return data

    def write_stack(self, data: dict[str, Any]) -> None:
        self.stack_file.write_text(yaml.safe_dump(data, sort_keys=False))

    def backup(
        self, conf: dict[str, Any], *env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        return self.deployment.dags_test(conf, self.env, *env, dag_id="demo__backup")

    def restore(
        self, conf: dict[str, Any], *env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        conf = {"confirm": "demo", **conf}
        return self.deployment.dags_test(conf, self.env, *env, dag_id="demo__restore")

    def manifests(self, root: Path | None = None) -> list[dict[str, Any]]:
        root = root or self.local
        found = [json.loads(p.read_text()) for p in sorted(root.glob("*/manifest.json"))]
        return sorted(found, key=lambda m: m["backup_id"])

    def s3_manifest_ids(self) -> set[str]:
        client = self.s3.client()
        keys = [
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=f"{S3_PREFIX}demo/"
            )
            for obj in page.get("Contents", [])
        ]
        return {key.split("/")[-2] for key in keys if key.endswith("/manifest.json")}


def _redis(deployment: DemoDeployment) -> Any:
    import redis

    conn = json.loads(deployment.env["AIRFLOW_CONN_DEMO_REDIS"])
    return redis.Redis(host="127.0.0.1", port=conn["port"], password=conn["password"])


def _quiet(digests: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """The tables no running service writes to (the worker appends to worker_events)."""
    return {table: digest for table, digest in digests.items() if table != "public.worker_events"}


def _out(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def setup(
    deployment: DemoDeployment, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackupSetup]:
    """The e2e stack file with a local and an S3 destination of its own."""
    deployment.ensure_deployed()
    s3_server.create_bucket(BUCKET)
    local = tmp_path_factory.mktemp("backups") / "local"
    stack_file = deployment.stacks / "demo.yaml"
    original = stack_file.read_text()
    data = yaml.safe_load(original)
    data["backup"]["local_dir"] = str(local)
    data["backup"]["s3"] = {"conn_id": "opsflow_e2e_s3", "bucket": BUCKET, "prefix": S3_PREFIX}
    setup = BackupSetup(
        deployment=deployment,
        s3=s3_server,
        local=local,
        stack_file=stack_file,
        env={"AIRFLOW_CONN_OPSFLOW_E2E_S3": s3_server.connection()},
    )
    setup.write_stack(data)
    try:
        yield setup
    finally:
        stack_file.write_text(original)


@dataclass
class GoodBackup:
    backup_id: str
    digests: dict[str, tuple[int, str]]
    redis_marker: str


@pytest.fixture(scope="module")
def good_backup(setup: BackupSetup) -> GoodBackup:
    """One full, verified backup taken while the writers are quiet, with its source digests."""
    deployment = setup.deployment
    marker = f"marker-{time.time_ns()}"
    _redis(deployment).set("opsflow:e2e:marker", marker)
    deployment.compose("stop", "worker")
    try:
        digests = table_digests(deployment)
        result = setup.backup({})
        assert result.returncode == 0, _out(result)[-6000:]
    finally:
        deployment.compose("start", "worker")
    manifest = setup.manifests()[-1]
    return GoodBackup(manifest["backup_id"], digests, marker)


# ---------------------------------------------------------------------------- round trip


def test_backup_is_verified_and_published_locally_and_offsite(
    setup: BackupSetup, good_backup: GoodBackup
) -> None:
    manifest = setup.manifests()[-1]
    assert manifest["backup_id"] == good_backup.backup_id
    assert manifest["status"] == "verified"
    by_name = {source["name"]: source for source in manifest["sources"]}
    assert set(by_name) == {"app_db", "cache", "config"}
    for source in by_name.values():
        assert source["verification"]["status"] == "passed", source
    fingerprint = by_name["app_db"]["fingerprint"]["tables"]
    assert fingerprint["public.items"]["rows"] == good_backup.digests["public.items"][0]
    assert by_name["cache"]["fingerprint"]["keys"] >= 1

    backup_dir = setup.local / good_backup.backup_id
    assert backup_dir.stat().st_mode & 0o777 == 0o700
    for path in backup_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    artifacts = {a["name"] for s in manifest["sources"] for a in s["artifacts"]}
    assert artifacts | {"manifest.json"} == {p.name for p in backup_dir.iterdir()}

    assert good_backup.backup_id in setup.s3_manifest_ids()
    client = setup.s3.client()
    for name in artifacts | {"manifest.json"}:
        key = f"{S3_PREFIX}demo/{good_backup.backup_id}/{name}"
        assert client.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
    assert manifest["destinations"]["s3"]["status"] == "verified"
    assert not list((setup.local / ".staging").glob("*")), "staging left behind"


def test_restore_into_another_database_equals_the_source(
    setup: BackupSetup, good_backup: GoodBackup
) -> None:
    result = setup.restore(
        {
            "backup_id": good_backup.backup_id,
            "sources": ["app_db"],
            "target_database": "restored_copy",
        }
    )
    assert result.returncode == 0, _out(result)[-6000:]
    assert table_digests(setup.deployment, "restored_copy") == good_backup.digests


def test_restore_into_the_live_stack_brings_the_data_back(
    setup: BackupSetup, good_backup: GoodBackup
) -> None:
    deployment = setup.deployment
    with demo_pg(deployment) as conn:
        conn.execute("DELETE FROM items")
        conn.execute("INSERT INTO items (name) VALUES ('damage')")
    _redis(deployment).delete("opsflow:e2e:marker")
    manifests_before = len(setup.manifests())

    result = setup.restore({"backup_id": good_backup.backup_id, "sources": ["app_db", "cache"]})
    out = _out(result)
    assert result.returncode == 0, out[-6000:]

    # Every table is back as it was, except what the worker wrote since it started again.
    assert _quiet(table_digests(deployment)) == _quiet(good_backup.digests)
    assert _redis(deployment).get("opsflow:e2e:marker") == good_backup.redis_marker.encode()
    # The state that was overwritten is kept as a pre-restore backup.
    pre = [m for m in setup.manifests() if m["trigger"] == "pre-restore"]
    assert len(setup.manifests()) == manifests_before + 1 and pre
    damaged = pre[-1]["sources"][0]["fingerprint"]["tables"]["public.items"]
    assert damaged["rows"] == 1
    # Writers run again and the stack is healthy.
    assert deployment.get("/health/ready")[0] == 200
    running = deployment.compose("ps", "--status", "running", "--services").split()
    assert {"api", "worker", "postgres", "redis"} <= set(running)


def test_dry_run_changes_nothing(setup: BackupSetup, good_backup: GoodBackup) -> None:
    before = {p.name for p in setup.local.iterdir()}
    result = setup.backup({"dry_run": True})
    out = _out(result)
    assert result.returncode == 0, out[-6000:]
    assert "would dump app_db" in out
    assert {p.name for p in setup.local.iterdir()} == before


# ---------------------------------------------------------------------------- faults


@dataclass
class FaultWatch:
    """What every fault test asserts: failed run, no new manifest, good backup kept, alert."""

    setup: BackupSetup
    good: GoodBackup
    receiver: HttpCapture
    local_before: list[str]
    s3_before: set[str]

    def assert_guarantees(self, result: subprocess.CompletedProcess[str], failed_task: str) -> str:
        out = _out(result)
        assert result.returncode != 0, out[-6000:]
        assert [m["backup_id"] for m in self.setup.manifests()] == self.local_before
        assert self.setup.s3_manifest_ids() == self.s3_before
        good_dir = self.setup.local / self.good.backup_id
        assert (good_dir / "manifest.json").is_file(), "the good backup was touched"
        assert self.good.backup_id in self.s3_before
        staging = self.setup.local / ".staging"
        assert not staging.exists() or not any(staging.iterdir()), "staging left behind"
        alerts = [
            body for body in self.receiver.json_bodies() if body.get("task_id") == failed_task
        ]
        assert alerts, (failed_task, self.receiver.json_bodies())
        return out


@pytest.fixture
def faults(setup: BackupSetup, good_backup: GoodBackup, http_receiver: HttpCapture) -> FaultWatch:
    return FaultWatch(
        setup,
        good_backup,
        http_receiver,
        [m["backup_id"] for m in setup.manifests()],
        setup.s3_manifest_ids(),
    )


@pytest.fixture(scope="module")
def bulk_table(setup: BackupSetup) -> Iterator[None]:
    """~150 MB of poorly compressible rows, so a dump takes long enough to be hit."""
    with demo_pg(setup.deployment) as conn:
        conn.execute("DROP TABLE IF EXISTS bulk")
        conn.execute(
            "CREATE TABLE bulk AS SELECT g AS id, md5(random()::text) || md5(random()::text) "
            "AS payload FROM generate_series(1, 2000000) AS g"
        )
    try:
        yield
    finally:
        with demo_pg(setup.deployment) as conn:
            conn.execute("DROP TABLE IF EXISTS bulk")


def _pg_dumps_of(port: int) -> list[int]:
    """pg_dump processes talking to this test's server (they get the port through PGPORT)."""
    found = subprocess.run(["pgrep", "-x", "pg_dump"], capture_output=True, text=True)
    mine = []
    for pid in map(int, found.stdout.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PGPORT={port}".encode() in environ:
            mine.append(pid)
    return mine


def _kill_pg_dump_when_streaming(staging: Path, port: int, stop: threading.Event) -> list[int]:
    """SIGKILL this test's pg_dump whenever its partial artifact has data (every attempt:
    the dump task is retried once, and the retry must die the same way)."""
    killed: list[int] = []
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        parts = [p for p in staging.glob("*/.app_db.pgdump.zst.part") if p.stat().st_size > 0]
        for pid in _pg_dumps_of(port) if parts else []:
            if pid not in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.01)
    return killed


def test_pg_dump_killed_mid_stream_publishes_nothing(
    faults: FaultWatch, bulk_table: None, smtp_server: SmtpCapture
) -> None:
    stop = threading.Event()
    killed: list[int] = []
    port = json.loads(faults.setup.deployment.env["AIRFLOW_CONN_DEMO_POSTGRES"])["port"]
    staging = faults.setup.local / ".staging"
    watcher = threading.Thread(
        target=lambda: killed.extend(_kill_pg_dump_when_streaming(staging, port, stop))
    )
    watcher.start()
    try:
        result = faults.setup.backup(
            {"sources": ["app_db"]}, alert_connections(smtp_server, faults.receiver)
        )
    finally:
        stop.set()
        watcher.join()
    assert len(killed) >= 2, "pg_dump was not seen streaming in both attempts"
    out = faults.assert_guarantees(result, "app_db.dump")
    assert "pg_dump was killed by signal 9" in out


def test_local_disk_full_publishes_nothing(
    faults: FaultWatch, bulk_table: None, smtp_server: SmtpCapture, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        service_unavailable("mounting a small tmpfs needs root")
    setup = faults.setup
    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    original = setup.stack()
    try:
        data = setup.stack()
        data["backup"]["local_dir"] = str(small)
        setup.write_stack(data)
        result = setup.backup(
            {"sources": ["app_db"]}, alert_connections(smtp_server, faults.receiver)
        )
        out = _out(result)
        assert result.returncode != 0, out[-6000:]
        assert "disk full" in out
        assert not list(small.glob("*/manifest.json"))
        assert not any((small / ".staging").iterdir()) if (small / ".staging").exists() else True
        assert [b for b in faults.receiver.json_bodies() if b.get("task_id") == "app_db.dump"]
    finally:
        setup.write_stack(original)
        subprocess.run(["umount", str(small)], check=False)
    # The real destination saw nothing of it and keeps the good backup.
    assert [m["backup_id"] for m in setup.manifests()] == faults.local_before


def test_dump_client_older_than_the_server_is_refused(
    faults: FaultWatch, smtp_server: SmtpCapture
) -> None:
    if not (OLD_PG_CLIENT / "pg_dump").exists():
        service_unavailable(f"old PostgreSQL client missing at {OLD_PG_CLIENT} (make setup)")
    setup = faults.setup
    original = setup.stack()
    try:
        data = setup.stack()
        data["backup"]["sources"]["postgres"][0]["client_bin_dir"] = str(OLD_PG_CLIENT)
        setup.write_stack(data)
        result = setup.backup(
            {"sources": ["app_db"]}, alert_connections(smtp_server, faults.receiver)
        )
    finally:
        setup.write_stack(original)
    out = faults.assert_guarantees(result, "app_db.dump")
    assert "13" in out and "older than the server" in out


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_artifact_is_refused_before_anything_is_touched(
    setup: BackupSetup,
    good_backup: GoodBackup,
    http_receiver: HttpCapture,
    smtp_server: SmtpCapture,
    damage: str,
) -> None:
    # A backup of its own, so the good one stays good for the other tests.
    result = setup.backup({"sources": ["app_db"], "verify": False})
    assert result.returncode == 0 or "stale" in _out(result), _out(result)[-6000:]
    victim = setup.manifests()[-1]
    artifact = setup.local / victim["backup_id"] / "app_db.pgdump.zst"
    if damage == "flipped byte":
        _flip_byte(artifact)
    else:
        with artifact.open("r+b") as handle:
            handle.truncate(artifact.stat().st_size // 2)
    live_before = table_digests(setup.deployment)

    result = setup.restore(
        {"backup_id": victim["backup_id"], "sources": ["app_db"]},
        alert_connections(smtp_server, http_receiver),
    )
    out = _out(result)
    assert result.returncode != 0, out[-6000:]
    assert "app_db.pgdump.zst" in out
    assert ("truncated" if damage == "truncated" else "sha256") in out
    assert [b for b in http_receiver.json_bodies() if b.get("task_id") == "plan"]
    assert _quiet(table_digests(setup.deployment)) == _quiet(live_before)


def test_a_restore_stopped_in_plan_records_the_running_release_and_the_backup(
    setup: BackupSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opsflow.releases.ledger import Ledger

    monkeypatch.setenv("OPSFLOW_STATE_DIR", setup.deployment.env["OPSFLOW_STATE_DIR"])
    current = Ledger("demo").current()
    assert current is not None, "the e2e stack was deployed through the ledger"
    missing = "20000101T000000Z-000000"

    result = setup.restore({"backup_id": missing, "sources": ["app_db"]})
    out = _out(result)
    assert result.returncode != 0, out[-6000:]
    assert f"no usable backup {missing!r} of demo" in out
    restores = [e for e in Ledger("demo").entries() if e.action == "restore"]
    entry = restores[-1]
    assert (entry.version, entry.backup_id) == (current.version, missing), entry
    assert (entry.outcome, entry.failed_task) == ("failed", "plan")


def test_s3_failing_mid_upload_publishes_no_offsite_manifest(
    faults: FaultWatch, bulk_table: None, smtp_server: SmtpCapture
) -> None:
    setup = faults.setup
    proxy = CuttingProxy(
        upstream_port=int(setup.s3.endpoint_url.rsplit(":", 1)[1]), limit=4 * 1024 * 1024
    )
    port = proxy.start()
    cut = {"AIRFLOW_CONN_OPSFLOW_E2E_S3": setup.s3.connection(f"http://127.0.0.1:{port}")}
    try:
        result = setup.backup(
            {"sources": ["app_db"], "verify": False},
            cut,
            alert_connections(smtp_server, faults.receiver),
        )
    finally:
        proxy.close()
    out = _out(result)
    assert result.returncode != 0, out[-6000:]
    assert proxy.cuts > 0
    assert "s3 store: uploading app_db.pgdump.zst" in out
    assert setup.s3_manifest_ids() == faults.s3_before
    # The local copy is a good backup and stays; its manifest says the offsite copy failed.
    new = [m for m in setup.manifests() if m["backup_id"] not in faults.local_before]
    assert len(new) == 1 and new[0]["destinations"]["s3"]["status"] == "failed"
    assert (setup.local / faults.good.backup_id / "manifest.json").is_file()
    assert faults.good.backup_id in setup.s3_manifest_ids()
    assert [b for b in faults.receiver.json_bodies() if b.get("task_id") == "publish"]


def test_stale_backups_fail_the_run_and_alert(faults: FaultWatch, smtp_server: SmtpCapture) -> None:
    setup = faults.setup
    original = setup.stack()
    try:
        data = setup.stack()
        data["backup"]["max_age"] = "1s"
        setup.write_stack(data)
        result = setup.backup(
            {"sources": ["config"]}, alert_connections(smtp_server, faults.receiver)
        )
    finally:
        setup.write_stack(original)
    out = _out(result)
    assert result.returncode != 0, out[-6000:]
    assert "app_db: newest verified backup" in out and "(max 1s)" in out
    assert [b for b in faults.receiver.json_bodies() if b.get("task_id") == "freshness"]
