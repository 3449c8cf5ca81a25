"""The fingerprint of a PostgreSQL database: rows and an order-independent content checksum
per table, sequence positions and the large-object count, and how two fingerprints differ.

The dump computes it inside the exported snapshot it dumps, the verification and the
restore compute it again on the restored copy; they match when nothing was lost. Session
settings fix every output format, so a row's text (hence its checksum) is the same on both
servers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from opsflow.backup.manifest import BackupError

if TYPE_CHECKING:
    from psycopg import Connection

# How long a backup's session (and pg_dump) waits for a lock before it gives up.
LOCK_WAIT_MS = 120_000


# Output formats fixed so a row's text (hence its checksum) is the same on both servers.
_SESSION_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "row_security": "off",
    "statement_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
    "lock_timeout": f"{LOCK_WAIT_MS}ms",
}


def apply_session_settings(conn: Connection[Any]) -> None:
    for name, value in _SESSION_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


_USER_RELATIONS = """
    SELECT n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = %s AND c.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
      AND NOT EXISTS (
        SELECT 1 FROM pg_depend d
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY c.relpages DESC, 3
"""


def user_tables(conn: Connection[Any]) -> list[tuple[str, str, str]]:
    """User tables as pg_dump dumps them (no temp, catalog or extension-owned ones), big first."""
    return [(str(s), str(t), str(k)) for s, t, k in conn.execute(_USER_RELATIONS, ("r",))]


def table_checksum(conn: Connection[Any], schema: str, table: str) -> dict[str, Any]:
    """One pass: count and the sum of per-row hashes (order-independent, duplicate-safe).

    ``hash_record_extended`` hashes each column with its type's own hash function, about
    twice as fast as hashing the row's text. A table with a column type that has no such
    function (json, xml, geometric types...) falls back to the row's text; the choice
    depends only on the column types, so the restored copy makes the same one.
    """
    import psycopg
    from psycopg import sql

    relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    # (t.*) is the whole row even when a column is called t.
    for method, expression in (
        ("record", sql.SQL("hash_record_extended((t.*), 0)")),
        ("text", sql.SQL("hashtextextended((t.*)::text, 0)")),
    ):
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} AS t").format(
            expression, relation
        )
        try:
            with conn.transaction():  # a savepoint: a refused method leaves no aborted state
                row = conn.execute(query).fetchone()
        except psycopg.errors.UndefinedFunction:
            continue
        assert row is not None
        return {"rows": int(row[0]), "checksum": f"{method}:{row[1]}"}
    raise BackupError(f"table {schema}.{table}: no way to checksum its rows")


def read_sequences(conn: Connection[Any]) -> dict[str, dict[str, Any]]:
    from psycopg import sql

    found: dict[str, dict[str, Any]] = {}
    for schema, name, key in conn.execute(_USER_RELATIONS, ("S",)).fetchall():
        query = sql.SQL(
            "SELECT s.last_value, s.is_called, q.seqincrement FROM {}.{} AS s, pg_sequence q "
            "WHERE q.seqrelid = %s::regclass"
        ).format(sql.Identifier(schema), sql.Identifier(name))
        row = conn.execute(query, (key,)).fetchone()
        assert row is not None
        found[key] = {
            "last_value": int(row[0]),
            "is_called": bool(row[1]),
            "increment": int(row[2]),
        }
    return dict(sorted(found.items()))


def count_large_objects(conn: Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def summarize(tables: dict[str, dict[str, Any]]) -> tuple[int, int]:
    return len(tables), sum(int(entry["rows"]) for entry in tables.values())


def fingerprint(conn: Connection[Any]) -> dict[str, Any]:
    """Tables (rows, checksum), sequences and large objects as ``conn``'s transaction sees them.

    Run it inside a REPEATABLE READ transaction for a consistent result.
    """
    apply_session_settings(conn)
    sequences = read_sequences(conn)
    tables = {key: table_checksum(conn, schema, name) for schema, name, key in user_tables(conn)}
    return {
        "tables": dict(sorted(tables.items())),
        "sequences": sequences,
        "large_objects": count_large_objects(conn),
    }


def fingerprint_parallel(connect: Callable[[], Connection[Any]], workers: int) -> dict[str, Any]:
    """The same fingerprint over several connections (for a server nobody writes to)."""
    with connect() as conn:
        result = _fingerprint_head(conn)
        tables = user_tables(conn)
    local = threading.local()
    opened: list[Connection[Any]] = []
    lock = threading.Lock()

    def one(entry: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = connect()
            conn.autocommit = True
            apply_session_settings(conn)
            local.conn = conn
            with lock:
                opened.append(conn)
        return entry[2], table_checksum(conn, entry[0], entry[1])

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            result["tables"] = dict(sorted(pool.map(one, tables)))
    finally:
        for conn in opened:
            conn.close()
    return result


def _fingerprint_head(conn: Connection[Any]) -> dict[str, Any]:
    """Everything but the tables (which the caller spreads over connections)."""
    apply_session_settings(conn)
    return {
        "tables": {},
        "sequences": read_sequences(conn),
        "large_objects": count_large_objects(conn),
    }


def _sequence_behind(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    """Behind the backup's reading (in the sequence's direction): values would be reused."""
    step = 1 if int(expected.get("increment", 1)) > 0 else -1
    ahead = (int(actual["last_value"]) - int(expected["last_value"])) * step
    if ahead != 0:
        return ahead < 0
    return bool(expected["is_called"]) and not bool(actual["is_called"])


def compare_fingerprints(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One line per difference, naming the table or sequence; empty when they match."""
    differences: list[str] = []
    want, got = expected.get("tables", {}), actual.get("tables", {})
    for name in sorted(set(want) | set(got)):
        if name not in got:
            differences.append(
                f"table {name}: missing after restore ({want[name]['rows']} rows expected)"
            )
        elif name not in want:
            differences.append(
                f"table {name}: not in the backup's fingerprint ({got[name]['rows']} rows restored)"
            )
        elif int(got[name]["rows"]) != int(want[name]["rows"]):
            differences.append(
                f"table {name}: {got[name]['rows']} rows restored, {want[name]['rows']} expected"
            )
        elif str(got[name]["checksum"]) != str(want[name]["checksum"]):
            differences.append(
                f"table {name}: content checksum differs ({got[name]['rows']} rows, "
                f"checksum {got[name]['checksum']}, expected {want[name]['checksum']})"
            )
    want_seq, got_seq = expected.get("sequences", {}), actual.get("sequences", {})
    for name in sorted(set(want_seq) | set(got_seq)):
        if name not in got_seq:
            differences.append(f"sequence {name}: missing after restore")
        elif name not in want_seq:
            differences.append(f"sequence {name}: not in the backup's fingerprint")
        elif _sequence_behind(want_seq[name], got_seq[name]):
            differences.append(
                f"sequence {name}: restored at {got_seq[name]['last_value']} "
                f"(is_called {got_seq[name]['is_called']}), behind the backup's "
                f"{want_seq[name]['last_value']} (is_called {want_seq[name]['is_called']})"
            )
    lo_want, lo_got = expected.get("large_objects", 0), actual.get("large_objects", 0)
    if int(lo_want) != int(lo_got):
        differences.append(f"large objects: {lo_got} restored, {lo_want} expected")
    return differences
