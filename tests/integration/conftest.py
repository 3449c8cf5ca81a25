"""Fixtures of the integration tier: real services, each started once per session."""

from __future__ import annotations

from support.airflow_home import airflow_home
from support.backup import pg_image, redis_image
from support.servers import grpc_health_server, postgres_server, redis_server

__all__ = [
    "airflow_home",
    "grpc_health_server",
    "pg_image",
    "postgres_server",
    "redis_image",
    "redis_server",
]
