"""A cleared or resumed upgrade run continues its own unsettled upgrade with the first
attempt's snapshot and backup, and never takes a half-upgraded stack as its rollback
target. Against a real ledger in a temporary state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from opsflow.operators.steps import StepRecord
from opsflow.operators.upgrade import (
    UpgradePreflightOperator,
    archive_attempt,
    unsettled_elsewhere,
)
from opsflow.releases.ledger import Ledger, LedgerEntry

OWN = "demo__upgrade/manual__1"
SNAPSHOT = {"version": "1.1.0", "images": {"api": {"image": "a:1.1.0", "id": "sha256:old"}},
            "config_digest": "0" * 64}  # fmt: skip


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    return Ledger("demo")


def upgrade(entry_id: str = OWN, **changes: Any) -> LedgerEntry:
    values: dict[str, Any] = {
        "entry_id": entry_id, "stack": "demo", "action": "upgrade", "version": "1.1.1",
        "from_version": "1.1.0", "run_id": entry_id.split("/")[1], "dag_id": "demo__upgrade",
        "triggered_by": "manual", "started_at": "2026-11-30T10:00:00+00:00",
        "snapshot": SNAPSHOT, "backup_id": "20261130T100000Z-aaaaaa",
    }  # fmt: skip
    values.update(changes)
    return LedgerEntry(**values)


def resume(ledger: Ledger, entry: LedgerEntry) -> tuple[dict[str, Any] | None, StepRecord]:
    operator = UpgradePreflightOperator(task_id="preflight", stack_name="demo", version="1.1.1")
    record = StepRecord(step="preflight")
    return operator._resume(entry, ledger, "1.1.1", record), record


@pytest.mark.parametrize("outcome", ["running", "rollback-failed"])
def test_an_unsettled_run_resumes_with_its_first_snapshot_and_backup(
    ledger: Ledger, outcome: str
) -> None:
    first = upgrade(outcome=outcome, ended_at="2026-11-30T10:05:00+00:00",
                    failed_task="verify", error="did not finish")  # fmt: skip
    ledger.write(first)

    resumed, record = resume(ledger, first)

    assert resumed == {"from_version": "1.1.0", "to_version": "1.1.1", "resumed": True}
    again = ledger.get(OWN)
    assert again is not None
    assert (again.outcome, again.ended_at, again.failed_task) == ("running", None, None)
    assert again.snapshot == SNAPSHOT and again.backup_id == "20261130T100000Z-aaaaaa"
    assert record.lines[0].startswith(
        "resuming upgrade 1.1.0 -> 1.1.1 running (demo__upgrade manual__1, "
    )
    assert "the backup 20261130T100000Z-aaaaaa of the first attempt are reused" in record.lines[0]


@pytest.mark.parametrize("outcome", ["rolled-back", "failed"])
def test_a_settled_run_starts_over_and_keeps_its_first_attempt(
    ledger: Ledger, outcome: str
) -> None:
    first = upgrade(outcome=outcome, ended_at="2026-11-30T10:05:00+00:00")
    ledger.write(first)
    ledger.write(upgrade(f"{OWN}/rollback", action="rollback", version="1.1.0",
                         from_version="1.1.1", outcome="succeeded", snapshot=None,
                         ended_at="2026-11-30T10:06:00+00:00"))  # fmt: skip

    resumed, record = resume(ledger, first)

    assert resumed is None  # a fresh attempt: new snapshot and backup of a settled stack
    kept = ledger.get(f"{OWN}/attempt-1")
    assert kept is not None and (kept.outcome, kept.snapshot) == (outcome, SNAPSHOT)
    assert ledger.get(f"{OWN}/rollback/attempt-1") is not None
    assert record.lines == [f"the earlier attempt ({first.describe()}) is kept as attempt-1"]
    assert archive_attempt(ledger, first) == "attempt-2"


def test_a_finished_run_is_not_upgraded_twice(ledger: Ledger) -> None:
    done = upgrade(outcome="succeeded", ended_at="2026-11-30T10:05:00+00:00")
    ledger.write(done)
    with pytest.raises(AirflowFailException, match=r"this run already ended: upgrade 1\.1\.0"):
        resume(ledger, done)


def test_a_run_that_changed_nothing_yet_starts_over(ledger: Ledger) -> None:
    opened = upgrade(snapshot=None, backup_id=None)
    ledger.write(opened)
    assert resume(ledger, opened)[0] is None


def test_another_runs_unsettled_upgrade_is_found(ledger: Ledger) -> None:
    other = upgrade("demo__upgrade/manual__0", outcome="rollback-failed",
                    ended_at="2026-11-30T10:05:00+00:00")  # fmt: skip
    ledger.write(other)
    found = unsettled_elsewhere(ledger, OWN)
    assert found is not None and found.entry_id == "demo__upgrade/manual__0"
    # Settled by hand afterwards (a rollback run that succeeded): nothing is unsettled.
    ledger.write(upgrade("demo__rollback/manual__2", action="rollback", version="1.1.0",
                         from_version="1.1.1", dag_id="demo__rollback", outcome="succeeded",
                         started_at="2026-11-30T11:00:00+00:00",
                         ended_at="2026-11-30T11:02:00+00:00"))  # fmt: skip
    assert unsettled_elsewhere(ledger, OWN) is None
    # This run's own entry and its archived attempts never count as another run's.
    ledger.write(upgrade(OWN, outcome="running", started_at="2026-11-30T12:00:00+00:00"))
    assert unsettled_elsewhere(ledger, OWN) is None
