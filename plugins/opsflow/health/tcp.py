"""``tcp``: the port accepts a connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from opsflow.durations import Duration
from opsflow.health.common import (
    CheckKind,
    CheckModel,
    CheckResult,
    Endpoint,
    ServiceProbe,
    endpoint_address,
    one_address,
    probe_host,
    resolved_refusal,
)


class TcpCheck(CheckModel):
    """``host:port``, or a service's container port (``endpoint``) found on the host."""

    kind: Literal["tcp"]
    host: Annotated[str, AfterValidator(probe_host)] = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    endpoint: Endpoint | None = None
    timeout: Duration = timedelta(seconds=3)

    @model_validator(mode="after")
    def _one_address(self) -> TcpCheck:
        one_address(self.port, self.endpoint, "port")
        return self


def tcp_name(check: TcpCheck) -> str:
    return f"tcp {check.endpoint or f'{check.host}:{check.port}'}"


async def check_tcp(check: TcpCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    """Connect to the addresses the host resolved to, after refusing link-local ones."""
    name = tcp_name(check)
    host, port = check.host, check.port or 0
    if check.endpoint is not None:
        host, port = await endpoint_address(check.endpoint, runtime)
    refusal = await resolved_refusal(host, port)
    if refusal is not None:
        return CheckResult(name, False, refusal)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for info in infos:
        try:
            _reader, writer = await asyncio.open_connection(str(info[4][0]), port)
            break
        except OSError as exc:
            error = error or exc
    else:
        raise error or OSError(f"{host} resolved to no address")
    writer.close()
    # The port accepted the connection, which is all this check asks.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    detail = "connected" if check.endpoint is None else f"connected to {host}:{port}"
    return CheckResult(name, True, detail)


KIND = CheckKind(TcpCheck, name=tcp_name, probe=check_tcp)
