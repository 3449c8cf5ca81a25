"""``<stack>__restore``: put a chosen backup back, safely, by hand."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from opsflow.backup.manifest import BACKUP_ID_PATTERN
from opsflow.factory.backup import sources_param
from opsflow.factory.common import RELEASE_RETRIES, dag_defaults, gate_sensor, render_doc
from opsflow.operators.lock import StackLockSensor, StackUnlockOperator
from opsflow.operators.release import LedgerRecordOperator
from opsflow.operators.restore import (
    PreRestoreBackupOperator,
    RestorePlanOperator,
    RestoreSourcesOperator,
    WritersOperator,
)
from opsflow.operators.summary import RunSummaryOperator
from opsflow.stack.model import Stack

RESTORE_DOC = """
# Restore `{stack}` from a backup

Manual only. Puts the chosen backup's databases back into the live stack (or one
PostgreSQL database into a database of another name).

| step | what it does |
|---|---|
| `lock` | takes the stack lock (shared with deploy, upgrade and rollback) |
| `plan` | finds the backup (`latest` = newest not-failed one) and checks **every artifact \
against its manifest** (size, sha256) before anything is touched |
| `pre_restore_backup` | backs up the current state of the same sources (a normal \
backup with trigger `pre-restore`), so a wrong restore can be undone |
| `stop_writers` | stops {writers} |
| `restore` | PostgreSQL: restored into a new database, compared with the backup's \
fingerprint, then swapped in by rename (the old one is dropped only after the swap); \
Redis: `dump.rdb` replaced while the server is stopped; buckets: objects put back |
| `start_writers` | always runs: starts what `stop_writers` stopped |
| `health` | always runs: the stack's health gate ({check_count} checks, {consecutive} \
rounds) |
| `record` | always runs: writes the restore into the release ledger |
| `unlock` | always runs: releases the stack lock |
| `summary` | always runs; fails the run if a step failed |

**Params**: `backup_id` (e.g. `20261121T020000Z-1a2b3c`, or `latest`), `sources`
(default: every database source of the backup: {sources}), `target_database` (optional),
`confirm` (type `{stack}`), `dry_run`.

Failures alert: {alerts}.
"""


def restore_params(stack: Stack, names: list[str]) -> dict[str, Param]:
    return {
        "backup_id": Param(
            "latest",
            type="string",
            pattern=f"^(latest|{BACKUP_ID_PATTERN.strip('^$')})(?![\\s\\S])",
            title="Backup id",
            description="A backup id from the backup runs' summaries, or 'latest'.",
        ),
        "sources": sources_param(names, "Which of the backup's sources to restore."),
        "target_database": Param(
            None,
            type=["null", "string"],
            pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}(?![\s\S])",
            title="Target database",
            description="Restore one PostgreSQL source into this database instead of the "
            "live one (created; live data untouched). Empty: restore into the live stack.",
        ),
        "confirm": Param(
            type="string",
            pattern=f"^{stack.name}(?![\\s\\S])",  # stack names need no escaping
            title="Confirm",
            description=f"Type the stack name ({stack.name}) to confirm the restore.",
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="Plan and check; change nothing."
        ),
    }


def build_restore_dag(stack: Stack) -> DAG:
    names = [source.name for source in stack.backup.database_sources]
    writers = [service.name for service in stack.services if service.writes_data]
    doc = render_doc(
        RESTORE_DOC,
        stack,
        writers=", ".join(f"`{w}`" for w in writers) or "no service (none declares writes_data)",
        sources=", ".join(f"`{name}`" for name in names),
    )
    dry_run = "{{ params.dry_run }}"
    with DAG(
        dag_id=f"{stack.name}__restore",
        description=f"Restore {stack.name}'s databases from a verified backup",
        schedule=None,
        max_active_runs=1,
        params=restore_params(stack, names),
        doc_md=doc,
        **dag_defaults(stack, "restore", retries=RELEASE_RETRIES),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run}
        lock = StackLockSensor(task_id="lock", **common)
        plan = RestorePlanOperator(
            task_id="plan",
            backup_id="{{ params.backup_id }}",
            sources="{{ params.sources | tojson }}",
            target_database="{{ params.target_database or '' }}",
            **common,
        )
        pre = PreRestoreBackupOperator(task_id="pre_restore_backup", **common)
        # Each step runs after a skipped one and says itself why it has nothing to do.
        stop = WritersOperator(
            task_id="stop_writers", action="stop", trigger_rule="none_failed", **common
        )
        restore = RestoreSourcesOperator(task_id="restore", trigger_rule="none_failed", **common)
        start = WritersOperator(task_id="start_writers", action="start", **common)
        release = "{{ (ti.xcom_pull(task_ids='plan') or {}).get('release', 'unknown') }}"
        health = gate_sensor(
            stack, task_id="health", version=release, dry_run=dry_run, trigger_rule="all_done"
        )
        steps = ["lock", "plan", "pre_restore_backup", "stop_writers", "restore",
                 "start_writers", "health"]  # fmt: skip
        record = LedgerRecordOperator(
            task_id="record",
            action="restore",
            version=release,
            step_task_ids=steps,
            backup_from="plan",
            **common,
        )
        unlock = StackUnlockOperator(task_id="unlock", **common)
        summary = RunSummaryOperator(
            task_id="summary",
            workflow="restore",
            step_task_ids=[*steps, "record", "unlock"],
            **common,
        )
        lock >> plan >> pre >> stop >> restore >> start >> health >> record >> unlock >> summary
    return dag
