"""The kinds of health check, and what the sensors and the gate trigger do with any check.

Each kind is one module of this package holding its model, its display name and its probe
(``KIND``); :data:`KINDS` lists them, and the :data:`HealthCheck` union that stack files
and trigger arguments are validated against is built from that list. A new kind is one
module and its line here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter

from opsflow.health.common import CheckKind, CheckModel, CheckResult, ServiceProbe, first_line
from opsflow.health.container import KIND as CONTAINER
from opsflow.health.grpc import KIND as GRPC
from opsflow.health.http import KIND as HTTP
from opsflow.health.postgres import KIND as POSTGRES
from opsflow.health.redis import KIND as REDIS
from opsflow.health.tcp import KIND as TCP

KINDS: tuple[CheckKind[Any], ...] = (HTTP, TCP, POSTGRES, REDIS, GRPC, CONTAINER)
_BY_KIND: dict[str, CheckKind[Any]] = {kind.kind: kind for kind in KINDS}
_MODELS: tuple[type[CheckModel], ...] = tuple(kind.model for kind in KINDS)

if TYPE_CHECKING:
    HealthCheck = CheckModel
else:
    HealthCheck = Annotated[
        Union[_MODELS],  # noqa: UP007 - built at run time from the registered kinds
        Field(discriminator="kind"),
    ]

_CHECK_ADAPTER: TypeAdapter[HealthCheck] = TypeAdapter(HealthCheck)
_CHECKS_ADAPTER: TypeAdapter[list[HealthCheck]] = TypeAdapter(list[HealthCheck])


def kind_of(check: HealthCheck) -> CheckKind[Any]:
    kind = _BY_KIND.get(check.kind) if isinstance(check, _MODELS) else None
    if kind is None:
        raise TypeError(f"not a registered health check: {check!r}")
    return kind


def check_to_data(check: HealthCheck) -> dict[str, Any]:
    """JSON-able form of a check that :func:`check_from_data` reads back.

    Durations become float seconds: pydantic's JSON form of a timedelta (``PT5S``) is not
    accepted back by the duration parser.
    """
    data = check.model_dump(mode="json", exclude_none=True)
    for key, value in check.model_dump(mode="python", exclude_none=True).items():
        if isinstance(value, timedelta):
            data[key] = value.total_seconds()
    return data


def check_from_data(data: Mapping[str, Any] | HealthCheck) -> HealthCheck:
    """Validate one check given as a model or as plain data (as stored in trigger kwargs)."""
    if isinstance(data, _MODELS):
        return data
    return _CHECK_ADAPTER.validate_python(data)


def checks_from_data(data: list[Any]) -> list[HealthCheck]:
    return _CHECKS_ADAPTER.validate_python(
        [check_to_data(c) if not isinstance(c, Mapping) else c for c in data]
    )


def check_name(check: HealthCheck) -> str:
    """Stable, human-readable name of a check, used in events and failure messages."""
    name: str = kind_of(check).name(check)
    return name


def check_timeout(check: HealthCheck) -> float:
    """Seconds the probe of ``check`` may take before it counts as failed."""
    seconds: float = kind_of(check).timeout(check)
    return seconds


async def run_check(check: HealthCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    """Run one check under its own timeout; every failure becomes ``ok=False``.

    ``runtime`` answers the checks only the runtime can (container health); the other
    kinds ignore it.
    """
    kind = kind_of(check)
    name = kind.name(check)
    timeout = kind.timeout(check)
    try:
        return await asyncio.wait_for(kind.probe(check, runtime), timeout=timeout)
    except TimeoutError:
        return CheckResult(name, False, f"timed out after {timeout:g}s")
    except Exception as exc:
        return CheckResult(name, False, first_line(exc))
