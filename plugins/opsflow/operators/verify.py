"""The ``verify`` step of a release: the stack-level health gate, with a step record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context

from opsflow.operators.steps import RECORD_KEY, StepRecord, as_bool, first_line
from opsflow.sensors.health import HealthGateSensor
from opsflow.stack.model import HealthCheck, HealthGate
from opsflow.triggers.checks import check_from_data, check_name


class StackGateSensor(HealthGateSensor):
    """Health gate over every check of a stack that also reports to the run summary.

    In a dry run it lists the checks and the gate settings instead of waiting.
    """

    template_fields: Sequence[str] = (*HealthGateSensor.template_fields, "version", "is_dry_run")

    def __init__(
        self,
        *,
        stack_name: str,
        version: str,
        gate: HealthGate,
        checks: Sequence[HealthCheck],
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            checks=checks,
            consecutive=gate.consecutive,
            interval=gate.interval,
            timeout=gate.timeout,
            **kwargs,
        )
        self.stack_name = stack_name
        self.version = version
        self.is_dry_run = dry_run

    def compose_env(self) -> dict[str, str]:
        from opsflow.runtimes.compose import check_version
        from opsflow.stack.loader import load_stack
        from opsflow.stack.model import ComposeRuntime

        runtime = load_stack(self.stack_name).runtime
        if not isinstance(runtime, ComposeRuntime):
            return {}
        return {runtime.version_variable: check_version(str(self.version))}

    def _record(self) -> StepRecord:
        return StepRecord(
            step=self.task_id, version=str(self.version), dry_run=as_bool(self.is_dry_run)
        )

    def execute(self, context: Context) -> None:
        if as_bool(self.is_dry_run):
            names = [check_name(check_from_data(data)) for data in self.checks]
            self.log.info(
                "DRY RUN - would wait for %s consecutive all-green rounds every %ss of:\n  %s",
                self.consecutive,
                self.interval,
                "\n  ".join(names),
            )
            record = self._record()
            record.health = [{"name": name, "ok": None, "detail": "not run"} for name in names]
            context["ti"].xcom_push(key=RECORD_KEY, value=record.finish("dry-run"))
            return
        super().execute(context)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        record = self._record()
        event = event or {}
        record.seconds = float(event.get("elapsed") or 0.0)
        record.health = list(event.get("results") or [])
        try:
            result = super().execute_complete(context, event)
        except Exception as error:
            record.status, record.detail = "failed", first_line(str(error))
            context["ti"].xcom_push(key=RECORD_KEY, value=record.as_dict())
            raise
        record.status = "ok"
        record.detail = f"{event.get('rounds')} rounds, all {len(record.health)} checks green"
        context["ti"].xcom_push(key=RECORD_KEY, value=record.as_dict())
        return result
