"""``<stack>__backup``: every source dumped, restore-verified and published, nightly."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, TaskGroup

from opsflow.factory.common import dag_defaults, render_doc
from opsflow.operators.backup import (
    BackupCleanupOperator,
    BackupFreshnessOperator,
    BackupPlanOperator,
    BackupRetentionOperator,
    PublishBackupOperator,
    SourceDumpOperator,
    SourceVerifyOperator,
)
from opsflow.operators.steps import human_duration
from opsflow.operators.summary import RunSummaryOperator
from opsflow.stack.model import CONFIG_SOURCE, Stack

BACKUP_DOC = """
# Backup of `{stack}`

{description}

Nightly (`{schedule}`, {timezone}) and by hand. Every backup is **restored and compared**
before it is published, unless a manual run switches `verify` off.

| step | what it does |
|---|---|
| `plan` | picks the backup id and the sources, prepares the staging directory |
| `<source>.dump` | PostgreSQL: `pg_dump -Fc` inside an exported snapshot, with a \
per-table fingerprint (rows, content checksum) of that same snapshot; Redis: an RDB \
snapshot checked by `redis-check-rdb`; buckets: every object with its sha256; `config`: \
compose files, env file, stack file, listed config paths. Streamed through zstd \
(level {level}) and sha256, in constant memory |
| `<source>.verify` | restores the dump into a throwaway server of the same major \
version and compares tables, row counts and checksums (Redis: key count; buckets and \
files: every checksum). A difference fails the run and names the table or object |
| `publish` | artifacts under temporary names, the manifest written **last**: {destinations}. \
The offsite copy is downloaded and checked against the manifest |
| `retention` | always runs: keeps {local_days} days locally, {offsite_days} days \
offsite, plus the last {keep} verified backups; never the newest verified one; \
sweeps interrupted backups (no manifest) |
| `freshness` | always runs: fails when a source's newest verified backup is older \
than {max_age} |
| `cleanup` | always runs: removes the scratch servers and the run's staging files |
| `summary` | always runs: what each step did; fails the run if a step failed |

**Params**: `sources` (default all: {sources}), `verify`, `dry_run` (plan and retention \
decisions only; nothing written or deleted).

Restore a backup with `{stack}__restore`. Failures alert: {alerts}.
Stack file: `include/stacks/{stack}.yaml`.
"""


def sources_param(names: list[str], description: str) -> Param:
    """A multi-select of source names, all selected by default."""
    return Param(
        names,
        type="array",
        items={"type": "string", "enum": names},
        minItems=1,
        uniqueItems=True,
        title="Sources",
        description=description,
    )


def backup_params(stack: Stack, names: list[str]) -> dict[str, Param]:
    return {
        "sources": sources_param(names, "Which sources to back up (default: all)."),
        "verify": Param(
            stack.backup.verify,
            type="boolean",
            title="Verify",
            description="Restore every dump into a scratch server and compare it.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Show the plan and what retention would delete; change nothing.",
        ),
    }


def source_names(stack: Stack) -> list[str]:
    return [source.name for source in stack.backup.database_sources] + [CONFIG_SOURCE]


def build_backup_dag(stack: Stack) -> DAG:
    backup = stack.backup
    names = source_names(stack)
    destinations = ", ".join(
        part
        for part in (
            backup.local_dir and f"local `{backup.local_dir}` (files 0600, dirs 0700)",
            backup.s3 and f"S3 `s3://{backup.s3.bucket}/{backup.s3.prefix}` (SSE {backup.s3.sse})",
        )
        if part
    )
    doc = render_doc(
        BACKUP_DOC,
        stack,
        schedule=stack.schedules.backup or "manual only",
        timezone=stack.timezone,
        level=backup.compression_level,
        destinations=destinations,
        local_days=backup.retention.local_days,
        offsite_days=backup.retention.offsite_days,
        keep=backup.retention.keep_last_verified,
        max_age=human_duration(backup.max_age),
        sources=", ".join(f"`{name}`" for name in names),
    )
    dry_run = "{{ params.dry_run }}"
    with DAG(
        dag_id=f"{stack.name}__backup",
        description=f"Back up {stack.name}, prove each backup by restoring it, apply retention",
        schedule=stack.schedules.backup,
        max_active_runs=1,
        params=backup_params(stack, names),
        doc_md=doc,
        **dag_defaults(stack, "backup"),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run}
        plan = BackupPlanOperator(
            task_id="plan",
            sources="{{ params.sources | tojson }}",
            verify="{{ params.verify }}",
            **common,
        )
        source_tasks: dict[str, tuple[str, str]] = {}
        # Publish waits for dumps and verifications (a verification may be switched off).
        sources_done = []
        for name in names:
            with TaskGroup(group_id=name, tooltip=f"back up and verify {name}"):
                dump = SourceDumpOperator(task_id="dump", source=name, retries=1, **common)
                verify = SourceVerifyOperator(
                    task_id="verify", source=name, dump_task_id=dump.task_id, **common
                )
                plan >> dump >> verify
            source_tasks[name] = (dump.task_id, verify.task_id)
            sources_done += [dump, verify]
        publish = PublishBackupOperator(task_id="publish", sources=source_tasks, **common)
        retention = BackupRetentionOperator(task_id="retention", retries=1, **common)
        freshness = BackupFreshnessOperator(task_id="freshness", **common)
        cleanup = BackupCleanupOperator(task_id="cleanup", retries=1, **common)
        steps = [
            "plan",
            *(task for pair in source_tasks.values() for task in pair),
            "publish",
            "retention",
            "freshness",
            "cleanup",
        ]
        summary = RunSummaryOperator(
            task_id="summary", workflow="backup", step_task_ids=steps, **common
        )
        sources_done >> publish >> retention >> freshness >> cleanup >> summary
    return dag
