"""A migrated SQLite Airflow home for tests that run ``airflow dags test`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO_ROOT


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated SQLite Airflow home for ``airflow dags test`` subprocesses.

    Sets ``AIRFLOW_HOME``, ``AIRFLOW__CORE__DAGS_FOLDER`` (``<home>/dags``, where tests
    write their DAG files), ``AIRFLOW__CORE__LOAD_EXAMPLES`` and
    ``AIRFLOW__CORE__PLUGINS_FOLDER`` in ``os.environ`` for the session. An Airflow
    already imported in the pytest process keeps its config: run DAGs in a subprocess.
    """
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "dags").mkdir()
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        airflow = Path(sys.executable).parent / "airflow"
        result = subprocess.run(
            [str(airflow), "db", "migrate"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, f"airflow db migrate failed:\n{result.stderr[-3000:]}"
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
