"""``<stack>__log_cleanup`` and ``airflow__log_cleanup``: housekeeping that says what it did."""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param

from opsflow.factory.common import START_DATE, dag_defaults, describe_alerts, render_doc
from opsflow.notifiers.routes import failure_callbacks
from opsflow.operators.maintenance import (
    AirflowLogsOperator,
    ContainerLogsOperator,
    PruneImagesOperator,
    StackLogFilesOperator,
)
from opsflow.operators.summary import RunSummaryOperator
from opsflow.stack.model import AirflowMaintenance, Stack

LOG_CLEANUP_DOC = """
# Log cleanup of `{stack}`

Nightly (`{schedule}`, {timezone}) and by hand. Three independent steps, then a summary:

| step | what it does |
|---|---|
| `log_files` | for each log root of the stack file: compress matching files older than their \
`compress_after_days`, delete compressed files older than `delete_after_days`, cap the \
root's size oldest first, remove empty dated directories. Never follows a symlink, never \
acts outside the root, never touches a file that is open or was modified recently. |
| `container_logs` | size of each container's log; fails when a service runs without the \
log limits the stack requires ({limits}) |
| `prune_images` | removes the stack's images older than the last {keep} releases; never \
an image in use, nor the current or previous deployed release |
| `summary` | files compressed/deleted, bytes before/after per root, largest remaining \
files; fails the run if a step failed |

A missing root is a warning; a root that cannot be read fails the run and alerts: {alerts}.
`dry_run` reports every decision and changes nothing.
"""

AIRFLOW_LOG_DOC = """
# Airflow's own log cleanup

Deletes task logs and DAG-processor logs older than `retention_days` (default \
{retention} days, from `include/airflow-maintenance.yaml`); logs written in the last hour \
are never touched. Errors fail the run and alert: {alerts}.

**Metadata database.** Tasks cannot clean Airflow's metadata DB in Airflow 3 (they have no \
ORM access). Use `scripts/airflow-db-clean` from cron, or the `airflow-db-clean` service \
of `docker-compose.airflow.yml`; both run `airflow db clean` outside task execution with \
explicit flags (see docs/operations.md).
"""


def dry_run_param() -> Param:
    return Param(False, type="boolean", title="Dry run", description="Report; change nothing.")


def build_log_cleanup_dag(stack: Stack) -> DAG:
    limits = stack.logs.container_limits
    doc = render_doc(
        LOG_CLEANUP_DOC,
        stack,
        schedule=stack.schedules.log_cleanup or "manual only",
        timezone=stack.timezone,
        limits=(
            f"json-file max-size={limits.max_size}, max-file={limits.max_file}"
            if limits.required
            else "none required"
        ),
        keep=stack.logs.keep_images_releases,
    )
    dry_run = "{{ params.dry_run }}"
    with DAG(
        dag_id=f"{stack.name}__log_cleanup",
        description=f"Clean the log files, container logs and old images of {stack.name}",
        schedule=stack.schedules.log_cleanup,
        max_active_runs=1,
        params={"dry_run": dry_run_param()},
        doc_md=doc,
        **dag_defaults(stack, "log_cleanup"),
    ) as dag:
        common: dict[str, Any] = {"stack_name": stack.name, "dry_run": dry_run, "retries": 1}
        steps = [
            StackLogFilesOperator(task_id="log_files", **common),
            ContainerLogsOperator(task_id="container_logs", **common),
            PruneImagesOperator(task_id="prune_images", **common),
        ]
        summary = RunSummaryOperator(
            task_id="summary",
            stack_name=stack.name,
            workflow="log cleanup",
            step_task_ids=[step.task_id for step in steps],
            dry_run=dry_run,
        )
        steps >> summary
    return dag


def build_airflow_log_cleanup_dag(settings: AirflowMaintenance) -> DAG:
    doc = AIRFLOW_LOG_DOC.format(
        retention=settings.log_retention_days, alerts=describe_alerts(settings)
    ).strip()
    with DAG(
        dag_id="airflow__log_cleanup",
        description="Delete Airflow's own task and DAG-processor logs past their retention",
        schedule=settings.log_cleanup_schedule,
        start_date=pendulum.datetime(*START_DATE, tz=settings.timezone),
        catchup=False,
        max_active_runs=1,
        tags=["opsflow", "airflow", "log_cleanup"],
        render_template_as_native_obj=True,
        params={
            "retention_days": Param(
                settings.log_retention_days,
                type="integer",
                minimum=1,
                title="Retention (days)",
                description="Logs older than this many days are deleted.",
            ),
            "dry_run": dry_run_param(),
        },
        doc_md=doc,
        default_args={
            "owner": settings.owner,
            "retries": 0,
            "on_failure_callback": failure_callbacks(settings),
        },
    ) as dag:
        clean = AirflowLogsOperator(
            task_id="airflow_logs",
            stack_name="airflow",
            retention_days="{{ params.retention_days }}",
            dry_run="{{ params.dry_run }}",
            retries=1,
        )
        summary = RunSummaryOperator(
            task_id="summary",
            stack_name="airflow",
            workflow="log cleanup",
            step_task_ids=[clean.task_id],
            dry_run="{{ params.dry_run }}",
        )
        clean >> summary
    return dag
