"""Health checks: one module per kind (model, display name, probe) and the registry.

Below the stack model (which is made of these models) and above the connections: nothing
here imports ``opsflow.stack``, ``opsflow.runtimes`` or Airflow at module level.
"""

from opsflow.health.common import CheckModel, CheckResult, ServiceProbe
from opsflow.health.container import ContainerCheck
from opsflow.health.grpc import GrpcCheck
from opsflow.health.http import HttpCheck
from opsflow.health.postgres import PostgresCheck
from opsflow.health.redis import RedisCheck
from opsflow.health.registry import (
    KINDS,
    HealthCheck,
    check_from_data,
    check_name,
    check_timeout,
    check_to_data,
    checks_from_data,
    run_check,
)
from opsflow.health.tcp import TcpCheck

__all__ = [
    "KINDS",
    "CheckModel",
    "CheckResult",
    "ContainerCheck",
    "GrpcCheck",
    "HealthCheck",
    "HttpCheck",
    "PostgresCheck",
    "RedisCheck",
    "ServiceProbe",
    "TcpCheck",
    "check_from_data",
    "check_name",
    "check_timeout",
    "check_to_data",
    "checks_from_data",
    "run_check",
]
