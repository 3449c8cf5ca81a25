"""Fixtures of the unit tier (servers in threads of the test process, temp directories)."""

from __future__ import annotations

from support.safety import system_victim
from support.servers import grpc_health_server, tcp_listener

__all__ = ["grpc_health_server", "system_victim", "tcp_listener"]
