"""``tcp``: the port accepts a connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from opsflow.durations import Duration
from opsflow.health.common import (
    CheckKind,
    CheckModel,
    CheckResult,
    ServiceProbe,
    probe_host,
    resolved_refusal,
)


class TcpCheck(CheckModel):
    kind: Literal["tcp"]
    host: Annotated[str, AfterValidator(probe_host)] = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    timeout: Duration = timedelta(seconds=3)


def tcp_name(check: TcpCheck) -> str:
    return f"tcp {check.host}:{check.port}"


async def check_tcp(check: TcpCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    """Connect to the addresses the host resolved to, after refusing link-local ones."""
    name = tcp_name(check)
    refusal = await resolved_refusal(check.host, check.port)
    if refusal is not None:
        return CheckResult(name, False, refusal)
    infos = await asyncio.get_running_loop().getaddrinfo(
        check.host, check.port, type=socket.SOCK_STREAM
    )
    error: OSError | None = None
    for info in infos:
        try:
            _reader, writer = await asyncio.open_connection(str(info[4][0]), check.port)
            break
        except OSError as exc:
            error = error or exc
    else:
        raise error or OSError(f"{check.host} resolved to no address")
    writer.close()
    # The port accepted the connection, which is all this check asks.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(name, True, "connected")


KIND = CheckKind(TcpCheck, name=tcp_name, probe=check_tcp)
