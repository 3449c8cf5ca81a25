"""Restore of a PostgreSQL backup into a live server; safe to retry.

An existing database is only replaced after the restored copy, restored beside it, matched
the backup's fingerprint; the copy then takes the database's name, owner, locale, limits,
settings and grants, and the replaced one is dropped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsflow.backup.context import RunContext
from opsflow.backup.files import single_artifact
from opsflow.backup.manifest import BackupError, SourceBackup
from opsflow.backup.postgres.client import (
    check_client,
    client_env,
    connect,
    dbname_arg,
    find_client,
    server_version,
)
from opsflow.backup.postgres.fingerprint import compare_fingerprints, fingerprint, summarize
from opsflow.backup.stream import check_artifact
from opsflow.connections import Endpoint
from opsflow.runtimes.process import LineLogger

if TYPE_CHECKING:
    from psycopg import Connection

RESTORE_SUFFIX = "__opsflow_restore"
OLD_SUFFIX = "__opsflow_old"


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
    conn = connect(endpoint, "template1" if database == "postgres" else "postgres", autocommit=True)
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
            num, version = server_version(admin)
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
                    dbname_arg(target),
                ]  # fmt: skip
                ctx.pipeline.decompress_file(
                    artifact_path, artifact, argv=argv, env=client_env(endpoint, target)
                )
                with connect(endpoint, target) as conn:
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
    tables, rows = summarize(actual["tables"])
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
