"""Fixtures more than one tier uses, registered once so a session starts each server once.

Each tier's conftest (tests/unit, tests/integration, tests/e2e) registers the fixtures only
that tier uses; the helpers and fixtures themselves live in tests/support, one module per
thing they hold. A conftest never imports from another conftest: test modules and
conftests import from ``support``.
"""

from __future__ import annotations

from support.receivers import http_receiver, smtp_server
from support.s3 import s3_server
from support.servers import health_http_server

pytest_plugins = ["support.timing"]

__all__ = ["health_http_server", "http_receiver", "s3_server", "smtp_server"]
