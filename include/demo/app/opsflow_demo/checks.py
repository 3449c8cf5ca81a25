"""Readiness: the dependencies answer and the database schema is the release's schema."""

from __future__ import annotations

from typing import Any

import psycopg2
import redis  # noqa: TID253 - container app, not DAG-parse code

from opsflow_demo.settings import Release, pg_params, redis_params


def db_connect() -> Any:
    return psycopg2.connect(**pg_params())


def schema_version(conn: Any) -> str | None:
    """The applied alembic revision, or None when the schema was never migrated."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT version_num FROM alembic_version")
        row = cur.fetchone()
        return str(row[0]) if row else None


def readiness(release: Release) -> tuple[bool, dict[str, Any]]:
    reasons: list[str] = []
    detail: dict[str, Any] = {"version": release.version, "expected_schema": release.schema_head}
    try:
        conn = db_connect()
    except psycopg2.Error as exc:
        reasons.append(f"database unreachable: {str(exc).strip().splitlines()[0]}")
    else:
        try:
            current = schema_version(conn)
            detail["schema"] = current
            if current is None:
                reasons.append("database schema not migrated")
            elif current != release.schema_head:
                reasons.append(f"schema {current} != expected {release.schema_head}")
        except psycopg2.Error as exc:
            reasons.append(f"database query failed: {str(exc).strip().splitlines()[0]}")
        finally:
            conn.close()
    try:
        client = redis.Redis(**redis_params())
        try:
            if not client.ping():
                reasons.append("redis did not answer PING")
        finally:
            client.close()
    except redis.RedisError as exc:
        reasons.append(f"redis unreachable: {exc}")
    if reasons:
        return False, {"status": "not-ready", "reasons": reasons, **detail}
    return True, {"status": "ready", **detail}
