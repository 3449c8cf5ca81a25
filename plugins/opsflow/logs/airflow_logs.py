"""Where Airflow keeps its own logs, and the rule that cleans them.

Task logs and DAG-processor logs are plain files the UI reads, so they are deleted after
the retention rather than compressed. Logs being written (the last hour) are never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ACTIVE_LOG_MINUTES = 60


def airflow_log_dirs() -> dict[str, Path]:
    """The task-log folder and, when it lives elsewhere, the DAG-processor log folder."""
    from airflow.sdk.configuration import conf

    task_logs = Path(conf.get("logging", "base_log_folder")).expanduser()
    processor = Path(conf.get("logging", "dag_processor_child_process_log_directory")).expanduser()
    dirs = {"task logs": task_logs}
    if not processor.is_relative_to(task_logs):
        dirs["dag processor logs"] = processor
    return dirs


def airflow_log_roots(retention_days: int) -> list[tuple[str, Path, Any]]:
    from opsflow.logs.files import CleanupRule

    rule = CleanupRule(
        patterns=("*.log", "*.log.*"),
        delete_after_days=retention_days,
        delete_uncompressed=True,
        min_age_minutes=ACTIVE_LOG_MINUTES,
    )
    return [(label, path, rule) for label, path in airflow_log_dirs().items()]
