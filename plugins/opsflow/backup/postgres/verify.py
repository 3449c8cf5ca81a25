"""Verification of a PostgreSQL backup: restore it into a scratch server and compare the
restored copy's fingerprint with the dump's.

The scratch server runs on a tmpfs with durability off and ``wal_level=minimal``, so a
``--single-transaction`` restore skips WAL for the table data; the fingerprint of the copy
spreads over several connections, since nobody else writes to it.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsflow.backup.context import RunContext
from opsflow.backup.files import single_artifact
from opsflow.backup.manifest import BackupError, SourceBackup, Verification, conclude, now_iso
from opsflow.backup.postgres.client import (
    check_client,
    client_env,
    connect,
    dbname_arg,
    find_client,
    params,
    server_major,
    server_version,
    version_major,
)
from opsflow.backup.postgres.fingerprint import (
    compare_fingerprints,
    fingerprint_parallel,
    summarize,
)
from opsflow.backup.stream import check_artifact
from opsflow.connections import Endpoint

if TYPE_CHECKING:
    from opsflow.backup.scratch import ScratchContainer

CONTAINER_PORT = 5432


# The scratch server's data directory: a tmpfs at a path absent from the image (Docker
# copies the mode and owner of an existing directory onto the tmpfs), cluster in a subdir.
SCRATCH_TMPFS = "/opsflow-pgdata"
SCRATCH_USER = "opsflow"
SCRATCH_DB = "restore"


# Durability is worthless on a server that lives for one verification.
SCRATCH_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
    "autovacuum": "off",
    "maintenance_work_mem": "256MB",
    # --single-transaction holds a lock per restored object until the end.
    "max_locks_per_transaction": "1024",
}


def tmpfs_bytes(database_bytes: int) -> int | None:
    """A tmpfs big enough for the restore if it fits comfortably in free memory, else None."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    if not match:
        return None
    available = int(match.group(1)) * 1024
    wanted = max(database_bytes, 1) * 2 + (512 << 20)
    return wanted if wanted < available // 2 else None


def _start_scratch(
    image: str, ctx: RunContext, password: str, database_bytes: int
) -> tuple[ScratchContainer, bool]:
    from opsflow.backup.scratch import start_scratch

    tmpfs_size = tmpfs_bytes(database_bytes)
    environment = {
        "POSTGRES_PASSWORD": password,
        "POSTGRES_USER": SCRATCH_USER,
        "POSTGRES_DB": SCRATCH_DB,
    }
    tmpfs: dict[str, str] = {}
    if tmpfs_size is not None:
        environment["PGDATA"] = f"{SCRATCH_TMPFS}/pgdata"
        tmpfs[SCRATCH_TMPFS] = f"rw,nosuid,nodev,mode=1777,size={tmpfs_size // (1 << 20)}m"
    command: list[str] = []
    for name, value in SCRATCH_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    container = start_scratch(
        image, label=ctx.scratch_label, role="postgres", container_port=CONTAINER_PORT,
        environment=environment, command=command, tmpfs=tmpfs,
    )  # fmt: skip
    ctx.log.info(
        "scratch PostgreSQL %s from %s on 127.0.0.1:%d (%s)",
        container.name, image, container.port,
        f"tmpfs {tmpfs_size // (1 << 20)} MB" if tmpfs_size else "data on the container's disk",
    )  # fmt: skip
    return container, tmpfs_size is not None


def _scratch_endpoint(container: ScratchContainer, password: str) -> Endpoint:
    return Endpoint(host=container.host, port=container.port, login=SCRATCH_USER, password=password)


def _wait_ready(container: ScratchContainer, password: str, timeout: float) -> tuple[int, str]:
    """Poll until the server accepts a login; the container's logs explain a timeout or exit."""
    import psycopg

    kwargs = (
        params(_scratch_endpoint(container, password), SCRATCH_DB)
        .with_settings(connect_timeout=3)
        .connect_kwargs()
    )
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with psycopg.connect(**kwargs, autocommit=True) as conn:
                return server_version(conn)
        except psycopg.Error as err:
            last = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        code = container.exit_code()
        if code is not None:
            raise BackupError(
                f"scratch PostgreSQL {container.name} exited with {code} "
                f"before accepting connections; its log:\n{container.logs()}"
            )
        if time.monotonic() > deadline:
            raise BackupError(
                f"scratch PostgreSQL {container.name} not ready after {timeout:.0f}s "
                f"(last error: {last}); its log:\n{container.logs()}"
            )
        time.sleep(0.2)


def verify_postgres(
    backup: SourceBackup,
    artifact_dir: Path,
    image: str,
    ctx: RunContext,
    timeout: float = 120,
    *,
    client_bin_dir: str | None = None,
) -> Verification:
    """Restore into a scratch server from ``image`` and compare with the dump's fingerprint.

    A bad artifact or a failing restore is a *failed* verification; a missing image, a
    scratch server that does not start or has another major version raise BackupError.
    """
    from opsflow.backup.stream import ArtifactCorrupt

    clock = time.monotonic()
    artifact = single_artifact(backup)
    path = artifact_dir / artifact.name
    client = find_client(client_bin_dir)
    dumped_major = version_major(backup.server_version)
    password = secrets.token_urlsafe(24)
    database_bytes = int(backup.fingerprint.get("database_bytes", 1 << 30))
    start_clock = time.monotonic()
    container, on_tmpfs = _start_scratch(image, ctx, password, database_bytes)
    details: dict[str, Any] = {"image": image, "tmpfs": on_tmpfs}

    def failed(message: str) -> Verification:
        ctx.log.info("%s: verification FAILED: %s", backup.name, message)
        return Verification(
            status="failed", checked_at=now_iso(), seconds=round(time.monotonic() - clock, 2),
            differences=[message], details=details,
        )  # fmt: skip

    try:
        # Checked while the server initialises: a bad artifact costs no restore.
        try:
            check_artifact(path, artifact)
        except ArtifactCorrupt as err:
            return failed(str(err))
        num, version = _wait_ready(container, password, timeout)
        details["startup_seconds"] = round(time.monotonic() - start_clock, 2)
        details["server_version"] = version
        if dumped_major is not None and server_major(num) != dumped_major:
            raise BackupError(
                f"{backup.name}: the scratch image {image} runs PostgreSQL {version} but the "
                f"backup comes from {backup.server_version}: set verify_image to a "
                f"PostgreSQL {dumped_major} image"
            )
        check_client(client, num, version)
        restore_clock = time.monotonic()
        argv = [
            client.tool("pg_restore"), "--single-transaction", "--exit-on-error",
            "--no-owner", "--no-privileges", "--no-tablespaces", "--no-subscriptions",
            "--no-password", dbname_arg(SCRATCH_DB),
        ]  # fmt: skip
        env = client_env(_scratch_endpoint(container, password), SCRATCH_DB)
        try:
            ctx.pipeline.decompress_file(path, artifact, argv=argv, env=env)
        except BackupError as err:  # ArtifactCorrupt included
            return failed(str(err))
        details["restore_seconds"] = round(time.monotonic() - restore_clock, 2)
        fp_clock = time.monotonic()
        scratch = _scratch_endpoint(container, password)
        try:
            actual = fingerprint_parallel(
                lambda: connect(scratch, SCRATCH_DB, autocommit=True),
                workers=min(4, os.cpu_count() or 1),
            )
        except Exception as err:
            raise BackupError(f"{backup.name}: fingerprint of the scratch server: {err}") from err
        details["fingerprint_seconds"] = round(time.monotonic() - fp_clock, 2)
    finally:
        container.remove()
    tables, rows = summarize(actual["tables"])
    details.update(tables=tables, rows=rows, sequences=len(actual["sequences"]))
    differences = compare_fingerprints(backup.fingerprint, actual)
    ctx.log.info("%s: %d tables, %d rows restored", backup.name, tables, rows)
    return conclude(backup.name, differences, details, clock, ctx.log)
