"""``<stack>__deploy``: build (or pull) -> migrate -> start -> verify -> summary."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from opsflow.factory.common import RELEASE_RETRIES, dag_defaults, gate_sensor, render_doc
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.release import LedgerRecordOperator
from opsflow.operators.runtime_step import RuntimeStepOperator
from opsflow.operators.summary import RunSummaryOperator
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import PARAM_VERSION_PATTERN, Stack

DEPLOY_DOC = """
# Deploy `{stack}` ({runtime})

{description}

Brings the stack to the release you enter in the trigger form, then proves it is healthy.

| step | what it does |
|---|---|
| `lock` | takes the stack lock (shared with upgrade, rollback and restore); waits while \
another run holds it and names that run (reschedules between pokes) |
| `{fetch}` | {fetch_how} |
| `migrate` | {migration}; a migration that failed is not run again |
| `start` | {start_how} |
| `verify` | health gate: {check_count} checks must all pass {consecutive} rounds in a row, \
every {interval}s; fails after {timeout}s (raised to the slowest container healthcheck's \
unhealthy window if that is longer) |
| `record` | always runs: writes the outcome (version, image ids, config digest) to the \
release ledger `$OPSFLOW_STATE_DIR/{stack}/ledger.jsonl`, which upgrade, rollback and \
image pruning read; succeeded only when the engine runs the release's images |
| `unlock` | always runs: releases the stack lock |
| `summary` | always runs: version, what runs, duration of each step, health results; \
fails the run if any step failed |

Every task retries when it failed before it ran or its process died; a verdict (a failed
build, migration or gate) is never retried.

**Params**
- `version`: the release to deploy. Letters, digits, `.`, `_` and `-` only; anything else is
  refused before a run is created.
- `dry_run`: log the exact commands and the health checks, change nothing.

Waiting for health holds no worker slot (the gate defers to the triggerer). Only one deploy,
upgrade, rollback or restore of this stack runs at a time. A failed task alerts: {alerts}.
Stack file: `include/stacks/{stack}.yaml`.
"""


def deploy_params() -> dict[str, Param]:
    return {
        "version": Param(
            type="string",
            pattern=PARAM_VERSION_PATTERN,
            title="Version",
            description="Release to deploy, e.g. 1.0.0 (letters, digits, '.', '_', '-').",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Print the exact commands and checks; change nothing.",
        ),
    }


def build_deploy_dag(stack: Stack) -> DAG:
    runtime = runtime_for(stack)
    fetch_step = runtime.fetch_step
    doc_fields: dict[str, Any] = {
        "fetch": fetch_step,
        "fetch_how": runtime.describe("fetch"),
        "start_how": runtime.describe("start"),
        "migration": (
            f"`{stack.migration.tool}` in a one-off `{stack.migration.service}` container "
            "of the release image"
            if stack.migration
            else "nothing (the stack declares no migration)"
        ),
    }
    version = "{{ params.version }}"
    dry_run = "{{ params.dry_run }}"
    with DAG(
        dag_id=f"{stack.name}__deploy",
        description=f"Deploy a release of {stack.name} and gate it on health",
        schedule=None,
        max_active_runs=1,
        params=deploy_params(),
        doc_md=render_doc(DEPLOY_DOC, stack, **doc_fields),
        **dag_defaults(stack, "deploy", retries=RELEASE_RETRIES),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "version": version, "dry_run": dry_run}
        lock = StackLockSensor(task_id="lock", stack_name=stack.name, dry_run=dry_run)
        fetch = RuntimeStepOperator(task_id=fetch_step, step="fetch", **common)
        migrate = RuntimeStepOperator(task_id="migrate", step="migrate", **common)
        start = RuntimeStepOperator(task_id="start", step="start", **common)
        verify = gate_sensor(stack, task_id="verify", version=version, dry_run=dry_run)
        steps = ["lock", fetch_step, "migrate", "start", "verify"]
        record = LedgerRecordOperator(
            task_id="record", action="deploy", step_task_ids=steps, images_from=fetch_step, **common
        )
        unlock = StackUnlockOperator(task_id="unlock", stack_name=stack.name, dry_run=dry_run)
        summary = RunSummaryOperator(
            task_id="summary",
            workflow="deploy",
            step_task_ids=[*steps, "record", "unlock"],
            **common,
        )
        lock >> fetch >> migrate >> start >> verify >> record >> unlock >> summary
    return dag
