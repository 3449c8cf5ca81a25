"""The health-check registry: every kind module is registered, the union the stack files are
validated against is exactly the registered kinds, and the layer stays light.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from opsflow.health import KINDS, CheckResult, HealthCheck, check_from_data, run_check
from opsflow.health.container import CONTAINER_CHECK_TIMEOUT, ContainerCheck
from opsflow.health.registry import check_timeout

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
HEALTH = PLUGINS / "opsflow" / "health"
SHARED = {"__init__", "common", "registry"}


def test_every_kind_module_is_registered_once() -> None:
    modules = sorted(path.stem for path in HEALTH.glob("*.py") if path.stem not in SHARED)
    registered = sorted(kind.model.__module__.rpartition(".")[2] for kind in KINDS)
    assert registered == modules
    names = [kind.kind for kind in KINDS]
    assert len(set(names)) == len(names)
    assert set(names) == {"http", "tcp", "postgres", "redis", "grpc", "container"}


def test_the_check_union_is_built_from_the_registered_kinds() -> None:
    union, _discriminator = typing.get_args(HealthCheck)
    assert list(typing.get_args(union)) == [kind.model for kind in KINDS]


def test_the_stack_model_and_the_checks_import_no_airflow_and_no_client_library() -> None:
    """Both are imported at DAG-parse time; clients load inside the probes only."""
    script = (
        "import json, sys\n"
        "import opsflow.stack.model, opsflow.health\n"
        "heavy = ('airflow', 'psycopg', 'redis', 'grpc', 'aiohttp', 'opsflow.runtimes')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "                        or m.startswith('opsflow.runtimes'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60, check=True,
        env={"PYTHONPATH": str(PLUGINS), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert json.loads(done.stdout) == []


class RuntimeVerdict:
    """A runtime's answer for the container probe (the triggerer gets Compose's)."""

    def __init__(self, ok: bool, detail: str) -> None:
        self.ok, self.detail = ok, detail
        self.asked: list[str] = []

    async def probe_service(self, service: str) -> tuple[bool, str]:
        self.asked.append(service)
        return self.ok, self.detail


@pytest.mark.parametrize("ok", [True, False])
def test_a_container_check_reports_the_runtimes_own_verdict(ok: bool) -> None:
    runtime = RuntimeVerdict(ok, "shop-web-1 unhealthy, last check exit 1: password=hunter2")
    check = check_from_data({"kind": "container", "service": "web"})

    result = asyncio.run(run_check(check, runtime))

    assert runtime.asked == ["web"]
    assert result == CheckResult(
        "container web", ok, "shop-web-1 unhealthy, last check exit 1: password=***"
    )
    assert check_timeout(ContainerCheck(kind="container", service="web")) == (
        CONTAINER_CHECK_TIMEOUT
    )
