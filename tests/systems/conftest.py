"""Fixtures of the systems tier: the five real systems' replicas run under Airflow.

Every module here is marked ``systems`` and runs heavy (Docker builds, ``airflow dags
test``): wrap runs in ``flock -o /tmp/opsflow-heavy.lock``. The replicas themselves, their
overlay stack files, the ledger and the checks every module makes live in
support.replicas.
"""

from __future__ import annotations

import pytest

# The checks the five modules share live in support.replicas; rewritten like the modules'
# own asserts, a failing one reports the same values it did when it stood in the module.
pytest.register_assert_rewrite("support.replicas")

from support.replicas import require_engine  # noqa: E402


@pytest.fixture(scope="session")
def engine() -> None:
    """Docker Engine, Compose v2 and the base image: a skip without them, a failure in CI."""
    require_engine()
