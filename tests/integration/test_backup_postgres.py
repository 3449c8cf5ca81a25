"""PostgreSQL backups against real servers: dump in an exported snapshot, verify by restoring
into a scratch container of the demo image, restore into the live or a new database.

The source is the host PostgreSQL 15 of the ``postgres_server`` fixture; each test gets its
own database with odd (quoted) names, NULLs, duplicates, a sequence and a few thousand rows.
Scratch servers run from opsflow-demo/postgres:15 (conftest's pg_image builds it when missing).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import BackupError, SourceBackup
from opsflow.backup.postgres.client import check_client, find_client
from opsflow.backup.postgres.dump import dump_postgres
from opsflow.backup.postgres.fingerprint import fingerprint
from opsflow.backup.postgres.restore import restore_postgres
from opsflow.backup.postgres.verify import verify_postgres
from opsflow.backup.stream import ArtifactCorrupt
from opsflow.connections import Endpoint
from opsflow.stack.model import PostgresSource
from support.backup import ListLog, consistent_artifact, flip_byte, scratch_containers
from support.servers import PostgresServer
from support.services import service_unavailable

pytestmark = pytest.mark.integration
BACKUP_ID = "20260101T000000Z-0f0f0f"
STACK = "pgtest"
OLD_CLIENT = Path("/opt/opsflow/pg-client-13/usr/lib/postgresql/13/bin")
ODD_TABLE = '"Odd Schema"."Mixed.Case ""quoted"" table"'


def _connect(server: PostgresServer, dbname: str, autocommit: bool = True) -> Any:
    import psycopg

    return psycopg.connect(
        host=server.host, port=server.port, user=server.user, password=server.password,
        dbname=dbname, autocommit=autocommit,
    )  # fmt: skip


def _endpoint(server: PostgresServer) -> Endpoint:
    return Endpoint(host=server.host, port=server.port, login=server.user, password=server.password)


def _source_fingerprint(server: PostgresServer, dbname: str) -> dict[str, Any]:
    import psycopg

    with _connect(server, dbname, autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return fingerprint(conn)


def _compared(backup: SourceBackup) -> dict[str, Any]:
    return {k: v for k, v in backup.fingerprint.items() if k != "database_bytes"}


def _databases(server: PostgresServer, prefix: str) -> list[str]:
    with _connect(server, "postgres") as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
    return [str(row[0]) for row in rows]


def _drop(server: PostgresServer, *names: str) -> None:
    from psycopg import sql

    with _connect(server, "postgres") as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


FILL = """
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Mixed.Case ""quoted"" table" (
    id int PRIMARY KEY, "select" text, "Weird Col" numeric, t text);
INSERT INTO "Odd Schema"."Mixed.Case ""quoted"" table"
    SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'v' || g END, g / 3.0, 'x'
    FROM generate_series(1, 1500) g;
CREATE TABLE items (
    id serial PRIMARY KEY, name text NOT NULL, price numeric(10, 2), seen timestamptz,
    tags text[], data jsonb, f float8, blob bytea, nothing text);
INSERT INTO items (name, price, seen, tags, data, f, blob)
    SELECT 'item ' || g, g * 1.25, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 min',
           ARRAY['a', 'b' || g], jsonb_build_object('n', g, 'odd', g % 2 = 1),
           CASE WHEN g % 5 = 0 THEN NULL ELSE g / 7.0 END, decode(md5(g::text), 'hex')
    FROM generate_series(1, 3000) g;
CREATE TABLE dups (a int, b text);
INSERT INTO dups VALUES (1, 'same'), (1, 'same'), (2, NULL), (2, NULL), (2, NULL);
CREATE TABLE empty_one (id int);
CREATE SEQUENCE counter START 100;
SELECT nextval('counter') FROM generate_series(1, 5);
"""


@contextmanager
def _database(server: PostgresServer, prefix: str, fill: str) -> Iterator[str]:
    """A new database filled by ``fill``; it and every database named after it go afterwards."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    with _connect(server, "postgres") as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with _connect(server, name) as conn:
            conn.execute(fill)
        yield name
    finally:
        _drop(server, *_databases(server, name))


@pytest.fixture
def source_db(postgres_server: PostgresServer) -> Iterator[str]:
    with _database(postgres_server, "opsflow_src", FILL) as name:
        yield name


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[RunContext]:
    """A run context; after the test, no scratch container of its label may be left."""
    staging = tmp_path / "staging"
    staging.mkdir()
    context = RunContext(stack=STACK, backup_id=BACKUP_ID, staging=staging, log=ListLog())
    yield context
    if shutil.which("docker"):
        left = scratch_containers(f"{STACK}.{BACKUP_ID}")
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
        assert left == [], f"scratch containers left behind: {left}"


def _source(name: str, **kwargs: Any) -> PostgresSource:
    return PostgresSource(name="db", conn_id="demo_db", database=name, **kwargs)


# ---------------------------------------------------------------------------------- dump + verify


def test_round_trip_verifies_and_fingerprint_matches_the_source(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext, pg_image: str
) -> None:
    backup = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)

    artifact = ctx.staging / "db.pgdump.zst"
    assert [a.name for a in backup.artifacts] == ["db.pgdump.zst"]
    assert sorted(p.name for p in ctx.staging.iterdir()) == ["db.pgdump.zst"]  # no .part
    assert artifact.stat().st_mode & 0o777 == 0o600
    assert backup.kind == "postgres" and backup.tool_version.startswith("pg_dump 15")
    assert backup.server_version.startswith("15")
    assert _compared(backup) == _source_fingerprint(postgres_server, source_db)
    tables = backup.fingerprint["tables"]
    assert set(tables) == {ODD_TABLE, "public.items", "public.dups", "public.empty_one"}
    assert tables["public.items"]["rows"] == 3000 and tables["public.dups"]["rows"] == 5
    assert backup.fingerprint["sequences"]["public.counter"]["last_value"] == 104

    verification = verify_postgres(backup, ctx.staging, pg_image, ctx)

    assert verification.status == "passed", verification.differences
    assert verification.details["tables"] == 4
    assert verification.details["rows"] == 1500 + 3000 + 5
    assert verification.details["server_version"].startswith("15")
    log = "\n".join(ctx.log.lines)  # type: ignore[attr-defined]
    assert "4 tables, 4505 rows" in log
    assert postgres_server.password not in log


def test_tables_without_a_row_hash_fall_back_to_their_text(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext, pg_image: str
) -> None:
    with _connect(postgres_server, source_db) as conn:
        conn.execute("CREATE TABLE shapes (id int, doc json, at point)")
        conn.execute(
            "INSERT INTO shapes SELECT g, json_build_object('g', g), point(g, -g) "
            "FROM generate_series(1, 50) g"
        )
    backup = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)

    tables = backup.fingerprint["tables"]
    assert tables["public.shapes"]["checksum"].startswith("text:")  # json, point: no hash
    assert tables["public.items"]["checksum"].startswith("record:")
    assert _compared(backup) == _source_fingerprint(postgres_server, source_db)
    verification = verify_postgres(backup, ctx.staging, pg_image, ctx)
    assert verification.status == "passed", verification.differences


def test_rows_written_after_the_snapshot_are_neither_fingerprinted_nor_dumped(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext, pg_image: str
) -> None:
    before = _source_fingerprint(postgres_server, source_db)
    snapshots: list[str] = []

    def write_meanwhile(snapshot: str) -> None:
        """Runs after the export, before pg_dump starts: committed, yet after the snapshot."""
        snapshots.append(snapshot)
        with _connect(postgres_server, source_db) as other:
            other.execute(
                "INSERT INTO items (name) SELECT 'late ' || g FROM generate_series(1, 50) g"
            )
            other.execute(
                'UPDATE "Odd Schema"."Mixed.Case ""quoted"" table" '
                "SET \"select\" = 'changed' WHERE id = 1"
            )
            other.execute("DELETE FROM dups WHERE a = 2")
            other.execute("CREATE TABLE created_late (id int)")

    backup = dump_postgres(
        _source(source_db), _endpoint(postgres_server), ctx, on_snapshot=write_meanwhile
    )

    assert snapshots and _source_fingerprint(postgres_server, source_db) != before
    assert backup.fingerprint["tables"] == before["tables"]
    verification = verify_postgres(backup, ctx.staging, pg_image, ctx)
    assert verification.status == "passed", verification.differences
    # The restored content itself: none of the late writes.
    copy = f"{source_db}_copy"
    restore_postgres(backup, ctx.staging / "db.pgdump.zst", _endpoint(postgres_server), copy, ctx)
    with _connect(postgres_server, copy) as conn:
        late = conn.execute("SELECT count(*) FROM items WHERE name LIKE 'late %'").fetchone()
        dups = conn.execute("SELECT count(*) FROM dups WHERE a = 2").fetchone()
        first = conn.execute(
            'SELECT "select" FROM "Odd Schema"."Mixed.Case ""quoted"" table" WHERE id = 1'
        ).fetchone()
        created = conn.execute("SELECT to_regclass('created_late')").fetchone()
    assert (late, dups, first, created) == ((0,), (3,), ("v1",), (None,))


def test_a_restore_that_differs_fails_and_names_the_table(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext, pg_image: str, tmp_path: Path
) -> None:
    original = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)
    with _connect(postgres_server, source_db) as conn:
        conn.execute(
            'UPDATE "Odd Schema"."Mixed.Case ""quoted"" table" SET "Weird Col" = 0 WHERE id = 42'
        )
        conn.execute("DELETE FROM items WHERE id = 7")
    other = RunContext(STACK, BACKUP_ID, tmp_path / "other", ListLog())
    other.staging.mkdir()
    modified = dump_postgres(_source(source_db), _endpoint(postgres_server), other)
    # The modified dump presented with the original's fingerprint, plus a table and a
    # sequence position the restore cannot have.
    expected = dict(original.fingerprint)
    expected["tables"] = {**expected["tables"], "public.vanished": {"rows": 3, "checksum": "1"}}
    counter = {**expected["sequences"]["public.counter"], "last_value": 500}
    expected["sequences"] = {**expected["sequences"], "public.counter": counter}
    forged = replace(modified, fingerprint=expected)

    verification = verify_postgres(forged, other.staging, pg_image, ctx)

    assert verification.status == "failed"
    text = "\n".join(verification.differences)
    assert f"table {ODD_TABLE}: content checksum differs" in text
    assert "table public.items: 2999 rows restored, 3000 expected" in text
    assert "table public.vanished: missing after restore" in text
    assert "sequence public.counter: restored at 104" in text
    assert len(verification.differences) == 4


def test_flipped_byte_truncation_and_garbage_fail_verification(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext, pg_image: str
) -> None:
    backup = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)
    path = ctx.staging / "db.pgdump.zst"
    good = path.read_bytes()

    path.write_bytes(flip_byte(good, 100, 0x01))
    flipped = verify_postgres(backup, ctx.staging, pg_image, ctx)
    path.write_bytes(good[: len(good) // 2])
    truncated = verify_postgres(backup, ctx.staging, pg_image, ctx)

    assert flipped.status == "failed" and truncated.status == "failed"
    assert "artifact db.pgdump.zst: sha256" in flipped.differences[0]
    assert "db.pgdump.zst" in truncated.differences[0]
    assert "(truncated)" in truncated.differences[0]

    # A file matching its manifest entry that is no pg_dump archive: pg_restore refuses.
    path.unlink()
    fake = consistent_artifact(ctx, path, b"PGDMP but not really an archive\n" * 10, level=3)
    garbage = replace(backup, artifacts=[fake])
    refused = verify_postgres(garbage, ctx.staging, pg_image, ctx)
    assert refused.status == "failed"
    assert "pg_restore exited with 1" in refused.differences[0], refused.differences


# ---------------------------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def big_db(postgres_server: PostgresServer) -> Iterator[str]:
    """~100 MB in one table: pg_dump streams it for well over the time the test needs."""
    fill = (
        "CREATE TABLE blobs AS SELECT g AS id, repeat(md5(g::text), 9) AS body "
        "FROM generate_series(1, 330000) g"
    )
    with _database(postgres_server, "opsflow_big", fill) as name:
        yield name


def _child_pids(name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if comm == name and ppid == os.getpid():
            found.append(int(stat.parent.name))
    return found


def test_pg_dump_killed_mid_stream_leaves_no_artifact(
    postgres_server: PostgresServer, big_db: str, ctx: RunContext
) -> None:
    outcome: list[BaseException | SourceBackup] = []

    def run() -> None:
        try:
            outcome.append(dump_postgres(_source(big_db), _endpoint(postgres_server), ctx))
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    part = ctx.staging / ".db.pgdump.zst.part"
    deadline = time.monotonic() + 30
    killed = False
    while not killed and time.monotonic() < deadline and thread.is_alive():
        pids = _child_pids("pg_dump")
        if pids and part.exists() and part.stat().st_size > 0:  # streaming, not starting
            os.kill(pids[0], signal.SIGKILL)
            killed = True
        time.sleep(0.01)
    thread.join(timeout=60)

    assert killed, f"pg_dump was never seen streaming: {outcome}"
    assert len(outcome) == 1 and isinstance(outcome[0], BackupError), outcome
    assert "pg_dump was killed by signal 9" in str(outcome[0])
    assert list(ctx.staging.iterdir()) == []


def test_a_client_older_than_the_server_is_refused(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext
) -> None:
    if not (OLD_CLIENT / "pg_dump").exists():
        service_unavailable(f"{OLD_CLIENT}/pg_dump missing (scripts/setup-old-pg-client.sh)")
    client = find_client(str(OLD_CLIENT))
    assert client.major == 13
    with _connect(postgres_server, source_db) as conn:
        num, version = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        ).fetchone()

    with pytest.raises(BackupError) as refused:
        check_client(client, num, version)
    message = str(refused.value)
    assert "PostgreSQL client 13." in message and f"PostgreSQL {version}" in message
    assert "postgresql-client-15" in message and "client_bin_dir" in message

    with pytest.raises(BackupError, match="client 13"):
        dump_postgres(
            _source(source_db, client_bin_dir=str(OLD_CLIENT)), _endpoint(postgres_server), ctx
        )
    assert list(ctx.staging.iterdir()) == []
    assert find_client(None).major >= 15  # the default is the newest installed


# ---------------------------------------------------------------------------------- restore


def test_restore_replaces_the_live_database(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext
) -> None:
    endpoint = _endpoint(postgres_server)
    with _connect(postgres_server, "postgres") as conn:
        conn.execute(f'ALTER DATABASE "{source_db}" SET search_path = app, "$user", public')
        conn.execute(f"ALTER DATABASE \"{source_db}\" SET work_mem = '8MB'")
        # Left by an earlier attempt that died mid-restore: a retry must cope.
        conn.execute(f'CREATE DATABASE "{source_db}__opsflow_restore"')
    backup = dump_postgres(_source(source_db), endpoint, ctx)
    with _connect(postgres_server, source_db) as conn:
        conn.execute("DELETE FROM items WHERE id > 100")
        conn.execute("DROP TABLE dups")
        conn.execute("CREATE TABLE added_later (x int)")
        conn.execute("SELECT setval('counter', 1000)")
    assert _source_fingerprint(postgres_server, source_db) != _compared(backup)
    idle = _connect(postgres_server, source_db)  # a session the swap must end

    report = restore_postgres(backup, ctx.staging / "db.pgdump.zst", endpoint, source_db, ctx)

    assert report["replaced"] is True and report["tables"] == 4 and report["rows"] == 4505
    assert _source_fingerprint(postgres_server, source_db) == _compared(backup)
    assert _databases(postgres_server, source_db) == [source_db]  # no side databases left
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="terminating connection"):
        idle.execute("SELECT 1")
    idle.close()
    with _connect(postgres_server, "postgres") as conn:
        settings = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = %s",
            (source_db,),
        ).fetchone()
    assert settings is not None
    assert sorted(settings[0]) == ['search_path=app, "$user", public', "work_mem=8MB"]


def test_restore_into_a_new_named_database(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext
) -> None:
    backup = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)
    target = f"{source_db} restored"

    report = restore_postgres(
        backup, ctx.staging / "db.pgdump.zst", _endpoint(postgres_server), target, ctx
    )

    assert report["replaced"] is False and report["rows"] == 4505
    assert _source_fingerprint(postgres_server, target) == _compared(backup)
    assert _source_fingerprint(postgres_server, source_db) == _compared(backup)


def test_restore_refuses_a_corrupt_artifact_and_leaves_the_live_database(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext
) -> None:
    backup = dump_postgres(_source(source_db), _endpoint(postgres_server), ctx)
    with _connect(postgres_server, source_db) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('after the backup')")
    live = _source_fingerprint(postgres_server, source_db)
    path = ctx.staging / "db.pgdump.zst"
    path.write_bytes(flip_byte(path.read_bytes()))

    with pytest.raises(ArtifactCorrupt, match=r"db\.pgdump\.zst: sha256"):
        restore_postgres(backup, path, _endpoint(postgres_server), source_db, ctx)

    # Intact file, but pg_restore fails on it: the side database goes, the live one stays.
    path.unlink()
    fake = consistent_artifact(ctx, path, b"not an archive\n" * 10, level=3)
    garbage = replace(backup, artifacts=[fake])
    with pytest.raises(BackupError, match="pg_restore exited with 1"):
        restore_postgres(garbage, path, _endpoint(postgres_server), source_db, ctx)

    assert _source_fingerprint(postgres_server, source_db) == live
    assert _databases(postgres_server, source_db) == [source_db]


def test_a_wrong_password_is_a_backup_error_without_artifact(
    postgres_server: PostgresServer, source_db: str, ctx: RunContext
) -> None:
    endpoint = replace(_endpoint(postgres_server), password="not-the-password")
    with pytest.raises(BackupError, match="cannot connect to PostgreSQL") as refused:
        dump_postgres(_source(source_db), endpoint, ctx)
    assert "not-the-password" not in str(refused.value)
    assert list(ctx.staging.iterdir()) == []
