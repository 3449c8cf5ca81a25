"""``redis``: ``PING`` through an Airflow connection."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from opsflow.connections import ConnId, aendpoint, redis_params
from opsflow.durations import Duration
from opsflow.health.common import CheckKind, CheckModel, CheckResult, ServiceProbe


class RedisCheck(CheckModel):
    """Redis ``PING`` through an Airflow connection (host, port, password, TLS)."""

    kind: Literal["redis"]
    conn_id: ConnId
    timeout: Duration = timedelta(seconds=3)


def redis_name(check: RedisCheck) -> str:
    return f"redis {check.conn_id}"


async def check_redis(check: RedisCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    name = redis_name(check)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    params = redis_params(await aendpoint(check.conn_id))
    timeout = check.timeout.total_seconds()
    client = aioredis.Redis(
        **params.client_kwargs(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # The gate retries by rounds; a client retrying a refused password only hides it.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        pong = await client.ping()
    finally:
        await client.aclose()
    if pong is not True:
        return CheckResult(name, False, f"PING answered {pong!r}")
    return CheckResult(name, True, "PONG")


KIND = CheckKind(RedisCheck, name=redis_name, probe=check_redis)
