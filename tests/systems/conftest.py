"""Fixtures of the systems tier: the five real systems' replicas run under Airflow.

Every module here is marked ``systems`` and runs heavy (Docker builds, ``airflow dags
test``): wrap runs in ``flock -o /tmp/opsflow-heavy.lock``. The replicas themselves, their
overlay stack files and the ledger helpers live in support.replicas.
"""

from __future__ import annotations

import pytest

from support.replicas import require_engine


@pytest.fixture(scope="session")
def engine() -> None:
    """Docker Engine, Compose v2 and the base image: a skip without them, a failure in CI."""
    require_engine()
