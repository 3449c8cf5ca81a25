"""``<stack>__upgrade``: preflight -> snapshot -> backup -> build -> migrate -> start -> gate,
with an automatic rollback when anything after the snapshot fails."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG

from opsflow.factory.common import dag_defaults, gate_sensor, render_doc
from opsflow.factory.deploy import deploy_params
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.summary import UpgradeSummaryOperator
from opsflow.operators.upgrade import (
    LedgerRecordOperator,
    PreUpgradeBackupOperator,
    UpgradeComposeStepOperator,
    UpgradePreflightOperator,
    UpgradeRollbackOperator,
    UpgradeSnapshotOperator,
)
from opsflow.stack.model import ComposeRuntime, Stack

UPGRADE_DOC = """
# Upgrade `{stack}`, rolling back by itself when it fails

Takes the stack from the release it runs now (read from the release ledger) to the version
you enter, and puts the previous release back (images, config **and data**) if anything
after the snapshot fails.

| step | what it does |
|---|---|
| `lock` | takes the stack lock (shared with deploy, rollback and restore); waits while \
another run holds it, and names that run |
| `preflight` | the stack is healthy now (one round of its {check_count} checks), the \
target's config is valid and its images can be {fetch}ed, there is disk for the backup |
| `snapshot` | records the running release's image ids and the config it ran with |
| `pre_upgrade_backup` | backs up {databases} (the nightly backup's pipeline) |
| `{fetch}` / `migrate` / `start` / `verify` | as in `{stack}__deploy`; the gate needs \
{consecutive} all-green rounds in a row, one lucky round never passes it |
| `rollback` | always runs; if a step after the snapshot failed: stops the new release, \
puts back the old images and config, restores the databases from the pre-upgrade backup \
when a migration started{down}, starts the previous release |
| `rollback_verify` | health gate of the previous release |
| `record` | always runs: writes the outcome to the release ledger \
(`$OPSFLOW_STATE_DIR/{stack}/ledger.jsonl`) |
| `unlock` | always runs: releases the stack lock |
| `summary` | always runs; fails the run unless the upgrade succeeded — **a run that \
rolled back is still failed** — and sends one alert: "upgrade X -> Y failed at <task> \
with <error>; rolled back to X; healthy" (or "rollback failed at <task>; human needed") |

**Params**: `version` (letters, digits, `.`, `_`, `-`; anything else is refused before a
run is created), `dry_run` (run the checks and print the plan; change nothing).

A run whose task process died can be cleared and run again: it resumes with the snapshot
and backup of its first attempt. Alerts: {alerts}.
"""


def build_upgrade_dag(stack: Stack) -> DAG:
    runtime = stack.runtime
    if not isinstance(runtime, ComposeRuntime):
        raise ValueError(f"{stack.name}: the upgrade DAG supports the compose runtime only so far")
    fetch_step = "build" if runtime.images == "build" else "pull"
    names = [source.name for source in stack.backup.sources.postgres]
    migration = stack.migration
    doc = render_doc(
        UPGRADE_DOC,
        stack,
        fetch=fetch_step,
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
        **dag_defaults(stack, "upgrade"),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run}
        quiet: dict[str, Any] = {**common, "on_failure_callback": None}
        release: dict[str, Any] = {**common, "version": version}
        lock = StackLockSensor(task_id="lock", **quiet)
        preflight = UpgradePreflightOperator(task_id="preflight", **release)
        snapshot = UpgradeSnapshotOperator(task_id="snapshot", **release)
        backup = PreUpgradeBackupOperator(task_id="pre_upgrade_backup", **release)
        steps = {
            name: UpgradeComposeStepOperator(
                task_id=task_id, step=name, retries=retries, trigger_rule=rule, **release
            )
            for name, task_id, retries, rule in (
                ("fetch", fetch_step, 2, "none_failed"),
                ("migrate", "migrate", 0, "all_success"),
                ("start", "start", 1, "all_success"),
            )
        }
        gate: dict[str, Any] = {"dry_run": dry_run, "on_failure_callback": None}
        verify = gate_sensor(stack, task_id="verify", version=version, **gate)
        upgrade_steps = ["pre_upgrade_backup", fetch_step, "migrate", "start", "verify"]
        rollback = UpgradeRollbackOperator(
            task_id="rollback", step_task_ids=upgrade_steps, **release
        )
        rollback_verify = gate_sensor(stack, task_id="rollback_verify", version=previous, **gate)
        record = LedgerRecordOperator(
            task_id="record",
            action="upgrade",
            step_task_ids=["lock", "preflight", "snapshot", *upgrade_steps],
            images_from=fetch_step,
            on_failure_callback=None,
            **release,
        )
        unlock = StackUnlockOperator(task_id="unlock", **quiet)
        summary = UpgradeSummaryOperator(
            task_id="summary",
            workflow="upgrade",
            step_task_ids=[
                "lock", "preflight", "snapshot", *upgrade_steps, "rollback", "rollback_verify",
                "record", "unlock",
            ],
            **release,
        )  # fmt: skip
        lock >> preflight >> snapshot >> backup >> steps["fetch"] >> steps["migrate"]
        steps["migrate"] >> steps["start"] >> verify >> rollback >> rollback_verify >> record
        record >> unlock >> summary
    return dag
