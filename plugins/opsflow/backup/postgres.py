"""PostgreSQL as a ``pg_dump`` custom-format archive, proven by restoring it into a scratch server.

Consistency: one connection opens a REPEATABLE READ transaction and exports its snapshot;
``pg_dump --snapshot`` dumps exactly that snapshot while the same transaction computes the
fingerprint (row count and an order-independent content checksum per table). The
fingerprint therefore describes the dumped state, whatever is written meanwhile.
Sequences are not transactional: their values are read right after the export, before
``pg_dump`` reads them, so a restored sequence may be ahead of the fingerprint, never behind.

Speed: ``pg_dump -Fc -Z0`` streams into ``zstd -T0`` (much faster than pg_dump's zlib), the
fingerprint is one pass per table run concurrently with the dump, and the scratch server
runs on a tmpfs with durability off and ``wal_level=minimal`` so a ``--single-transaction``
restore skips WAL for the table data.

Credentials reach the client tools only through ``PGPASSWORD`` in their environment, and
every connection parameter travels as an environment variable (``PGDATABASE`` is never
parsed as a connection string, unlike ``-d``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsflow.backup.context import Endpoint, RunContext
from opsflow.backup.files import single_artifact
from opsflow.backup.manifest import (
    BackupError,
    SourceBackup,
    Verification,
    conclude,
    now_iso,
)
from opsflow.backup.stream import check_artifact
from opsflow.runtimes.process import LineLogger

if TYPE_CHECKING:
    from psycopg import Connection

    from opsflow.backup.scratch import ScratchContainer
    from opsflow.stack.model import PostgresSource

CONTAINER_PORT = 5432
APP_NAME = "opsflow-backup"
RESTORE_SUFFIX = "__opsflow_restore"
OLD_SUFFIX = "__opsflow_old"
# hashtextextended() exists from 11 on; older servers are long out of support.
MIN_SERVER_VERSION_NUM = 110000
LOCK_WAIT_MS = 120_000
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
_VERSION = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*\S*(?:\s.*)?)$")
# Settings whose list elements pg_dump quotes one by one (pg_dump's variable_is_guc_list_quote).
_LIST_QUOTE_SETTINGS = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}
_MAX_NAME_BYTES = 63


# ---------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class PgClient:
    """The pg_dump/pg_restore pair used; ``version`` as printed, e.g. ``15.13 (Debian ...)``."""

    bin_dir: Path
    major: int
    version: str

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise BackupError(f"PostgreSQL client {self.version}: no {name} in {self.bin_dir}")
        return str(path)


def find_client(bin_dir: str | None) -> PgClient:
    """The explicit dir, else the newest /usr/lib/postgresql/*/bin with pg_dump, else PATH."""
    if bin_dir:
        directory = Path(bin_dir)
        if not os.access(directory / "pg_dump", os.X_OK):
            raise BackupError(f"client_bin_dir {bin_dir}: no executable pg_dump there")
    else:
        found = [
            path.parent
            for path in Path("/usr/lib/postgresql").glob("*/bin/pg_dump")
            if path.parent.parent.name.isdigit() and os.access(path, os.X_OK)
        ]
        if found:
            directory = max(found, key=lambda path: int(path.parent.name))
        elif on_path := shutil.which("pg_dump"):
            directory = Path(on_path).parent
        else:
            raise BackupError(
                "no pg_dump on this worker: install postgresql-client-<server major> "
                "or set client_bin_dir in the stack's postgres source"
            )
    try:
        out = subprocess.run(
            [str(directory / "pg_dump"), "--version"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        raise BackupError(f"{directory / 'pg_dump'} --version failed: {err}") from None
    match = _VERSION.search(out)
    if not match:
        raise BackupError(f"{directory / 'pg_dump'}: unexpected --version output {out!r}")
    return PgClient(bin_dir=directory, major=int(match.group(2)), version=match.group(1))


def server_major(server_version_num: int) -> int:
    return server_version_num // 10000 if server_version_num >= 100000 else 9


def check_client(client: PgClient, server_version_num: int, server_version: str) -> None:
    """pg_dump refuses (or worse, misreads) servers newer than itself: say so up front."""
    major = server_major(server_version_num)
    if client.major < major:
        raise BackupError(
            f"PostgreSQL client {client.version} in {client.bin_dir} is older than the "
            f"server (PostgreSQL {server_version}): pg_dump/pg_restore {client.major} cannot "
            f"handle a {major} server. Install postgresql-client-{major} (or newer) on the "
            f"worker, or set client_bin_dir in the stack's postgres source to a directory "
            f"with pg_dump {major} or newer"
        )
    if server_version_num < MIN_SERVER_VERSION_NUM:
        raise BackupError(
            f"PostgreSQL {server_version} is not supported (opsflow needs 11 or newer)"
        )


# ---------------------------------------------------------------------------------- connect


def _conninfo(endpoint: Endpoint, dbname: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port or 5432,
        "dbname": dbname,
        "application_name": APP_NAME,
        "connect_timeout": 10,
    }
    if endpoint.login:
        params["user"] = endpoint.login
    if endpoint.password:
        params["password"] = endpoint.password
    if sslmode := endpoint.extra.get("sslmode"):
        params["sslmode"] = str(sslmode)
    return params


def _connect(endpoint: Endpoint, dbname: str, *, autocommit: bool = False) -> Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(**_conninfo(endpoint, dbname), autocommit=autocommit)
    except psycopg.Error as err:
        where = f"{endpoint.host}:{endpoint.port}/{dbname}"
        raise BackupError(f"cannot connect to PostgreSQL at {where}: {err}") from None


def _client_env(endpoint: Endpoint, dbname: str) -> dict[str, str]:
    """libpq's environment for a child; the password never goes into argv."""
    env = {
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port or 5432),
        "PGDATABASE": dbname,
        "PGAPPNAME": APP_NAME,
        "PGCONNECT_TIMEOUT": "10",
        "PGPASSWORD": endpoint.password,
        "PGUSER": endpoint.login,
    }
    if sslmode := endpoint.extra.get("sslmode"):
        env["PGSSLMODE"] = str(sslmode)
    return {key: value for key, value in env.items() if value}


def _dbname_arg(dbname: str) -> str:
    """pg_restore connects only with -d, which parses a value with ``=`` as a connection
    string: give it one holding just the (quoted) name; the rest comes from the env."""
    from psycopg.conninfo import make_conninfo

    return f"--dbname={make_conninfo('', dbname=dbname)}"


def _server_version(conn: Connection[Any]) -> tuple[int, str]:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _version_major(server_version: str) -> int | None:
    match = re.match(r"(\d+)(?:\.(\d+))?", server_version)
    if not match:
        return None
    major = int(match.group(1))
    return major if major >= 10 else 9


# ---------------------------------------------------------------------------------- fingerprint


def _apply_session_settings(conn: Connection[Any]) -> None:
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


def _tables(conn: Connection[Any]) -> list[tuple[str, str, str]]:
    """User tables as pg_dump dumps them (no temp, catalog or extension-owned ones), big first."""
    return [(str(s), str(t), str(k)) for s, t, k in conn.execute(_USER_RELATIONS, ("r",))]


def _table_checksum(conn: Connection[Any], schema: str, table: str) -> dict[str, Any]:
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


def _sequences(conn: Connection[Any]) -> dict[str, dict[str, Any]]:
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


def _large_objects(conn: Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    return int(row[0]) if row else 0


def _summary(tables: dict[str, dict[str, Any]]) -> tuple[int, int]:
    return len(tables), sum(int(entry["rows"]) for entry in tables.values())


def fingerprint(conn: Connection[Any]) -> dict[str, Any]:
    """Tables (rows, checksum), sequences and large objects as ``conn``'s transaction sees them.

    Run it inside a REPEATABLE READ transaction for a consistent result.
    """
    _apply_session_settings(conn)
    sequences = _sequences(conn)
    tables = {key: _table_checksum(conn, schema, name) for schema, name, key in _tables(conn)}
    return {
        "tables": dict(sorted(tables.items())),
        "sequences": sequences,
        "large_objects": _large_objects(conn),
    }


def _fingerprint_parallel(connect: Callable[[], Connection[Any]], workers: int) -> dict[str, Any]:
    """The same fingerprint over several connections (for a server nobody writes to)."""
    with connect() as conn:
        result = _fingerprint_head(conn)
        tables = _tables(conn)
    local = threading.local()
    opened: list[Connection[Any]] = []
    lock = threading.Lock()

    def one(entry: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = connect()
            conn.autocommit = True
            _apply_session_settings(conn)
            local.conn = conn
            with lock:
                opened.append(conn)
        return entry[2], _table_checksum(conn, entry[0], entry[1])

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            result["tables"] = dict(sorted(pool.map(one, tables)))
    finally:
        for conn in opened:
            conn.close()
    return result


def _fingerprint_head(conn: Connection[Any]) -> dict[str, Any]:
    """Everything but the tables (which the caller spreads over connections)."""
    _apply_session_settings(conn)
    return {"tables": {}, "sequences": _sequences(conn), "large_objects": _large_objects(conn)}


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


# ---------------------------------------------------------------------------------- dump


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
    conn = _connect(endpoint, source.database)
    try:
        num, version = _server_version(conn)
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
        _apply_session_settings(conn)
        row = conn.execute(
            "SELECT pg_export_snapshot(), pg_database_size(current_database())"
        ).fetchone()
        assert row is not None
        snapshot, size = str(row[0]), int(row[1])
        # Sequences first: pg_dump reads them later, so it can only be ahead of us.
        sequences = _sequences(conn)
        if on_snapshot is not None:
            on_snapshot(snapshot)
        tables: dict[str, dict[str, Any]] = {}
        failed: list[BaseException] = []

        def fingerprint_tables() -> None:
            try:
                for schema, name, key in _tables(conn):
                    tables[key] = _table_checksum(conn, schema, name)
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
                dest, level=ctx.level, argv=argv, env=_client_env(endpoint, source.database)
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
        large_objects = _large_objects(conn)
        conn.rollback()  # ends the snapshot; nothing was written
    finally:
        conn.close()
    table_count, rows = _summary(tables)
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


# ---------------------------------------------------------------------------------- verify


def _tmpfs_bytes(database_bytes: int) -> int | None:
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

    tmpfs_bytes = _tmpfs_bytes(database_bytes)
    environment = {
        "POSTGRES_PASSWORD": password,
        "POSTGRES_USER": SCRATCH_USER,
        "POSTGRES_DB": SCRATCH_DB,
    }
    tmpfs: dict[str, str] = {}
    if tmpfs_bytes is not None:
        environment["PGDATA"] = f"{SCRATCH_TMPFS}/pgdata"
        tmpfs[SCRATCH_TMPFS] = f"rw,nosuid,nodev,mode=1777,size={tmpfs_bytes // (1 << 20)}m"
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
        f"tmpfs {tmpfs_bytes // (1 << 20)} MB" if tmpfs_bytes else "data on the container's disk",
    )  # fmt: skip
    return container, tmpfs_bytes is not None


def _scratch_endpoint(container: ScratchContainer, password: str) -> Endpoint:
    return Endpoint(host=container.host, port=container.port, login=SCRATCH_USER, password=password)


def _wait_ready(container: ScratchContainer, password: str, timeout: float) -> tuple[int, str]:
    """Poll until the server accepts a login; the container's logs explain a timeout or exit."""
    import psycopg

    params = _conninfo(_scratch_endpoint(container, password), SCRATCH_DB)
    params["connect_timeout"] = 3
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                return _server_version(conn)
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
    dumped_major = _version_major(backup.server_version)
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
            "--no-password", _dbname_arg(SCRATCH_DB),
        ]  # fmt: skip
        env = _client_env(_scratch_endpoint(container, password), SCRATCH_DB)
        try:
            ctx.pipeline.decompress_file(path, artifact, argv=argv, env=env)
        except BackupError as err:  # ArtifactCorrupt included
            return failed(str(err))
        details["restore_seconds"] = round(time.monotonic() - restore_clock, 2)
        fp_clock = time.monotonic()
        scratch = _scratch_endpoint(container, password)
        try:
            actual = _fingerprint_parallel(
                lambda: _connect(scratch, SCRATCH_DB, autocommit=True),
                workers=min(4, os.cpu_count() or 1),
            )
        except Exception as err:
            raise BackupError(f"{backup.name}: fingerprint of the scratch server: {err}") from err
        details["fingerprint_seconds"] = round(time.monotonic() - fp_clock, 2)
    finally:
        container.remove()
    tables, rows = _summary(actual["tables"])
    details.update(tables=tables, rows=rows, sequences=len(actual["sequences"]))
    differences = compare_fingerprints(backup.fingerprint, actual)
    ctx.log.info("%s: %d tables, %d rows restored", backup.name, tables, rows)
    return conclude(backup.name, differences, details, clock, ctx.log)


# ---------------------------------------------------------------------------------- restore


def _side_name(database: str, suffix: str) -> str:
    """``database`` + suffix within PostgreSQL's 63-byte limit (else it truncates silently)."""
    base = database.encode()[: _MAX_NAME_BYTES - len(suffix.encode())]
    return base.decode(errors="ignore") + suffix


def _exists(admin: Connection[Any], database: str) -> bool:
    return (
        admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        is not None
    )


def _terminate(admin: Connection[Any], database: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sessions = admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
        if not sessions:
            return
        if time.monotonic() > deadline:
            raise BackupError(
                f"database {database} still has {len(sessions)} sessions after terminating "
                "them (the restoring role may lack pg_signal_backend)"
            )
        time.sleep(0.2)


def _drop(admin: Connection[Any], database: str, num: int) -> None:
    from psycopg import sql

    if not _exists(admin, database):
        return
    if num < 130000:
        _terminate(admin, database)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
    else:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def _split_list_setting(value: str) -> list[str]:
    """A stored list setting (``app, "$user", public``) as its elements."""
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        char = value[i]
        if quoted:
            if char == '"' and value[i + 1 : i + 2] == '"':
                current += '"'
                i += 1
            elif char == '"':
                quoted = False
            else:
                current += char
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    items.append(current.strip())
    return [item for item in items if item]


def _create_like(admin: Connection[Any], new: str, live: str, num: int) -> None:
    """Create ``new`` with ``live``'s owner, encoding, locale, limits, settings and grants.

    The swap replaces the whole database, so what pg_dump without --create leaves out
    (database-level properties) is carried over from the database being replaced.
    """
    from psycopg import sql

    locale = "datlocprovider, daticulocale" if num >= 150000 else "'c', NULL"
    if num >= 170000:
        locale = "datlocprovider, datlocale"
    row = admin.execute(
        f"SELECT oid, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, "  # noqa: S608
        f"datctype, datconnlimit, datacl IS NOT NULL, {locale} "
        "FROM pg_database WHERE datname = %s",
        (live,),
    ).fetchone()
    assert row is not None
    oid, owner, encoding, collate, ctype, connlimit, has_acl, provider, icu = row
    parts = [
        sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 OWNER {} ENCODING {}").format(
            sql.Identifier(new), sql.Identifier(owner), sql.Literal(encoding)
        ),
        sql.SQL("LC_COLLATE {} LC_CTYPE {} CONNECTION LIMIT {}").format(
            sql.Literal(collate), sql.Literal(ctype), sql.Literal(int(connlimit))
        ),
    ]
    if provider == "i":
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(icu)))
    elif provider == "b":
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(icu)))
    admin.execute(sql.SQL(" ").join(parts))
    if has_acl:
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(new)))
        grants = admin.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
            (live,),
        ).fetchall()
        for grantee, privilege, grantable in grants:
            admin.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),  # from aclexplode: CONNECT, CREATE, TEMPORARY
                    sql.Identifier(new),
                    sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
                )
            )
    settings = admin.execute(
        "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = %s",
        (oid,),
    ).fetchall()
    for role, config in settings:
        target = sql.SQL("DATABASE {}").format(sql.Identifier(new))
        if role:
            target = sql.SQL("ROLE {} IN DATABASE {}").format(
                sql.Identifier(role), sql.Identifier(new)
            )
        for item in config or []:
            name, _, value = str(item).partition("=")
            values = _split_list_setting(value) if name in _LIST_QUOTE_SETTINGS else [value]
            admin.execute(
                sql.SQL("ALTER {} SET {} TO {}").format(
                    target,
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.Literal(v) for v in values),
                )
            )


def _swap(admin: Connection[Any], live: str, new: str, old: str, log: LineLogger) -> None:
    """live -> old, new -> live; undone if a step fails so ``live`` is never left missing."""
    from psycopg import sql

    ident = sql.Identifier
    row = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (live,))
    allowed = bool((row.fetchone() or (True,))[0])
    # Sessions reconnecting between terminate and rename would make the rename fail.
    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(live)))
    try:
        _terminate(admin, live)
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(old)))
    except BaseException:
        with contextlib.suppress(Exception):
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                    ident(live), sql.SQL("true" if allowed else "false")
                )
            )
        raise
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(new), ident(live)))
    except BaseException:
        with contextlib.suppress(Exception):
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(old), ident(live)))
            admin.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                    ident(live), sql.SQL("true" if allowed else "false")
                )
            )
        raise
    log.info("swapped: %s is the restored database now (the replaced one was %s)", live, old)


@contextlib.contextmanager
def _admin(endpoint: Endpoint, database: str) -> Iterator[Connection[Any]]:
    # A database cannot be renamed or dropped from a session connected to it.
    conn = _connect(
        endpoint, "template1" if database == "postgres" else "postgres", autocommit=True
    )
    try:
        yield conn
    finally:
        conn.close()


def restore_postgres(
    backup: SourceBackup,
    artifact_path: Path,
    endpoint: Endpoint,
    database: str,
    ctx: RunContext,
    *,
    client_bin_dir: str | None = None,
) -> dict[str, Any]:
    """Restore into ``database`` on the endpoint's server; safe to retry.

    An existing database is only replaced after the restored copy (restored beside it as
    ``<database>__opsflow_restore``) matched the backup's fingerprint.
    """
    import psycopg
    from psycopg import sql

    clock = time.monotonic()
    artifact = single_artifact(backup)
    check_artifact(artifact_path, artifact)  # before touching anything
    client = find_client(client_bin_dir)
    staging_db, old_db = _side_name(database, RESTORE_SUFFIX), _side_name(database, OLD_SUFFIX)
    try:
        with _admin(endpoint, database) as admin:
            num, version = _server_version(admin)
            check_client(client, num, version)
            _drop(admin, staging_db, num)  # left by an earlier attempt
            replace = _exists(admin, database)
            target = staging_db if replace else database
            ctx.log.info(
                "%s: restoring %s into %s on PostgreSQL %s%s",
                backup.name, artifact.name, target, version,
                f" (then swapping it with {database})" if replace else "",
            )  # fmt: skip
            if replace:
                _create_like(admin, target, database, num)
            else:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0").format(
                        sql.Identifier(target)
                    )
                )
            try:
                argv = [
                    client.tool("pg_restore"), "--exit-on-error", "--no-password",
                    _dbname_arg(target),
                ]  # fmt: skip
                ctx.pipeline.decompress_file(
                    artifact_path, artifact, argv=argv, env=_client_env(endpoint, target)
                )
                with _connect(endpoint, target) as conn:
                    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                    actual = fingerprint(conn)
                differences = compare_fingerprints(backup.fingerprint, actual)
                if differences:
                    raise BackupError(
                        f"{backup.name}: the restored database {target} does not match the "
                        "backup: " + "; ".join(differences[:10])
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    _drop(admin, target, num)
                raise
            if replace:
                _swap(admin, database, target, old_db, ctx.log)
            _drop(admin, old_db, num)
    except psycopg.Error as err:
        raise BackupError(f"{backup.name}: restoring into {database}: {err}") from None
    tables, rows = _summary(actual["tables"])
    seconds = round(time.monotonic() - clock, 2)
    ctx.log.info(
        "%s: restored %s: %d tables, %d rows in %.1fs",
        backup.name, database, tables, rows, seconds,
    )  # fmt: skip
    return {
        "database": database,
        "replaced": replace,
        "tables": tables,
        "rows": rows,
        "sequences": len(actual["sequences"]),
        "seconds": seconds,
    }


__all__ = [
    "PgClient",
    "check_client",
    "compare_fingerprints",
    "dump_postgres",
    "find_client",
    "fingerprint",
    "restore_postgres",
    "verify_postgres",
]


def database_size(endpoint: Endpoint, dbname: str) -> int:
    """Bytes on disk of one database: an upper bound for its uncompressed dump."""
    with _connect(endpoint, dbname, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0
