"""Which state backend this process uses, read from its environment on every construction.

Read per ``Ledger``/``StackLock`` rather than once at import, so a DAG file parsed before
the variable is set (or a test that sets it) is not stuck with a stale choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opsflow.connections import _conn_id
from opsflow.errors import OpsflowError

BACKEND_ENV = "OPSFLOW_STATE_BACKEND"
CONN_ID_ENV = "OPSFLOW_STATE_CONN_ID"
DEFAULT_CONN_ID = "opsflow_state"
FILE = "file"
POSTGRES = "postgres"
BACKENDS = (FILE, POSTGRES)


class StateBackendProblem(OpsflowError, ValueError):
    """The state backend settings cannot be used; names the variable and its value."""


@dataclass(frozen=True)
class StateBackend:
    kind: str  # one of BACKENDS
    conn_id: str = ""  # the Airflow connection of the postgres backend


def selected() -> StateBackend:
    """``$OPSFLOW_STATE_BACKEND`` (``file`` when unset) and, for ``postgres``, the
    connection id ``$OPSFLOW_STATE_CONN_ID`` (``opsflow_state`` when unset)."""
    kind = os.environ.get(BACKEND_ENV, "").strip() or FILE
    if kind not in BACKENDS:
        raise StateBackendProblem(
            f"{BACKEND_ENV}={kind!r} is not a state backend: use one of {', '.join(BACKENDS)}"
        )
    if kind == FILE:
        return StateBackend(FILE)
    conn_id = os.environ.get(CONN_ID_ENV, "").strip() or DEFAULT_CONN_ID
    try:
        _conn_id(conn_id)
    except ValueError as exc:
        raise StateBackendProblem(f"{CONN_ID_ENV}={conn_id!r}: {exc}") from None
    return StateBackend(POSTGRES, conn_id)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "CONN_ID_ENV",
    "DEFAULT_CONN_ID",
    "StateBackend",
    "StateBackendProblem",
    "selected",
]
