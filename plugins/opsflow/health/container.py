"""``container``: the runtime's own verdict on a service (Docker's health status today).

The probe knows no runtime: it asks the :class:`~opsflow.health.common.ServiceProbe` it is
given, which the runtime built and which travels to the triggerer as plain data.
"""

from __future__ import annotations

from typing import Literal

from opsflow.health.common import CheckKind, CheckModel, CheckResult, ServiceProbe, clip

CONTAINER_CHECK_TIMEOUT = 15.0
"""Seconds a container check may take (``docker compose ps`` plus ``docker inspect``)."""


class ContainerCheck(CheckModel):
    """The runtime's health status of ``service`` (or running, without a healthcheck)."""

    kind: Literal["container"]
    service: str


def container_name(check: ContainerCheck) -> str:
    return f"container {check.service}"


def container_timeout(check: ContainerCheck) -> float:
    return CONTAINER_CHECK_TIMEOUT


async def check_container(check: ContainerCheck, runtime: ServiceProbe | None) -> CheckResult:
    """Healthy, or running without a healthcheck, as the runtime tells it."""
    name = container_name(check)
    if runtime is None:
        return CheckResult(name, False, "no runtime given for a container check")
    ok, detail = await runtime.probe_service(check.service)
    return CheckResult(name, ok, clip(detail))


KIND = CheckKind(
    ContainerCheck, name=container_name, probe=check_container, timeout=container_timeout
)
