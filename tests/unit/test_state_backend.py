"""Choosing the state backend, and that choosing it connects to nothing.

DAG files import the ledger and the lock while they are parsed, and a DAG file must parse
with the database down: importing the modules and constructing a ``Ledger`` or a
``StackLock`` must open no connection, only the first read or write may.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsflow.releases.ledger import FileLedgerStore, Ledger
from opsflow.releases.lock import FileLockStore, StackLock
from opsflow.state.backend import StateBackendProblem

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
PASSWORD = "pw-Secret-state-0psflow"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state"
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    for key in ("OPSFLOW_STATE_BACKEND", "OPSFLOW_STATE_CONN_ID"):
        monkeypatch.delenv(key, raising=False)
    return root


def test_the_file_backend_is_the_default(state: Path) -> None:
    assert isinstance(Ledger("demo").store, FileLedgerStore)
    assert isinstance(StackLock("demo").store, FileLockStore)
    assert Ledger("demo").where == str(state / "demo" / "ledger.jsonl")
    assert StackLock("demo").where == str(state / "demo" / "lock.json")


def test_the_postgres_backend_names_its_connection(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSFLOW_STATE_BACKEND", "postgres")
    assert StackLock("demo").where == "postgres opsflow_state opsflow_stack_lock"
    monkeypatch.setenv("OPSFLOW_STATE_CONN_ID", "shared_state")
    assert StackLock("demo").where == "postgres shared_state opsflow_stack_lock"
    assert Ledger("demo").where == "postgres shared_state opsflow_ledger_entry"
    assert not state.exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OPSFLOW_STATE_BACKEND", "sqlite", "OPSFLOW_STATE_BACKEND='sqlite' is not a state"),
        ("OPSFLOW_STATE_BACKEND", "Postgres", "OPSFLOW_STATE_BACKEND='Postgres' is not a state"),
        ("OPSFLOW_STATE_CONN_ID", "../other", "OPSFLOW_STATE_CONN_ID='../other': not a plain"),
    ],
)
def test_a_bad_setting_is_named_with_its_value(
    state: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("OPSFLOW_STATE_BACKEND", "postgres")
    monkeypatch.setenv(variable, value)
    with pytest.raises(StateBackendProblem, match=re.escape(message)):
        Ledger("demo")
    with pytest.raises(StateBackendProblem, match=re.escape(message)):
        StackLock("demo")


@pytest.fixture
def silent_port() -> Iterator[socket.socket]:
    """A listening socket nothing accepts on: a pending connection shows who connected."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(1.0)
    try:
        yield listener
    finally:
        listener.close()


def connected(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


CONSTRUCT = """
import opsflow.operators.lock, opsflow.releases.ledger, opsflow.releases.lock
import opsflow.state.backend, opsflow.state.migrate, opsflow.state.postgres
from opsflow.releases.ledger import Ledger, current_and_previous
from opsflow.releases.lock import StackLock
ledger, lock = Ledger("demo"), StackLock("demo")
print(ledger.where, lock.where, repr(ledger.store.database), sep="|")
"""
READ = """
from opsflow.releases.lock import StackLock
try:
    StackLock("demo").holder()
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_importing_and_constructing_connects_to_nothing(
    state: Path, silent_port: socket.socket, tmp_path: Path
) -> None:
    port = silent_port.getsockname()[1]
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": port,
                  "login": "opsflow", "password": PASSWORD, "schema": "state",
                  "extra": {"connect_timeout": "2"}}  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(PLUGINS),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "OPSFLOW_STATE_BACKEND": "postgres",
        "AIRFLOW_CONN_OPSFLOW_STATE": json.dumps(connection),
    }

    def run(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert run(CONSTRUCT).split("|") == [
        "postgres opsflow_state opsflow_ledger_entry",
        "postgres opsflow_state opsflow_stack_lock",
        "StateDatabase('opsflow_state')",
    ]
    assert not connected(silent_port)
    assert not state.exists()

    # The first read does connect (and, nothing answering, says where it tried).
    said = run(READ)
    assert connected(silent_port)
    assert said.startswith("StateDatabaseProblem state database (connection opsflow_state, ")
    assert f"127.0.0.1:{port}/state) cannot be reached" in said
