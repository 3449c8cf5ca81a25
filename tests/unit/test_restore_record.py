"""A restore that stops in ``plan`` still records what was true: the release that ran and
the backup that was asked for, not ``unknown`` and ``null``.

The ``demo__restore`` DAG is built from a copy of the demo stack file whose local backup
directory is empty, so ``plan`` fails for real; its templates are rendered by Airflow
and the ``record`` step writes a real ledger. Only the task instance is a stand-in: an
in-memory XCom store with the two calls these operators make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType

from opsflow.factory.restore import build_restore_dag
from opsflow.operators.backup import is_plan, source_list
from opsflow.releases.ledger import Ledger, LedgerEntry
from opsflow.stack.loader import load_stack

REPO = Path(__file__).resolve().parents[2]
MISSING = "20261121T020000Z-1a2b3c"
RUN_ID = "manual__2026-11-22T10:00:00+00:00"


@dataclass
class TaskInstance:
    """The slice of Airflow's runtime task instance these steps use: XCom by task id."""

    dag_id: str
    run_id: str
    task_id: str = ""
    xcoms: dict[tuple[str, str], Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(self.task_id, key)] = json.loads(json.dumps(value))

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))


@pytest.fixture
def stack_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    stacks, backups = tmp_path / "stacks", tmp_path / "backups"
    stacks.mkdir()
    backups.mkdir()
    data = yaml.safe_load((REPO / "include" / "stacks" / "demo.yaml").read_text())
    data["runtime"]["working_dir"] = str(REPO / "include" / "demo")
    data["backup"]["local_dir"] = str(backups)
    (stacks / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(stacks))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OPSFLOW_ALLOWED_ROOTS", str(tmp_path))
    return tmp_path


def running(version: str, day: int) -> LedgerEntry:
    return LedgerEntry(
        entry_id=f"demo__deploy/deploy-{version}",
        stack="demo",
        action="deploy",
        version=version,
        run_id=f"deploy-{version}",
        dag_id="demo__deploy",
        triggered_by="manual",
        started_at=f"2026-11-{day:02d}T09:00:00+00:00",
        ended_at=f"2026-11-{day:02d}T09:05:00+00:00",
        outcome="succeeded",
    )


def context_for(ti: TaskInstance, backup_id: str) -> dict[str, Any]:
    moment = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    dag_run = DagRun(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=moment,
        run_after=moment,
        start_date=moment,
        end_date=None,
        run_type=DagRunType.MANUAL,
        state=DagRunState.RUNNING,
        consumed_asset_events=[],
        partition_key=None,
    )
    params = {
        "backup_id": backup_id,
        "sources": ["app_db"],
        "target_database": None,
        "confirm": "demo",
        "dry_run": False,
    }
    return {"ti": ti, "params": params, "dag_run": dag_run, "run_id": ti.run_id}


def took_the_lock(ti: TaskInstance) -> None:
    """The lock step's report (the stack lock has tests of its own)."""
    record = {"step": "lock", "status": "ok", "detail": "", "lines": []}
    ti.xcoms[("lock", "step_record")] = record


def run_task(dag: Any, task_id: str, context: dict[str, Any]) -> Exception | None:
    """Render the task's templates as Airflow does, then execute it."""
    task = dag.get_task(task_id)
    context["ti"].task_id = task_id
    task.render_template_fields(context)
    try:
        task.execute(context)
    except Exception as error:
        return error
    return None


@pytest.mark.parametrize("asked", [MISSING, "latest"])
def test_a_restore_stopped_in_plan_records_the_release_and_the_backup_asked_for(
    stack_dirs: Path, asked: str
) -> None:
    Ledger("demo").write(running("1.1.0", 20))
    Ledger("demo").write(running("1.0.0", 10))
    dag = build_restore_dag(load_stack("demo"))
    ti = TaskInstance(dag_id=dag.dag_id, run_id=RUN_ID)
    context = context_for(ti, asked)

    took_the_lock(ti)
    error = run_task(dag, "plan", context)
    assert error is not None and f"no usable backup {asked!r} of demo" in str(error)
    # What the plan left is not a plan: the writers are not started from it.
    assert not is_plan(ti.xcom_pull(task_ids="plan"))
    assert run_task(dag, "start_writers", context) is None
    started = ti.xcom_pull(task_ids="start_writers", key="step_record")
    assert (started["status"], started["lines"]) == ("ok", ["no plan, nothing was stopped"])

    assert run_task(dag, "record", context) is None
    entry = Ledger("demo").get(f"demo__restore/{RUN_ID}")
    assert entry is not None
    assert (entry.action, entry.version, entry.backup_id) == ("restore", "1.1.0", asked)
    assert (entry.outcome, entry.failed_task) == ("failed", "plan")


def test_without_a_recorded_release_the_restore_says_unknown(stack_dirs: Path) -> None:
    dag = build_restore_dag(load_stack("demo"))
    ti = TaskInstance(dag_id=dag.dag_id, run_id=RUN_ID)
    context = context_for(ti, MISSING)
    took_the_lock(ti)
    assert run_task(dag, "plan", context) is not None
    assert run_task(dag, "record", context) is None
    entry = Ledger("demo").get(f"demo__restore/{RUN_ID}")
    assert entry is not None
    assert (entry.version, entry.backup_id) == ("unknown", MISSING)


def test_the_restore_plan_gets_the_chosen_sources_as_a_list(stack_dirs: Path) -> None:
    """Templates render as strings: the form's list must still arrive as a list."""
    dag = build_restore_dag(load_stack("demo"))
    ti = TaskInstance(dag_id=dag.dag_id, run_id=RUN_ID)
    context = context_for(ti, MISSING)
    context["params"]["sources"] = ["cache"]
    plan = dag.get_task("plan")
    plan.render_template_fields(context)
    assert source_list(plan.sources) == ["cache"]  # type: ignore[attr-defined]
