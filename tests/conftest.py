"""Fixtures more than one tier uses, registered once so a session starts each server once.

Each tier's conftest (tests/unit, tests/integration, tests/e2e) registers the fixtures only
that tier uses; the helpers and fixtures themselves live in tests/support, one module per
thing they hold. A conftest never imports from another conftest: test modules and
conftests import from ``support``.
"""

from __future__ import annotations

from typing import Any

import pytest

from support.receivers import http_receiver, smtp_server
from support.s3 import s3_server
from support.servers import health_http_server

__all__ = ["health_http_server", "http_receiver", "s3_server", "smtp_server"]

# Tests that share the e2e Compose project or the test image tags run on one worker, in
# order; every other module is one unit of work (its module fixtures are set up once).
ENGINE_GROUP = "engine"
ENGINE_MODULES = ("tests/e2e/", "tests/integration/test_demo_stack.py")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under ``pytest -n N`` (make test)."""
    module = nodeid.split("::", 1)[0]
    return ENGINE_GROUP if module.startswith(ENGINE_MODULES) else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Workers get whole units (see :func:`work_unit`): the waits are on Docker, PostgreSQL
    and Airflow subprocesses, so two workers overlap them on two cores. (xdist's own
    ``loadgroup`` marks are ignored by pytest 9's node ids, hence a scheduler.)"""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return UnitScheduling(config, log)
