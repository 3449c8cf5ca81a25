"""``<stack>__upgrade``: preflight -> snapshot -> build -> backup -> migrate -> start -> gate,
with an automatic rollback unless the new release is verified as what runs."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG

from opsflow.factory.common import RELEASE_RETRIES, dag_defaults, gate_sensor, render_doc
from opsflow.factory.deploy import deploy_params
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.release import LedgerRecordOperator
from opsflow.operators.runtime_step import RuntimeStepOperator
from opsflow.operators.summary import UpgradeSummaryOperator
from opsflow.operators.upgrade import (
    PreUpgradeBackupOperator,
    UpgradePreflightOperator,
    UpgradeRollbackOperator,
    UpgradeSnapshotOperator,
)
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import Stack

FETCHED = {"build": "built", "pull": "pulled"}

UPGRADE_DOC = """
# Upgrade `{stack}`, rolling back by itself when it fails

Takes the stack from the release it runs now (read from the release ledger and checked
against the running containers) to the version you enter, and puts the previous release
back (images, config **and data**) unless the new release is verified healthy.

| step | what it does |
|---|---|
| `lock` | takes the stack lock (shared with deploy, rollback and restore); waits while \
another run holds it, and names that run |
| `preflight` | the stack runs its recorded release and is healthy now (one round of its \
{check_count} checks), the target's config is valid and its images can be {fetched}, \
there is disk for the backup |
| `snapshot` | records the running release's image ids and the config it ran with |
| `{fetch}` | the new release's images, before any backup: a release that cannot be \
{fetched} changes nothing |
| `pre_upgrade_backup` | backs up {databases} (the nightly backup's pipeline) |
{down_row}| `migrate` / `start` / `verify` | as in `{stack}__deploy`; the gate needs \
{consecutive} all-green rounds in a row, one lucky round never passes it |
| `rollback` | always runs; unless the new release passed its gate and is what runs (asked \
the engine): stops it, puts back the old images and config, restores the databases from \
the pre-upgrade backup when a migration started{down}, starts the previous release |
| `rollback_verify` | health gate of the previous release |
| `record` | always runs: writes the outcome to the release ledger \
(`$OPSFLOW_STATE_DIR/{stack}/ledger.jsonl`), decided from what the engine reports as \
running, not from which tasks ran |
| `unlock` | always runs: releases the stack lock |
| `summary` | always runs; fails the run unless the upgrade succeeded (**a run that \
rolled back is still failed**) and sends one alert: `upgrade X -> Y failed at <task> \
with <error>; rolled back to X; healthy`, or `...; rollback failed at <task> with \
<error>; <what runs>; human needed` |

**Params**: `version` (letters, digits, `.`, `_`, `-`; anything else is refused before a
run is created), `dry_run` (run the checks and print the plan; change nothing).

Every task retries when it failed before it ran (e.g. the API server was not up yet); a
verdict (a failed check, migration or gate) is never retried. A run that is cleared and
run again while the stack may be half-upgraded resumes with the snapshot and backup of its
first attempt; a migration cut short is never run again (the rollback restores the
backup). Alerts: {alerts}.
"""


def build_upgrade_dag(stack: Stack) -> DAG:
    fetch_step = runtime_for(stack).fetch_step
    names = [source.name for source in stack.backup.sources.postgres]
    migration = stack.migration
    down_first = bool(getattr(stack.runtime, "down_before_upgrade", False))
    doc = render_doc(
        UPGRADE_DOC,
        stack,
        down_row=(
            "| `down` | the running release's containers stop and are removed (volumes "
            f"kept), as the stack's guide does before new images start: "
            f"{runtime_for(stack).describe('down')} |\n"
            if down_first
            else ""
        ),
        fetch=fetch_step,
        fetched=FETCHED[fetch_step],
        databases=", ".join(f"`{n}`" for n in names) or "nothing (no PostgreSQL source)",
        down=(
            f" (or runs the declared down-migration for {', '.join(migration.down_safe_for)})"
            if migration and migration.down_command and migration.down_safe_for
            else ""
        ),
    )
    version = "{{ params.version }}"
    dry_run = "{{ params.dry_run }}"
    previous = "{{ (ti.xcom_pull(task_ids='preflight') or {}).get('from_version') or 'unknown' }}"
    with DAG(
        dag_id=f"{stack.name}__upgrade",
        description=f"Upgrade {stack.name}; roll back images, config and data on failure",
        schedule=None,
        max_active_runs=1,
        params=deploy_params(),
        doc_md=doc,
        **dag_defaults(stack, "upgrade", retries=RELEASE_RETRIES),
    ) as dag:
        # The steps do not alert on their own: the summary sends one alert per run.
        quiet: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run,
                                 "on_failure_callback": None}  # fmt: skip
        release: dict[str, Any] = {**quiet, "version": version}
        lock = StackLockSensor(task_id="lock", **quiet)
        preflight = UpgradePreflightOperator(task_id="preflight", **release)
        snapshot = UpgradeSnapshotOperator(task_id="snapshot", **release)
        # Built (or pulled) before the backup: a release that cannot be fetched costs no
        # backup and changes nothing.
        fetch = RuntimeStepOperator(task_id=fetch_step, step="fetch", **release)
        backup = PreUpgradeBackupOperator(task_id="pre_upgrade_backup", **release)
        # The guide's `docker-compose down` before the new images start (after the backup,
        # which needs the database up; the migration's run starts what it depends on).
        down = (
            RuntimeStepOperator(task_id="down", step="down", trigger_rule="none_failed", **release)
            if down_first
            else None
        )
        # A stack without PostgreSQL sources skips the backup on purpose.
        migrate = RuntimeStepOperator(
            task_id="migrate", step="migrate", trigger_rule="none_failed", **release
        )
        start = RuntimeStepOperator(task_id="start", step="start", **release)
        verify = gate_sensor(
            stack, task_id="verify", version=version, dry_run=dry_run, on_failure_callback=None
        )
        upgrade_steps = ["preflight", "snapshot", fetch_step, "pre_upgrade_backup",
                         *(["down"] if down else []), "migrate", "start", "verify"]  # fmt: skip
        rollback = UpgradeRollbackOperator(
            task_id="rollback", step_task_ids=upgrade_steps, **release
        )
        rollback_verify = gate_sensor(
            stack, task_id="rollback_verify", version=previous, dry_run=dry_run,
            on_failure_callback=None,
        )  # fmt: skip
        record = LedgerRecordOperator(
            task_id="record",
            action="upgrade",
            step_task_ids=["lock", *upgrade_steps],
            **release,
        )
        unlock = StackUnlockOperator(task_id="unlock", **quiet)
        summary = UpgradeSummaryOperator(
            task_id="summary",
            workflow="upgrade",
            step_task_ids=["lock", *upgrade_steps, "rollback", "rollback_verify", "record",
                           "unlock"],
            **release,
        )  # fmt: skip
        lock >> preflight >> snapshot >> fetch >> backup
        if down is not None:
            backup >> down >> migrate
        else:
            backup >> migrate
        migrate >> start >> verify
        verify >> rollback >> rollback_verify >> record >> unlock >> summary
    return dag
