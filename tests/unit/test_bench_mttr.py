"""scripts/bench_mttr.py: reading Airflow 3 task logs and judging the recovery targets."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import bench_mttr
import pytest
from bench_mttr import CASES, Bench, CaseResult

T0 = datetime(2026, 12, 1, 18, 3, 15, tzinfo=UTC).timestamp()


def _line(at: str, event: str, **extra: object) -> str:
    return json.dumps({"timestamp": at, "level": "info", "event": event, **extra})


def test_log_lines_keep_their_time_and_event_and_skip_what_is_not_json() -> None:
    text = "\n".join(
        [
            _line("2026-12-01T18:03:15.250000Z", "::group::Pre Execute"),
            "Traceback (most recent call last):",
            '{"event": "a JSON line without a timestamp"}',
            _line("2026-12-01T18:03:16Z", "$ docker compose stop api worker"),
        ]
    )

    lines = bench_mttr.parse_log(text)

    assert [line.event for line in lines] == [
        "::group::Pre Execute",
        "$ docker compose stop api worker",
    ]
    assert lines[0].at == pytest.approx(T0 + 0.25)
    assert lines[1].at == pytest.approx(T0 + 1)


def test_the_first_command_is_the_earliest_dollar_line() -> None:
    lines = bench_mttr.parse_log(
        "\n".join(
            [
                _line("2026-12-01T18:03:20Z", "$ docker compose up --detach"),
                _line("2026-12-01T18:03:17Z", "rolling back 1.4.0 -> 1.1.0 because ..."),
                _line("2026-12-01T18:03:18Z", "$ docker compose stop api worker"),
                _line("2026-12-01T18:03:16Z", "running: $ is not at the start"),
            ]
        )
    )

    found = bench_mttr.first_command(lines)

    assert found is not None
    assert found.event == "$ docker compose stop api worker"
    assert found.at == pytest.approx(T0 + 3)
    assert bench_mttr.first_command(lines[1:2]) is None


def test_the_gate_verdict_prefers_decided_at_over_the_failure_line() -> None:
    message = "health gate failed after 1s (conclusive evidence from the runtime): service api"
    lines = bench_mttr.parse_log(
        "\n".join(
            [
                _line(
                    "2026-12-01T18:03:18Z", "Health round 1 in the worker: 1 of 8 checks failing"
                ),
                _line(
                    "2026-12-01T18:03:20.5Z",
                    f"Health gate decided at 2026-12-01T18:03:19.750000+00:00: {message}",
                ),
                _line(
                    "2026-12-01T18:03:21Z",
                    "Task failed with exception",
                    error_detail=[{"exc_type": "AirflowFailException", "exc_value": message}],
                ),
            ]
        )
    )

    assert bench_mttr.decided_at(lines) == pytest.approx(T0 + 4.75)
    failed = bench_mttr.gate_failed_line(lines)
    assert failed is not None and failed.at == pytest.approx(T0 + 5.5)
    # Without the lead's decided_at, the exception line is what says the gate failed.
    assert bench_mttr.decided_at(lines[2:]) is None
    failed = bench_mttr.gate_failed_line(lines[2:])
    assert failed is not None and failed.event == "Task failed with exception"


def test_decided_at_without_an_offset_is_utc() -> None:
    lines = bench_mttr.parse_log(_line("2026-12-01T18:03:30Z", "decided at 2026-12-01T18:03:25"))

    assert bench_mttr.decided_at(lines) == pytest.approx(T0 + 10)


def test_the_deferred_gate_timeout_is_read_from_its_log_line() -> None:
    lines = bench_mttr.parse_log(
        _line(
            "2026-12-01T18:03:30Z",
            "Deferring health gate: 8 checks, 3 consecutive rounds every 3.0s, timeout 120.0s",
        )
    )

    assert bench_mttr.gate_timeout_in_effect(lines) == 120.0
    assert bench_mttr.gate_timeout_in_effect([]) is None


def test_task_and_triggerer_logs_of_every_attempt_are_read_apart(tmp_path: Path) -> None:
    (tmp_path / "attempt=1.log").write_text(_line("2026-12-01T18:03:16Z", "try 1") + "\n")
    (tmp_path / "attempt=2.log").write_text(_line("2026-12-01T18:03:15Z", "try 2") + "\n")
    (tmp_path / "attempt=2.log.trigger.7.log").write_text(
        _line("2026-12-01T18:03:17Z", "trigger: decided at 2026-12-01T18:03:17Z") + "\n"
    )

    task, trigger = bench_mttr.read_task_log(tmp_path)

    assert [line.event for line in task] == ["try 2", "try 1"]  # in time order
    assert [line.event for line in trigger] == ["trigger: decided at 2026-12-01T18:03:17Z"]
    assert bench_mttr.read_task_log(tmp_path / "missing") == ([], [])


def _result(key: str, **times: float | None) -> CaseResult:
    result = CaseResult(CASES[key], f"run-{key}", T0, state="failed", alerts=1)
    for name, value in times.items():
        setattr(result, name, None if value is None else T0 + value)
    return result


def test_targets_are_measured_from_the_end_of_start_and_from_the_verdict() -> None:
    crash = _result("a", start_end=18, verdict=20, rollback_cmd=24.5, healthy=38)
    never = _result("b", start_end=18, verdict=140, rollback_cmd=142, healthy=160)
    migration = _result("c", verdict=30, rollback_cmd=33, healthy=60)
    migration.alerts = 2

    checks = Bench.checks([crash, never, migration], gate_timeout=120.0)

    verdicts = {(c.where, c.label.split(" (")[0]): (c.value, c.ok) for c in checks}
    assert verdicts[
        ("(a) 1.4.0-crash-at-start", "healthy on 1.1.0 after its start step ended")
    ] == (
        "20.0 s",
        True,
    )
    assert verdicts[("(a) 1.4.0-crash-at-start", "scheduling gap")] == ("4.5 s", True)
    # 142 s after start ended is more than the 120 s gate timeout + 15 s.
    assert verdicts[("(b) 1.2.0-never-ready", "healthy on 1.1.0 after its start step ended")] == (
        "142.0 s",
        False,
    )
    assert verdicts[("(b) 1.2.0-never-ready", "run end")] == ("failed, 1 alert(s)", True)
    # The broken migration has no start-based target; two alerts miss "exactly one".
    assert ("(c) 1.3.0-broken-migration", "healthy on 1.1.0 after its start step ended") not in (
        verdicts
    )
    assert verdicts[("(c) 1.3.0-broken-migration", "run end")] == ("failed, 2 alert(s)", False)


def test_a_run_that_never_rolled_back_misses_its_targets() -> None:
    stuck = _result("a", start_end=18, verdict=20)
    stuck.state = "success"

    checks = Bench.checks([stuck], gate_timeout=120.0)

    assert [(c.value, c.ok) for c in checks] == [
        ("never", False),
        ("no rollback", False),
        ("success, 1 alert(s)", False),
    ]


def test_only_a_task_that_ran_has_ended() -> None:
    """The scheduler gives a step it marks upstream_failed an end date too (the broken
    migration's ``start`` "ended" before ``migrate`` had): that is no end of the step."""
    tasks = {
        "migrate": {"state": "failed", "end_date": "2026-12-01T18:03:29.5+00:00"},
        "start": {"state": "upstream_failed", "end_date": "2026-12-01T18:03:30+00:00"},
        "record": {"state": "success", "end_date": "2026-12-01T18:03:40Z"},
    }

    assert bench_mttr.ended_at(tasks, "migrate") == pytest.approx(T0 + 14.5)
    assert bench_mttr.ended_at(tasks, "start") is None
    assert bench_mttr.ended_at(tasks, "record") == pytest.approx(T0 + 25)
    assert bench_mttr.ended_at(tasks, "verify") is None
