"""The PostgreSQL client side of a backup: which pg_dump/pg_restore to use, whether they can
handle the server, and how every connection and child process reaches it.

Connection parameters come from :mod:`opsflow.connections`, so psycopg and the client tools
honour the same connection (TLS, options, timeouts). Credentials reach the tools only
through ``PGPASSWORD`` in their environment, and every parameter travels as an environment
variable (``PGDATABASE`` is never parsed as a connection string, unlike ``-d``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsflow.backup.manifest import BackupError
from opsflow.connections import Endpoint, PostgresParams, postgres_params

if TYPE_CHECKING:
    from psycopg import Connection

APP_NAME = "opsflow-backup"
CONNECT_TIMEOUT = 10
# hashtextextended() exists from 11 on; older servers are long out of support.
MIN_SERVER_VERSION_NUM = 110000
_VERSION = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*\S*(?:\s.*)?)$")


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


def version_major(server_version: str) -> int | None:
    """The major version of a printed server version (``15.4`` -> 15, ``9.6.1`` -> 9)."""
    match = re.match(r"(\d+)(?:\.(\d+))?", server_version)
    if not match:
        return None
    major = int(match.group(1))
    return major if major >= 10 else 9


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


def params(endpoint: Endpoint, dbname: str) -> PostgresParams:
    """``dbname`` on the endpoint's server, as the connection says, with the backup's
    application name and connect timeout where the connection names none."""
    return (
        postgres_params(endpoint)
        .with_dbname(dbname)
        .with_defaults(application_name=APP_NAME, connect_timeout=CONNECT_TIMEOUT)
    )


def connect(endpoint: Endpoint, dbname: str, *, autocommit: bool = False) -> Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(**params(endpoint, dbname).connect_kwargs(), autocommit=autocommit)
    except psycopg.Error as err:
        where = f"{endpoint.host}:{endpoint.port}/{dbname}"
        raise BackupError(f"cannot connect to PostgreSQL at {where}: {err}") from None


def client_env(endpoint: Endpoint, dbname: str) -> dict[str, str]:
    """libpq's environment for a child; the password never goes into argv."""
    return params(endpoint, dbname).client_env()


def dbname_arg(dbname: str) -> str:
    """pg_restore connects only with -d, which parses a value with ``=`` as a connection
    string: give it one holding just the (quoted) name; the rest comes from the env."""
    from psycopg.conninfo import make_conninfo

    return f"--dbname={make_conninfo('', dbname=dbname)}"


def server_version(conn: Connection[Any]) -> tuple[int, str]:
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def database_size(endpoint: Endpoint, dbname: str) -> int:
    """Bytes on disk of one database: an upper bound for its uncompressed dump."""
    with connect(endpoint, dbname, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0
