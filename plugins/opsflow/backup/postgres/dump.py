"""``pg_dump -Fc`` of one database in an exported snapshot, with its fingerprint.

One connection opens a REPEATABLE READ transaction and exports its snapshot; ``pg_dump
--snapshot`` dumps exactly that snapshot while the same transaction computes the
fingerprint, concurrently with the dump. The fingerprint therefore describes the dumped
state, whatever is written meanwhile. Sequences are not transactional: their values are
read right after the export, before ``pg_dump`` reads them, so a restored sequence may be
ahead of the fingerprint, never behind. ``pg_dump -Z0`` streams into ``zstd -T0`` (much
faster than pg_dump's zlib).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import BackupError, SourceBackup, now_iso
from opsflow.backup.postgres.client import (
    check_client,
    client_env,
    connect,
    find_client,
    server_major,
    server_version,
)
from opsflow.backup.postgres.fingerprint import (
    LOCK_WAIT_MS,
    apply_session_settings,
    count_large_objects,
    read_sequences,
    summarize,
    table_checksum,
    user_tables,
)
from opsflow.connections import Endpoint

if TYPE_CHECKING:
    from opsflow.stack.model import PostgresSource


def dump_postgres(
    source: PostgresSource,
    endpoint: Endpoint,
    ctx: RunContext,
    *,
    on_snapshot: Callable[[str], None] | None = None,
) -> SourceBackup:
    """``pg_dump -Fc`` of ``source.database`` into ``<name>.pgdump.zst``, with its fingerprint.

    ``on_snapshot`` (a test seam) is called with the snapshot id after the export and before
    pg_dump starts: what it writes must appear in neither the dump nor the fingerprint.
    """
    import psycopg

    started = now_iso()
    clock = time.monotonic()
    client = find_client(source.client_bin_dir)
    dest = ctx.staging / f"{source.name}.pgdump.zst"
    ctx.staging.mkdir(parents=True, exist_ok=True)
    conn = connect(endpoint, source.database)
    try:
        num, version = server_version(conn)
        conn.rollback()
        check_client(client, num, version)
        if source.major_version and source.major_version != server_major(num):
            ctx.log.info(
                "%s: the stack file says PostgreSQL %s but the server runs %s",
                source.name, source.major_version, version,
            )  # fmt: skip
        ctx.log.info(
            "%s: dumping database %s (PostgreSQL %s) with pg_dump %s",
            source.name, source.database, version, client.version,
        )  # fmt: skip
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        apply_session_settings(conn)
        row = conn.execute(
            "SELECT pg_export_snapshot(), pg_database_size(current_database())"
        ).fetchone()
        assert row is not None
        snapshot, size = str(row[0]), int(row[1])
        # Sequences first: pg_dump reads them later, so it can only be ahead of us.
        sequences = read_sequences(conn)
        if on_snapshot is not None:
            on_snapshot(snapshot)
        tables: dict[str, dict[str, Any]] = {}
        failed: list[BaseException] = []

        def fingerprint_tables() -> None:
            try:
                for schema, name, key in user_tables(conn):
                    tables[key] = table_checksum(conn, schema, name)
            except BaseException as err:
                failed.append(err)
                ctx.pipeline.terminate()  # no point finishing a dump we cannot verify

        argv = [
            client.tool("pg_dump"), "--format=custom", "--compress=0",
            f"--snapshot={snapshot}", f"--lock-wait-timeout={LOCK_WAIT_MS}", "--no-password",
        ]  # fmt: skip
        worker = threading.Thread(target=fingerprint_tables, name="pg-fingerprint", daemon=True)
        worker.start()
        try:
            artifact = ctx.pipeline.compress_to_file(
                dest, level=ctx.level, argv=argv, env=client_env(endpoint, source.database)
            )
        except BaseException:
            cause = failed[0] if failed else None  # the fingerprint stopped the dump
            if worker.is_alive():
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=10)
            worker.join(timeout=60)
            if cause is not None:
                raise BackupError(f"{source.name}: fingerprint failed: {cause}") from None
            raise
        worker.join()
        if failed:
            dest.unlink(missing_ok=True)
            raise BackupError(f"{source.name}: fingerprint failed: {failed[0]}") from None
        large_objects = count_large_objects(conn)
        conn.rollback()  # ends the snapshot; nothing was written
    finally:
        conn.close()
    table_count, rows = summarize(tables)
    ctx.log.info(
        "%s: dumped %d tables, %d rows, %d sequences in %.1fs (database %.1f MB, artifact %.1f MB)",
        source.name, table_count, rows, len(sequences), time.monotonic() - clock,
        size / 1e6, artifact.size / 1e6,
    )  # fmt: skip
    return SourceBackup(
        name=source.name,
        kind="postgres",
        artifacts=[artifact],
        started_at=started,
        ended_at=now_iso(),
        tool_version=f"pg_dump {client.version}",
        server_version=version,
        fingerprint={
            "tables": dict(sorted(tables.items())),
            "sequences": sequences,
            "large_objects": large_objects,
            # Not compared: sizes the scratch server's tmpfs.
            "database_bytes": size,
        },
    )
