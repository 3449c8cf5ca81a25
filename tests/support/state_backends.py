"""The state backends the ledger and lock tests run on: files, and a real PostgreSQL.

The postgres variant gets a database of its own per test (created on the session's
``postgres_server``, dropped afterwards), so no test sees another's rows, and reaches it
the way a task does: ``OPSFLOW_STATE_BACKEND=postgres`` and the Airflow connection
``opsflow_state`` from ``AIRFLOW_CONN_OPSFLOW_STATE``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsflow.state.backend import selected
from support.servers import PostgresServer, postgres_server

if TYPE_CHECKING:
    import psycopg

BACKENDS = ["file", pytest.param("postgres", marks=pytest.mark.integration)]


def connect(server: PostgresServer, dbname: str) -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


@contextmanager
def fresh_database(server: PostgresServer, prefix: str = "opsflow_state") -> Iterator[str]:
    """A new, empty database, dropped afterwards (with whatever still connects to it)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with connect(server, "postgres") as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with connect(server, "postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connection_json(server: PostgresServer, dbname: str) -> str:
    """An Airflow connection as ``AIRFLOW_CONN_<ID>`` JSON (no URI quoting of the password)."""
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": server.host,
            "port": server.port,
            "login": server.user,
            "password": server.password,
            "schema": dbname,
        }
    )


def use_postgres(
    monkeypatch: pytest.MonkeyPatch, server: PostgresServer, dbname: str
) -> dict[str, str]:
    """Select the postgres backend on ``dbname``; returns the variables it set."""
    settings = {
        "OPSFLOW_STATE_BACKEND": "postgres",
        "AIRFLOW_CONN_OPSFLOW_STATE": connection_json(server, dbname),
    }
    monkeypatch.delenv("OPSFLOW_STATE_CONN_ID", raising=False)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return settings


def backend_state(
    request: pytest.FixtureRequest, root: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The body of a parametrized ``state`` fixture: ``root`` is ``$OPSFLOW_STATE_DIR``
    for both (the postgres variant must leave it uncreated), and the backend is
    ``request.param``."""
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    monkeypatch.delenv("OPSFLOW_STATE_BACKEND", raising=False)
    if request.param == "file":
        yield root
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with fresh_database(server) as dbname:
        use_postgres(monkeypatch, server, dbname)
        yield root


def on_files() -> bool:
    """Whether the selected backend is the file one (for the checks of its file format)."""
    return selected().kind == "file"


__all__ = [
    "BACKENDS",
    "backend_state",
    "connect",
    "connection_json",
    "fresh_database",
    "on_files",
    "postgres_server",
    "use_postgres",
]
