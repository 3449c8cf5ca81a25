"""The release history: append-only, idempotent per run, private, and tolerant of damage."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opsflow.releases import history
from opsflow.releases.history import (
    current_and_previous,
    record_release,
    releases,
    state_dir,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "state" / "nested"
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    return root


def test_state_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPSFLOW_STATE_DIR", raising=False)
    assert state_dir() == Path("/var/lib/opsflow")
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path))
    assert state_dir() == tmp_path


def test_records_are_read_back_oldest_first(state: Path) -> None:
    record_release("demo", "1.0.0", {"api": "demo/api:1.0.0"}, "run-1", when=T0)
    record_release("demo", "1.1.0", {"api": "demo/api:1.1.0"}, "run-2", when=T0 + timedelta(1))
    found = releases("demo")
    assert [(r.version, r.run_id) for r in found] == [("1.0.0", "run-1"), ("1.1.0", "run-2")]
    assert found[0].images == {"api": "demo/api:1.0.0"}
    assert found[0].recorded_at == T0
    assert found[1].to_dict()["recorded_at"] == "2026-01-03T03:04:05+00:00"
    assert releases("other") == []


def test_file_and_directories_are_private(state: Path) -> None:
    record_release("demo", "1.0.0", {}, "run-1")
    path = state / "demo" / "releases.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "demo").stat().st_mode) == 0o700
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700


def test_same_run_twice_writes_one_line(state: Path) -> None:
    record_release("demo", "1.0.0", {}, "run-1", when=T0)
    record_release("demo", "1.0.0", {}, "run-1", when=T0 + timedelta(minutes=5))
    lines = (state / "demo" / "releases.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["recorded_at"] == T0.isoformat()


def test_naive_time_is_taken_as_utc(state: Path) -> None:
    record_release("demo", "1.0.0", {}, "run-1", when=datetime(2026, 1, 2, 3, 4, 5))
    assert releases("demo")[0].recorded_at == T0


def test_corrupt_lines_are_skipped_with_a_warning(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_release("demo", "1.0.0", {}, "run-1", when=T0)
    path = state / "demo" / "releases.jsonl"
    with path.open("a") as handle:
        handle.write("{not json\n")
        handle.write('["a", "list"]\n')
        handle.write('{"stack": "demo", "version": "1.0.5", "run_id": "x"}\n')  # no time
        handle.write('{"stack": "demo", "version": "1.0.9", "run_id": "y", "recorde')  # cut short
    record_release("demo", "1.1.0", {}, "run-2", when=T0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=history.__name__):
        found = releases("demo")
    assert [r.version for r in found] == ["1.0.0", "1.1.0"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert all("releases.jsonl" in message for message in warnings)
    assert current_and_previous("demo") == ["1.1.0", "1.0.0"]


def test_current_and_previous_are_distinct_versions(state: Path) -> None:
    assert current_and_previous("demo") == []
    record_release("demo", "1.0.0", {}, "run-1")
    assert current_and_previous("demo") == ["1.0.0"]
    record_release("demo", "1.1.0", {}, "run-2")
    record_release("demo", "1.1.0", {}, "run-3")  # redeploy of the same version
    assert current_and_previous("demo") == ["1.1.0", "1.0.0"]
    record_release("demo", "1.0.0", {}, "run-4")  # rollback
    assert current_and_previous("demo") == ["1.0.0", "1.1.0"]


def test_stacks_are_kept_apart(state: Path) -> None:
    record_release("demo", "1.0.0", {}, "run-1")
    record_release("shop", "2.0.0", {}, "run-1")
    assert current_and_previous("demo") == ["1.0.0"]
    assert current_and_previous("shop") == ["2.0.0"]


@pytest.mark.parametrize("stack", ["../etc", "Demo", "a/b", "", "x"])
def test_bad_stack_names_are_refused(state: Path, stack: str) -> None:
    with pytest.raises(ValueError, match="invalid stack name"):
        record_release(stack, "1.0.0", {}, "run-1")
    with pytest.raises(ValueError, match="invalid stack name"):
        releases(stack)


@pytest.mark.parametrize("version", ["", "1.0 ", "$(id)", "../1"])
def test_bad_versions_are_refused(state: Path, version: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        record_release("demo", version, {}, "run-1")
    assert not (state / "demo" / "releases.jsonl").exists()
