"""A backup's manifest says what started its run: the DagRun's run type, exactly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType

from opsflow.operators.backup import BackupPlanOperator, run_trigger
from opsflow.operators.steps import StepRecord

EXPECTED = {
    DagRunType.SCHEDULED: "scheduled",
    DagRunType.MANUAL: "manual",
    DagRunType.BACKFILL: "backfill",
    DagRunType.ASSET_TRIGGERED: "asset_triggered",
    DagRunType.OPERATOR_TRIGGERED: "operator_triggered",
    DagRunType.ASSET_MATERIALIZATION: "asset_materialization",
}


def test_every_run_type_is_covered() -> None:
    assert set(EXPECTED) == set(DagRunType)


def dag_run(run_type: DagRunType) -> DagRun:
    moment = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
    return DagRun(
        dag_id="demo__backup",
        run_id=f"{run_type.value}__2026-11-21T02:00:00+00:00",
        logical_date=moment,
        data_interval_start=moment,
        data_interval_end=moment,
        run_after=moment,
        start_date=moment,
        end_date=None,
        run_type=run_type,
        state=DagRunState.RUNNING,
        consumed_asset_events=[],
        partition_key=None,
    )


@pytest.mark.parametrize("run_type", list(EXPECTED))
def test_the_trigger_is_the_run_type(run_type: DagRunType) -> None:
    assert run_trigger(run_type) == EXPECTED[run_type]
    assert run_trigger(run_type.value) == EXPECTED[run_type]


@pytest.mark.parametrize("run_type", list(EXPECTED))
def test_the_backup_plan_records_the_run_type(run_type: DagRunType) -> None:
    """The plan's ``trigger`` is what the publish step writes into the manifest."""
    plan = BackupPlanOperator(
        task_id="plan", stack_name="demo", sources=["app_db"], verify=True, dry_run=True
    )
    run = dag_run(run_type)
    context: dict[str, Any] = {"dag_run": run, "run_id": run.run_id}
    record = StepRecord(step="plan", dry_run=True)
    result = plan.run(record, context)  # type: ignore[arg-type]
    assert result["trigger"] == EXPECTED[run_type]
    assert record.lines[0] == f"backup {result['backup_id']} ({EXPECTED[run_type]}) of app_db"


def test_a_workflow_that_takes_a_backup_names_itself() -> None:
    plan = BackupPlanOperator(
        task_id="plan",
        stack_name="demo",
        sources=["app_db"],
        verify=True,
        dry_run=True,
        trigger="pre-restore",
    )
    run = dag_run(DagRunType.MANUAL)
    result = plan.run(StepRecord(step="plan", dry_run=True), {"dag_run": run, "run_id": run.run_id})  # type: ignore[arg-type]
    assert result["trigger"] == "pre-restore"


@pytest.mark.parametrize("chosen", [["cache"], ["app_db", "config"]])
def test_the_backup_dag_backs_up_only_the_chosen_sources(chosen: list[str]) -> None:
    """The form's list reaches the plan through a template rendered as a string."""
    from opsflow.factory.backup import build_backup_dag
    from opsflow.stack.loader import load_stack

    dag = build_backup_dag(load_stack("demo"))
    plan = dag.get_task("plan")
    run = dag_run(DagRunType.MANUAL)
    params = {"sources": chosen, "verify": False, "dry_run": True}
    context: dict[str, Any] = {"dag_run": run, "run_id": run.run_id, "params": params}
    plan.render_template_fields(context)  # type: ignore[arg-type]
    result = plan.run(StepRecord(step="plan", dry_run=True), context)  # type: ignore[attr-defined]
    assert (result["sources"], result["verify"]) == (chosen, False)


@pytest.mark.parametrize("bad", ["app_db", '{"app_db": 1}', "[1]"])
def test_a_sources_value_that_is_not_a_list_of_names_is_refused(bad: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from opsflow.operators.backup import source_list

    with pytest.raises(AirflowFailException, match="sources must be"):
        source_list(bad)
