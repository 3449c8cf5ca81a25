"""The PostgreSQL state backend: the ledger and the stack lock of every stack in one database.

Many worker hosts (Airflow Edge workers) change the same stacks, so the files of one
machine cannot be the truth any more. This module stores what :mod:`opsflow.releases`
hands it (entries as JSON, holders as plain values) and decides nothing about them:

- ``opsflow_ledger_entry``: one row per entry, upserted with its newest state.
- ``opsflow_legacy_release``: the lines of an imported ``releases.jsonl``.
- ``opsflow_config_snapshot``: the content-addressed config tars, as bytea.
- ``opsflow_stack_lock``: one row per stack; the holder columns are NULL when it is free.
  Every change happens in one transaction holding the row ``FOR UPDATE``.

The schema is created and migrated by opsflow itself on a process's first use of a
database, under a transaction-scoped advisory lock so two workers starting at once do
not both create it. Nothing connects at import or construction time (DAG files import the
ledger while they are parsed); each operation opens a connection with a connect timeout,
runs one short transaction and closes it. The password stays in the connection keywords:
never in a message, a repr or an argv.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, LiteralString

from opsflow.connections import PostgresParams, endpoint, postgres_params
from opsflow.errors import OpsflowError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds; the connection's own connect_timeout extra wins
APPLICATION_NAME = "opsflow-state"
SCHEMA_TABLE = "opsflow_schema"
ENTRY_TABLE = "opsflow_ledger_entry"
LEGACY_TABLE = "opsflow_legacy_release"
CONFIG_TABLE = "opsflow_config_snapshot"
LOCK_TABLE = "opsflow_stack_lock"
# The advisory lock that serializes schema migrations ("opsflow" in ASCII); the same key in
# every opsflow version, so an old and a new worker starting together also take turns.
SCHEMA_LOCK_KEY = 0x6F7073666C6F77
HOLDER_COLUMNS = ("dag_id", "run_id", "acquired_at", "expires_at", "host")

# Ordered and append-only: a released migration is never edited, a change is a new one.
MIGRATIONS: tuple[tuple[int, str, LiteralString], ...] = (
    (
        1,
        "ledger entries, legacy releases, config snapshots, stack lock",
        """
        CREATE TABLE opsflow_ledger_entry (
            stack text NOT NULL,
            entry_id text NOT NULL,
            started_at timestamptz NOT NULL,
            entry jsonb NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, entry_id)
        );
        CREATE INDEX opsflow_ledger_entry_started ON opsflow_ledger_entry (stack, started_at);
        CREATE TABLE opsflow_legacy_release (
            stack text NOT NULL,
            seq integer NOT NULL,
            release jsonb NOT NULL,
            imported_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, seq)
        );
        CREATE TABLE opsflow_config_snapshot (
            stack text NOT NULL,
            digest text NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
            content bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stack, digest)
        );
        CREATE TABLE opsflow_stack_lock (
            stack text PRIMARY KEY,
            dag_id text,
            run_id text,
            acquired_at timestamptz,
            expires_at timestamptz,
            host text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            -- a holder is whole or absent: a half-written holder could never be judged
            CONSTRAINT opsflow_stack_lock_whole_holder CHECK (
                (dag_id IS NULL) = (run_id IS NULL)
                AND (dag_id IS NULL) = (acquired_at IS NULL)
                AND (dag_id IS NULL) = (expires_at IS NULL)
                AND (dag_id IS NULL) = (host IS NULL)
            )
        );
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Databases (host, port, dbname) this process has brought to SCHEMA_VERSION.
_migrated: set[tuple[str, int, str]] = set()


class StateDatabaseProblem(OpsflowError, RuntimeError):
    """The state database cannot be used; names the connection, never its password."""


def migrate_schema(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the versions applied now.

    Idempotent, and safe to run from many processes at once: the advisory lock makes the
    second wait for the first and then find nothing left to do.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS opsflow_schema ("
            " version integer PRIMARY KEY,"
            " description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM opsflow_schema").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StateDatabaseProblem(
                f"the state database is at schema version {current}, newer than the "
                f"{SCHEMA_VERSION} this opsflow knows: upgrade opsflow on this host"
            )
        applied = []
        for version, description, sql in MIGRATIONS:
            if version <= current:
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO opsflow_schema (version, description) VALUES (%s, %s)",
                (version, description),
            )
            applied.append(version)
    if applied:
        log.info("state database: applied schema migrations %s", applied)
    return applied


class StateDatabase:
    """One Airflow connection's database; the connection is looked up on first use."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._params: PostgresParams | None = None

    def __repr__(self) -> str:
        return f"StateDatabase({self.conn_id!r})"

    def params(self) -> PostgresParams:
        if self._params is None:
            self._params = postgres_params(endpoint(self.conn_id)).with_defaults(
                connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME
            )
        return self._params

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection to a migrated database, closed afterwards."""
        import psycopg

        params = self.params()
        try:
            conn = psycopg.connect(**params.connect_kwargs(), autocommit=True)
        except psycopg.OperationalError as exc:
            raise StateDatabaseProblem(
                f"state database (connection {self.conn_id}, {params.host}:{params.port}/"
                f"{params.dbname}) cannot be reached: {str(exc).strip()}"
            ) from None
        with conn:
            key = (params.host, params.port, params.dbname)
            if key not in _migrated:
                migrate_schema(conn)
                _migrated.add(key)
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        with self.connection() as conn, conn.transaction():
            yield conn


# --------------------------------------------------------------------------- ledger


class PostgresLedgerStore:
    """The ledger of one stack as rows (the ``LedgerStore`` of :mod:`opsflow.releases.ledger`)."""

    def __init__(self, stack: str, conn_id: str) -> None:
        self.stack = stack
        self.database = StateDatabase(conn_id)

    @property
    def where(self) -> str:
        return f"postgres {self.database.conn_id} {ENTRY_TABLE}"

    def put_entry(self, entry_id: str, started_at: datetime, data: str) -> None:
        """Upsert the entry's newest state."""
        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO opsflow_ledger_entry (stack, entry_id, started_at, entry)"
                " VALUES (%s, %s, %s, %s::jsonb)"
                " ON CONFLICT (stack, entry_id) DO UPDATE SET started_at = excluded.started_at,"
                " entry = excluded.entry, updated_at = now()",
                (self.stack, entry_id, started_at, storable_json(data)),
            )

    def insert_entry(self, entry_id: str, started_at: datetime, data: str) -> bool:
        """Insert the entry unless the database already has it (whatever its state):
        an import never overwrites what workers wrote since. True when inserted."""
        with self.database.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO opsflow_ledger_entry (stack, entry_id, started_at, entry)"
                " VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT (stack, entry_id) DO NOTHING",
                (self.stack, entry_id, started_at, storable_json(data)),
            )
            return cursor.rowcount == 1

    def entry_records(self) -> list[tuple[str, str | bytes]]:
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT entry_id, entry::text FROM opsflow_ledger_entry WHERE stack = %s"
                " ORDER BY started_at, entry_id",
                (self.stack,),
            ).fetchall()
        return [(f"entry {entry_id} of {self.where}", text) for entry_id, text in rows]

    def legacy_records(self) -> list[tuple[str, str | bytes]]:
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT seq, release::text FROM opsflow_legacy_release WHERE stack = %s"
                " ORDER BY seq",
                (self.stack,),
            ).fetchall()
        return [(f"legacy release {seq} of postgres {LEGACY_TABLE}", text) for seq, text in rows]

    def insert_legacy(self, seq: int, data: str) -> bool:
        with self.database.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO opsflow_legacy_release (stack, seq, release)"
                " VALUES (%s, %s, %s::jsonb) ON CONFLICT (stack, seq) DO NOTHING",
                (self.stack, seq, storable_json(data)),
            )
            return cursor.rowcount == 1

    def has_config(self, digest: str) -> bool:
        with self.database.transaction() as conn:
            row = conn.execute(
                "SELECT 1 FROM opsflow_config_snapshot WHERE stack = %s AND digest = %s",
                (self.stack, digest),
            ).fetchone()
        return row is not None

    def put_config(self, digest: str, data: bytes) -> bool:
        """Store a snapshot once (content-addressed: a second copy would be the same)."""
        with self.database.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO opsflow_config_snapshot (stack, digest, content) VALUES (%s, %s, %s)"
                " ON CONFLICT (stack, digest) DO NOTHING",
                (self.stack, digest, data),
            )
            return cursor.rowcount == 1

    def get_config(self, digest: str) -> bytes | None:
        with self.database.transaction() as conn:
            row = conn.execute(
                "SELECT content FROM opsflow_config_snapshot WHERE stack = %s AND digest = %s",
                (self.stack, digest),
            ).fetchone()
        return bytes(row[0]) if row else None


def storable_json(data: str) -> str:
    """JSON as jsonb can hold it: jsonb refuses the NUL character, and a NUL in an error
    text must not lose the entry, so it becomes U+FFFD (the only change a row makes)."""
    return data.replace("\\u0000", "\\ufffd")


# --------------------------------------------------------------------------- stack lock


class _LockRow:
    """The stack's lock row, held ``FOR UPDATE`` until the transaction ends."""

    def __init__(self, conn: psycopg.Connection[Any], stack: str, row: tuple[Any, ...] | None):
        self.conn = conn
        self.stack = stack
        self.row = row

    def read(self) -> dict[str, str] | None:
        return _holder_record(self.stack, self.row)

    def write(self, holder: Mapping[str, str] | None) -> None:
        values: tuple[Any, ...] = (None,) * len(HOLDER_COLUMNS)
        if holder is not None:
            values = (
                holder["dag_id"],
                holder["run_id"],
                _moment(holder["acquired_at"]),
                _moment(holder["expires_at"]),
                holder.get("host", ""),
            )
        self.conn.execute(
            "UPDATE opsflow_stack_lock SET dag_id = %s, run_id = %s, acquired_at = %s,"
            " expires_at = %s, host = %s, updated_at = now() WHERE stack = %s",
            (*values, self.stack),
        )


class PostgresLockStore:
    """The lock of one stack as a row (the ``LockStore`` of :mod:`opsflow.releases.lock`)."""

    def __init__(self, stack: str, conn_id: str) -> None:
        self.stack = stack
        self.database = StateDatabase(conn_id)

    @property
    def where(self) -> str:
        return f"postgres {self.database.conn_id} {LOCK_TABLE}"

    def read(self) -> dict[str, str] | None:
        with self.database.transaction() as conn:
            row = conn.execute(
                "SELECT dag_id, run_id, acquired_at, expires_at, host"
                " FROM opsflow_stack_lock WHERE stack = %s",
                (self.stack,),
            ).fetchone()
        return _holder_record(self.stack, row)

    @contextmanager
    def exclusive(self) -> Iterator[_LockRow]:
        """The stack's row, created if missing, locked for one transaction: racing
        workers queue on it and each decides on the holder the one before it left."""
        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO opsflow_stack_lock (stack) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.stack,),
            )
            row = conn.execute(
                "SELECT dag_id, run_id, acquired_at, expires_at, host"
                " FROM opsflow_stack_lock WHERE stack = %s FOR UPDATE",
                (self.stack,),
            ).fetchone()
            yield _LockRow(conn, self.stack, row)


def _holder_record(stack: str, row: tuple[Any, ...] | None) -> dict[str, str] | None:
    if row is None or row[0] is None:
        return None
    dag_id, run_id, acquired_at, expires_at, host = row
    return {
        "stack": stack,
        "dag_id": dag_id,
        "run_id": run_id,
        "acquired_at": _iso(acquired_at),
        "expires_at": _iso(expires_at),
        "host": host,
    }


def _iso(moment: datetime) -> str:
    """The form ``LockHolder.new`` writes (UTC, whole seconds), so a holder reads back equal."""
    utc = moment.astimezone(UTC)
    return utc.isoformat(timespec="seconds" if utc.microsecond == 0 else "auto")


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        # timestamptz would read it in the session's time zone: a guess, refused.
        raise ValueError(f"lock time {text!r} has no time zone")
    return moment
