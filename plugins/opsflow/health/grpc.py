"""``grpc``: ``grpc.health.v1.Health/Check`` answers SERVING."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from opsflow.durations import Duration
from opsflow.health.common import (
    CheckKind,
    CheckModel,
    CheckResult,
    Endpoint,
    ServiceProbe,
    clip,
    endpoint_address,
    one_address,
    probe_host,
    resolved_refusal,
)


class GrpcCheck(CheckModel):
    """``grpc.health.v1.Health/Check``; an empty service asks for the server's overall state."""

    kind: Literal["grpc"]
    target: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d+$")
    endpoint: Endpoint | None = None
    service: str = ""
    timeout: Duration = timedelta(seconds=5)

    @field_validator("target")
    @classmethod
    def _target_host(cls, target: str | None) -> str | None:
        if target is not None:
            probe_host(target.rsplit(":", 1)[0])
        return target

    @model_validator(mode="after")
    def _one_address(self) -> GrpcCheck:
        one_address(self.target, self.endpoint, "target")
        return self


def grpc_name(check: GrpcCheck) -> str:
    return f"grpc {check.target or check.endpoint} {check.service or '(server)'}"


async def check_grpc(check: GrpcCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    name = grpc_name(check)
    if check.endpoint is not None:
        host, number = await endpoint_address(check.endpoint, runtime)
        target = f"[{host}]:{number}" if ":" in host else f"{host}:{number}"
    else:
        target = check.target or ""
        host, _, port = target.rpartition(":")
        host, number = host.strip("[]"), int(port)
    refusal = await resolved_refusal(host, number)
    if refusal is not None:
        return CheckResult(name, False, refusal)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
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
