"""``<stack>__rollback``: return to a named earlier release from the ledger, by hand."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import DAG, Param

from opsflow.factory.common import RELEASE_RETRIES, dag_defaults, gate_sensor, render_doc
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.release import LedgerRecordOperator
from opsflow.operators.rollback import PREVIOUS, RollbackPlanOperator, RollbackSwitchOperator
from opsflow.operators.summary import RunSummaryOperator
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import PARAM_VERSION_PATTERN, Stack

log = logging.getLogger(__name__)
FORM_RELEASES = 10

ROLLBACK_DOC = """
# Roll `{stack}` back to an earlier release

Manual only. Goes back to a release recorded in the release ledger
(`$OPSFLOW_STATE_DIR/{stack}/ledger.jsonl`): its image ids and the config it ran with.

| step | what it does |
|---|---|
| `lock` | takes the stack lock (shared with deploy, upgrade and restore) |
| `plan` | finds the release in the ledger, checks its images are on this host, snapshots \
the current release |
| `switch` | stops the current release, re-tags the recorded images, puts back the \
recorded config; with `restore_data`, backs up the current databases and restores the \
backup recorded for that release; starts it |
| `verify` | health gate ({check_count} checks, {consecutive} rounds in a row) |
| `record` / `unlock` / `summary` | always run |

**Params**: `release` (`previous`, or a version from the list), `restore_data` (only from a
backup taken while that release ran), `dry_run`. Failures alert: {alerts}.
"""


def recent_releases(stack: Stack) -> dict[str, str]:
    """Version -> label for the form; read from the ledger files (no Airflow DB)."""
    from opsflow.releases.ledger import Ledger

    try:
        recent = Ledger(stack.name).recent(FORM_RELEASES)
    except (OSError, ValueError) as error:  # the form must render even without a ledger
        log.warning("cannot read the release ledger of %s: %s", stack.name, error)
        return {}
    return {
        release.version: f"{release.version} (recorded {release.recorded_at:%Y-%m-%d %H:%M} UTC)"
        for release in recent
    }


def rollback_params(stack: Stack) -> dict[str, Param]:
    recent = recent_releases(stack)
    return {
        "release": Param(
            PREVIOUS,
            type="string",
            pattern=PARAM_VERSION_PATTERN,
            title="Release",
            description="'previous', or a recorded release (newest first in the list).",
            examples=[PREVIOUS, *recent],
            values_display={PREVIOUS: "previous (the release before the current one)", **recent},
        ),
        "restore_data": Param(
            False,
            type="boolean",
            title="Restore data",
            description="Also restore the databases from the backup taken while that release "
            "ran (the current data is backed up first).",
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Plan and check; change nothing."
        ),
    }


def build_rollback_dag(stack: Stack) -> DAG:
    runtime_for(stack)  # a stack whose runtime is not operated yet has no rollback DAG
    dry_run = "{{ params.dry_run }}"
    target = "{{ (ti.xcom_pull(task_ids='plan') or {}).get('version') or 'unknown' }}"
    with DAG(
        dag_id=f"{stack.name}__rollback",
        description=f"Return {stack.name} to a recorded earlier release",
        schedule=None,
        max_active_runs=1,
        params=rollback_params(stack),
        doc_md=render_doc(ROLLBACK_DOC, stack),
        **dag_defaults(stack, "rollback", retries=RELEASE_RETRIES),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run}
        lock = StackLockSensor(task_id="lock", **common)
        plan = RollbackPlanOperator(
            task_id="plan",
            version="{{ params.release }}",
            restore_data="{{ params.restore_data }}",
            on_failure_callback=dag.default_args["on_failure_callback"],
            **common,
        )
        switch = RollbackSwitchOperator(
            task_id="switch",
            version=target,
            on_failure_callback=dag.default_args["on_failure_callback"],
            **common,
        )
        verify = gate_sensor(stack, task_id="verify", version=target, dry_run=dry_run)
        steps = ["lock", "plan", "switch", "verify"]
        record = LedgerRecordOperator(
            task_id="record", action="rollback", version=target, step_task_ids=steps, **common
        )
        unlock = StackUnlockOperator(task_id="unlock", **common)
        summary = RunSummaryOperator(
            task_id="summary",
            workflow="rollback",
            step_task_ids=[*steps, "record", "unlock"],
            **common,
        )
        lock >> plan >> switch >> verify >> record >> unlock >> summary
    return dag
