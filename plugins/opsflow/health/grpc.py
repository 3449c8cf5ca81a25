"""``grpc``: ``grpc.health.v1.Health/Check`` answers SERVING."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from opsflow.durations import Duration
from opsflow.health.common import (
    CheckKind,
    CheckModel,
    CheckResult,
    ServiceProbe,
    clip,
    probe_host,
    resolved_refusal,
)


class GrpcCheck(CheckModel):
    """``grpc.health.v1.Health/Check``; an empty service asks for the server's overall state."""

    kind: Literal["grpc"]
    target: str = Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d+$")
    service: str = ""
    timeout: Duration = timedelta(seconds=5)

    @field_validator("target")
    @classmethod
    def _target_host(cls, target: str) -> str:
        probe_host(target.rsplit(":", 1)[0])
        return target


def grpc_name(check: GrpcCheck) -> str:
    return f"grpc {check.target} {check.service or '(server)'}"


async def check_grpc(check: GrpcCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    name = grpc_name(check)
    host, _, port = check.target.rpartition(":")
    refusal = await resolved_refusal(host.strip("[]"), int(port))
    if refusal is not None:
        return CheckResult(name, False, refusal)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(check.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=check.service),
                timeout=check.timeout.total_seconds(),
            )
        except grpc.aio.AioRpcError as exc:
            return CheckResult(name, False, clip(f"{exc.code().name}: {exc.details() or ''}"))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return CheckResult(name, response.status == health_pb2.HealthCheckResponse.SERVING, status)


KIND = CheckKind(GrpcCheck, name=grpc_name, probe=check_grpc)
