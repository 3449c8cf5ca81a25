"""``postgres``: ``SELECT 1`` through an Airflow connection."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from opsflow.connections import ConnId, aendpoint, postgres_params
from opsflow.durations import Duration
from opsflow.health.common import CheckKind, CheckModel, CheckResult, ServiceProbe


class PostgresCheck(CheckModel):
    """``SELECT 1`` through an Airflow connection (credentials never in the stack file)."""

    kind: Literal["postgres"]
    conn_id: ConnId
    timeout: Duration = timedelta(seconds=5)


def postgres_name(check: PostgresCheck) -> str:
    return f"postgres {check.conn_id}"


async def check_postgres(check: PostgresCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    """``SELECT 1`` with the connection's credentials and TLS settings (they never leave
    this function); the check's own timeout bounds the connect."""
    name = postgres_name(check)
    import psycopg

    params = postgres_params(await aendpoint(check.conn_id)).with_settings(
        connect_timeout=max(1, int(check.timeout.total_seconds()))
    )
    async with await psycopg.AsyncConnection.connect(
        **params.connect_kwargs(), autocommit=True
    ) as conn:
        cursor = await conn.execute("SELECT 1")
        row = await cursor.fetchone()
        version = conn.info.server_version
    if not row or row[0] != 1:
        return CheckResult(name, False, f"SELECT 1 returned {row!r}")
    return CheckResult(name, True, f"SELECT 1 ok (server {version})")


KIND = CheckKind(PostgresCheck, name=postgres_name, probe=check_postgres)
