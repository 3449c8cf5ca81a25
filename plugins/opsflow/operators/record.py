"""The ``record`` step of a release: remember what is now deployed.

Later steps (image pruning now, rollback later) need the current and previous releases
from a record, not guessed from whatever containers happen to exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from opsflow.operators.steps import RECORD_KEY, StepRecord, as_bool
from opsflow.runtimes.compose import check_version


class RecordReleaseOperator(BaseOperator):
    """Append the deployed release (version, image of each service) to the stack's history."""

    template_fields: Sequence[str] = ("version", "is_dry_run")
    ui_color = "#fdf3e1"

    def __init__(
        self,
        *,
        stack_name: str,
        version: str,
        images_from: str,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stack_name = stack_name
        self.version = version
        self.images_from = images_from
        self.is_dry_run = dry_run

    def execute(self, context: Context) -> dict[str, Any]:
        from opsflow.releases.history import history_path, record_release

        version = check_version(str(self.version))
        record = StepRecord(step="record", version=version, dry_run=as_bool(self.is_dry_run))
        fetched = context["ti"].xcom_pull(task_ids=self.images_from, key=RECORD_KEY) or {}
        images = {service: fact["image"] for service, fact in fetched.get("images", {}).items()}
        if record.dry_run:
            record.detail = f"would record {version} in {history_path(self.stack_name)}"
        else:
            record_release(self.stack_name, version, images, context["run_id"])
            record.detail = f"recorded {version} in {history_path(self.stack_name)}"
        self.log.info("%s", record.detail)
        result = record.finish("dry-run" if record.dry_run else "ok")
        context["ti"].xcom_push(key=RECORD_KEY, value=result)
        return result
