"""The rules that end a health gate at once, one by one, on the facts the runtime reports.

The same rules against real containers: tests/integration/test_gate_on_containers.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from opsflow.runtimes.base import ContainerState
from opsflow.runtimes.evidence import (
    conclusive,
    judge,
    note_restarts,
    touched_services,
    verdicts_in,
)
from opsflow.sensors.health import format_gate_failure
from opsflow.triggers.health import failed_event

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RUNNING = ContainerState(
    service="api", name="shop-api-1", image_id="sha256:new", state="running", health="healthy",
    restarts=0, container_id="c1", exit_code=0, created_at=NOW, started_at=NOW,
)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"state": "exited", "exit_code": 3}, "exited with code 3"),
        ({"state": "exited", "exit_code": 137, "oom_killed": True},
         "exited with code 137 (killed: out of memory)"),
        ({"state": "restarting", "exit_code": 1, "restarts": 4},
         "exited with code 1 and is restarting (restart 4): a crash loop"),
        ({"state": "running", "restarts": 3, "exit_code": 2},
         "restarted 3 times during the gate (crash loop)"),
        ({"health": "unhealthy", "last_check": "exit 1: connection refused"},
         "is unhealthy by the runtime's own healthcheck after its retries, "
         "last check exit 1: connection refused"),
        ({"state": "created", "exit_code": 127, "error": "exec: \"/app\": stat /app: no such\n"
          "file or directory"},
         'cannot start: exec: "/app": stat /app: no such file or directory'),
        ({"state": "dead"}, "is dead (the runtime could not stop or remove it cleanly)"),
    ],
)  # fmt: skip
def test_conclusive_kinds(changes: dict[str, object], expected: str) -> None:
    assert judge(replace(RUNNING, **changes), restarts_before=0) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {},  # healthy
        {"health": "starting"},  # inside its start period, or not yet checked
        {"health": None},  # running without a healthcheck
        {"state": "created", "exit_code": 0},  # not started yet
        {"state": "exited", "exit_code": 0, "health": None},  # a one-shot service that finished
        {"state": "paused"},
        {"restarts": 2},  # restarted before the gate began: no growth during it
    ],
)
def test_inconclusive_kinds_keep_the_gate_waiting(changes: dict[str, object]) -> None:
    state = replace(RUNNING, **changes)  # type: ignore[arg-type]
    assert judge(state, restarts_before=state.restarts) is None


def test_restart_growth_is_counted_from_the_first_sight_of_each_container() -> None:
    baseline: dict[str, int] = {}
    note_restarts([replace(RUNNING, restarts=2)], baseline)
    note_restarts([replace(RUNNING, restarts=5)], baseline)  # seen before: kept at 2
    assert baseline == {"c1": 2}
    assert conclusive([replace(RUNNING, restarts=2)], {"api"}, baseline) == []
    [evidence] = conclusive([replace(RUNNING, restarts=3)], {"api"}, baseline)
    assert evidence.line == "service api: shop-api-1 restarted once during the gate (crash loop)"


def test_only_watched_services_count() -> None:
    crashed = replace(RUNNING, service="postgres", name="shop-postgres-1", state="exited",
                      exit_code=1, container_id="c2")  # fmt: skip
    assert conclusive([crashed], {"api"}, {}) == []
    assert [e.service for e in conclusive([crashed], {"api", "postgres"}, {})] == ["postgres"]


def test_touched_services_are_those_created_or_started_since_the_run_began() -> None:
    before = NOW - timedelta(hours=3)
    kept = replace(RUNNING, service="postgres", created_at=before, started_at=before)
    restarted = replace(RUNNING, service="worker", created_at=before, started_at=NOW)
    never_started = replace(RUNNING, service="job", created_at=NOW, started_at=None)
    states = [RUNNING, kept, restarted, never_started]
    assert touched_services(states, NOW - timedelta(seconds=30)) == ["api", "job", "worker"]


def test_a_failed_event_names_the_evidence_first_in_the_alert_line() -> None:
    [evidence] = conclusive([replace(RUNNING, state="restarting", exit_code=3, restarts=5)],
                            {"api"}, {})  # fmt: skip
    event = failed_event([evidence.with_output("ImportError: no module named x")], [], 1, 2.04)
    message = format_gate_failure(event)
    assert message.splitlines()[0] == (
        "health gate failed after 2s (conclusive evidence from the runtime): service api: "
        "shop-api-1 exited with code 3 and is restarting (restart 5): a crash loop; last "
        "output: ImportError: no module named x"
    )
    assert datetime.fromisoformat(event["decided_at"]) >= NOW


def test_the_runtimes_verdict_is_in_when_every_watched_service_runs_healthy() -> None:
    plain = replace(RUNNING, service="worker", health=None, container_id="c3")
    assert verdicts_in([RUNNING, plain], {"api", "worker"})
    assert not verdicts_in([RUNNING], {"api", "worker"})  # no container of worker yet
    assert not verdicts_in([RUNNING, replace(plain, health="starting")], {"api", "worker"})
    assert not verdicts_in([replace(RUNNING, state="restarting")], {"api"})
    assert verdicts_in([RUNNING, replace(plain, state="exited")], {"api"})  # not watched
