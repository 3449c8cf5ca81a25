"""``<stack>__rollback``: return to a named earlier release from the ledger, by hand."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from opsflow.factory.common import RELEASE_RETRIES, dag_defaults, gate_sensor, render_doc
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.release import LedgerRecordOperator
from opsflow.operators.rollback import PREVIOUS, RollbackPlanOperator, RollbackSwitchOperator
from opsflow.operators.summary import RunSummaryOperator
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import PARAM_VERSION_PATTERN, Stack

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

**Params**: `release` (`previous`, or a recorded version; `plan` checks it against the
ledger and lists the recorded ones when it is not), `restore_data` (only from a
backup taken while that release ran), `dry_run`. Failures alert: {alerts}.
"""


def rollback_params() -> dict[str, Param]:
    """The form. It offers no list of recorded releases: the ledger may be a database the
    DAG processor must not read while it parses, so ``plan`` checks the choice against the
    ledger when the run starts and names the recorded releases when it is not one."""
    return {
        "release": Param(
            PREVIOUS,
            type="string",
            pattern=PARAM_VERSION_PATTERN,
            title="Release",
            description="'previous' (the release before the current one), or the version of "
            "a recorded release; the run checks it against the ledger before changing anything.",
            examples=[PREVIOUS],
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
        params=rollback_params(),
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
