"""The PostgreSQL state backend against a real server: its schema, expiry takeover, and
moving file ledgers in with ``python -m opsflow.state migrate-files``.

(The ledger and lock suites themselves run on it in tests/unit, parametrized.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from opsflow.releases.ledger import FileLedgerStore, Ledger, LedgerEntry
from opsflow.releases.lock import FileLockStore, LockHolder, StackLock
from opsflow.state.postgres import SCHEMA_VERSION, StateDatabaseProblem, migrate_schema
from support.servers import PostgresServer
from support.state_backends import connect, connection_json, fresh_database, use_postgres

pytestmark = pytest.mark.integration

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
TABLES = sorted(["opsflow_config_snapshot", "opsflow_legacy_release", "opsflow_ledger_entry",
                 "opsflow_schema", "opsflow_stack_lock"])  # fmt: skip


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    with fresh_database(postgres_server) as name:
        yield name


def tables(server: PostgresServer, dbname: str) -> list[str]:
    with connect(server, dbname) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return sorted(row[0] for row in rows)


# --------------------------------------------------------------------------- schema


def test_the_schema_is_created_once_and_migrating_again_changes_nothing(
    postgres_server: PostgresServer, database: str
) -> None:
    with connect(postgres_server, database) as conn:
        assert migrate_schema(conn) == [SCHEMA_VERSION]
        assert migrate_schema(conn) == []
        versions = conn.execute("SELECT version FROM opsflow_schema").fetchall()
    assert versions == [(SCHEMA_VERSION,)]
    assert tables(postgres_server, database) == TABLES


def _initialize(server: PostgresServer, dbname: str, start: Barrier, results: Queue[str]) -> None:
    start.wait(timeout=30)
    try:
        with connect(server, dbname) as conn:
            results.put(json.dumps(migrate_schema(conn)))
    except Exception as exc:
        results.put(f"raised {exc!r}")
        raise


def test_workers_initializing_at_once_create_the_schema_once(
    postgres_server: PostgresServer, database: str
) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    results: Queue[str] = context.Queue()
    processes = [
        context.Process(target=_initialize, args=(postgres_server, database, start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert outcomes == ["[1]", "[]", "[]", "[]"]
    with connect(postgres_server, database) as conn:
        assert conn.execute("SELECT count(*) FROM opsflow_schema").fetchone() == (1,)


def test_a_schema_newer_than_this_opsflow_is_refused(
    postgres_server: PostgresServer, database: str
) -> None:
    with connect(postgres_server, database) as conn:
        migrate_schema(conn)
        conn.execute("INSERT INTO opsflow_schema (version, description) VALUES (99, 'later')")
        with pytest.raises(StateDatabaseProblem, match="schema version 99, newer than the 1"):
            migrate_schema(conn)


# --------------------------------------------------------------------------- lock


def test_an_expired_lock_is_taken_over_in_the_database(
    postgres_server: PostgresServer, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_postgres(monkeypatch, postgres_server, database)
    stale = LockHolder.new("demo", "demo__upgrade", "run-1", timedelta(seconds=-1))
    assert StackLock("demo").acquire(stale, lambda _: None).acquired
    second = LockHolder.new("demo", "demo__rollback", "run-2", timedelta(hours=1))
    result = StackLock("demo").acquire(second, lambda _: None)  # the owner cannot be checked
    assert (result.acquired, result.holder) == (True, second)
    assert result.note == f"took over the expired lock of {stale.describe()}"
    # The old run's late unlock frees nothing: the lock is no longer its own.
    assert StackLock("demo").release("demo__upgrade", "run-1") == second
    with connect(postgres_server, database) as conn:
        row = conn.execute(
            "SELECT dag_id, run_id, expires_at > now() FROM opsflow_stack_lock WHERE stack = 'demo'"
        ).fetchone()
    assert row == ("demo__rollback", "run-2", True)
    assert StackLock("demo").release("demo__rollback", "run-2") is None
    assert StackLock("demo").holder() is None


# --------------------------------------------------------------------------- migrate-files


def _entry(entry_id: str, version: str, minute: int, **changes: Any) -> LedgerEntry:
    values: dict[str, Any] = {
        "entry_id": entry_id, "stack": "demo", "action": "deploy", "version": version,
        "run_id": f"run-{entry_id}", "dag_id": "demo__deploy", "triggered_by": "tester",
        "started_at": f"2026-01-02T03:{minute:02d}:00+00:00",
    }  # fmt: skip
    values.update(changes)
    return LedgerEntry(**values)


@pytest.fixture
def file_ledgers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two stacks' file state: newest states, a damaged line, a legacy releases.jsonl,
    config snapshots and a held lock."""
    root = tmp_path / "state"
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    monkeypatch.delenv("OPSFLOW_STATE_BACKEND", raising=False)
    book = Ledger("demo")
    book.write(_entry("e1", "1.0.0", 0))
    book.write(_entry("e1", "1.0.0", 0, outcome="succeeded", ended_at="2026-01-02T03:01:00Z"))
    with book.path.open("ab") as handle:
        handle.write(b"{damaged\n")
    book.write(_entry("e2", "1.1.0", 10, action="upgrade", from_version="1.0.0",
                      backup_id="b-1", outcome="failed", error="pull: \u0000 denied"))  # fmt: skip
    book.write(_entry("e3", "1.1.0", 20, action="upgrade", from_version="1.0.0"))
    legacy = root / "demo" / "releases.jsonl"
    legacy.write_text(
        json.dumps({"version": "0.9.0", "run_id": "old-1", "recorded_at": "2025-12-01T00:00:00",
                    "images": {"api": "demo/api:0.9.0"}})
        + "\n{cut short\n"
        + json.dumps({"version": "0.9.5", "run_id": "old-2",
                      "recorded_at": "2025-12-02T00:00:00+01:00"}) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    book.save_contents({"compose.yaml": b"services: {}\n", ".env": None})
    book.save_contents({"compose.yaml": b"services: {api: {}}\n", ".env": b"A=1\n"})
    owner = LockHolder.new("demo", "demo__upgrade", "run-e3", timedelta(hours=6))
    assert StackLock("demo").acquire(owner, lambda _: None).acquired
    shop = LedgerEntry(**{**_entry("s1", "2.0.0", 5).to_dict(), "stack": "shop"})
    Ledger("shop").write(shop)
    (root / "not-a-stack.d").mkdir()
    return root


def migrate(root: Path, server: PostgresServer, dbname: str, tmp_path: Path) -> tuple[int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(PLUGINS),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_CONN_OPSFLOW_STATE": connection_json(server, dbname),
    }
    env.pop("OPSFLOW_STATE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "opsflow.state", "migrate-files", "--state-dir", str(root)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert server.password not in done.stdout + done.stderr
    # The report, without the log lines Airflow's logging also writes to stdout.
    report = [line for line in done.stdout.splitlines() if not line[:4].isdigit()]
    return done.returncode, "\n".join(report)


def counts(server: PostgresServer, dbname: str) -> dict[str, int]:
    from psycopg import sql

    found = {}
    with connect(server, dbname) as conn:
        for table in TABLES:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            found[table] = row[0] if row else -1
    return found


def test_migrate_files_moves_every_entry_and_running_it_again_adds_nothing(
    postgres_server: PostgresServer,
    database: str,
    file_ledgers: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demo_files = Ledger("demo", FileLedgerStore(file_ledgers / "demo"))
    before = {path: path.read_bytes() for path in file_ledgers.rglob("*") if path.is_file()}
    held = StackLock("demo", FileLockStore(file_ledgers / "demo")).holder()
    assert held is not None and len(demo_files.entries()) == 3

    code, out = migrate(file_ledgers, postgres_server, database, tmp_path)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == (
        "demo: entries 3 copied, 3/3 verified; legacy releases 2 copied, 2/2 verified; "
        f"config snapshots 2 copied, 2/2 verified; lock held by {held.describe()}: "
        "copied, verified"
    )
    assert lines[1].startswith("shop: entries 1 copied, 1/1 verified; legacy releases 0 copied")
    assert lines[1].endswith("lock free")
    assert "left in place" in lines[-1]
    after_first = counts(postgres_server, database)
    assert after_first["opsflow_ledger_entry"] == 4
    assert after_first["opsflow_legacy_release"] == 2

    code, out = migrate(file_ledgers, postgres_server, database, tmp_path)
    assert code == 0, out
    assert out.splitlines()[0] == (
        "demo: entries 0 copied, 3/3 verified; legacy releases 0 copied, 2/2 verified; "
        f"config snapshots 0 copied, 2/2 verified; lock held by {held.describe()}: "
        "already there, verified"
    )
    assert counts(postgres_server, database) == after_first
    assert {p: p.read_bytes() for p in file_ledgers.rglob("*") if p.is_file()} == before

    # Read through the postgres backend, the ledger answers as the files did.
    use_postgres(monkeypatch, postgres_server, database)
    rows = Ledger("demo")
    assert rows.where.startswith("postgres opsflow_state")
    expected = [e.to_dict() for e in demo_files.entries()]
    expected[1]["error"] = "pull: \ufffd denied"  # jsonb cannot hold NUL: replaced, not lost
    assert [e.to_dict() for e in rows.entries()] == expected
    demo_releases = demo_files.releases()
    assert [(r.version, r.run_id, r.recorded_at) for r in rows.releases()] == [
        (r.version, r.run_id, r.recorded_at) for r in demo_releases
    ]
    assert rows.current() == demo_files.current()
    assert rows.backups_taken_on("1.0.0") == demo_files.backups_taken_on("1.0.0") == ["b-1"]
    for path in sorted((file_ledgers / "demo" / "configs").iterdir()):
        digest = path.name.removesuffix(".tar")
        assert rows.config_files(digest) == demo_files.config_files(digest)
    assert StackLock("demo").holder() == held


def test_migrate_files_fails_on_a_mismatch_and_keeps_the_newer_database_state(
    postgres_server: PostgresServer,
    database: str,
    file_ledgers: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out = migrate(file_ledgers, postgres_server, database, tmp_path)
    assert code == 0, out
    use_postgres(monkeypatch, postgres_server, database)
    newer = _entry("e3", "1.1.0", 20, action="upgrade", from_version="1.0.0",
                   outcome="succeeded", ended_at="2026-01-02T03:30:00+00:00")  # fmt: skip
    Ledger("demo").write(newer)  # a worker went on after the first migration
    assert StackLock("demo").release("demo__upgrade", "run-e3") is None
    other = LockHolder.new("demo", "demo__restore", "run-9", timedelta(hours=1))
    assert StackLock("demo").acquire(other, lambda _: None).acquired

    code, out = migrate(file_ledgers, postgres_server, database, tmp_path)
    assert code == 1
    mismatches = [line for line in out.splitlines() if "MISMATCH" in line]
    assert len(mismatches) == 2
    assert mismatches[0].startswith("demo: MISMATCH entry e3: the database holds another state")
    assert "lock: the file names demo__upgrade run run-e3" in mismatches[1]
    assert Ledger("demo").get("e3") == newer
    assert StackLock("demo").holder() == other
