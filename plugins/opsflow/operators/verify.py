"""The ``verify`` step of a release: the stack-level health gate, with a step record."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from opsflow.health import HealthCheck, check_from_data, check_name, check_to_data
from opsflow.operators.steps import RECORD_KEY, StepRecord, as_bool, first_line, run_stack
from opsflow.runtimes.evidence import touched_services
from opsflow.sensors.health import HealthGateSensor
from opsflow.stack.model import HealthGate, check_version

if TYPE_CHECKING:
    from opsflow.runtimes.base import Runtime, RuntimeContext


class StackGateSensor(HealthGateSensor):
    """Health gate over every check of a stack that also reports to the run summary.

    It gates the stack as this run sees it (``run_stack``): the checks, gate settings and
    runtime are taken from the run's stack when the task runs, not from the DAG as it was
    parsed, so a gate and the steps around it never work from two different stack files.
    The parse-time checks only validate the DAG. In a dry run it lists the checks and the
    gate settings instead of waiting.
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
        self._stack_runtime: Runtime | None = None

    def _adopt_run_stack(self) -> None:
        """Checks, gate and runtime of the stack as this run sees it."""
        from opsflow.runtimes.registry import runtime_for

        stack = run_stack(self.stack_name)
        gate = stack.health_gate
        self.checks = [check_to_data(check) for check in stack.checks]
        self.consecutive = gate.consecutive
        self.interval = gate.interval.total_seconds()
        self.timeout = gate.timeout.total_seconds()
        self._stack_runtime = runtime_for(stack)
        self.runtime = self._stack_runtime.context().to_dict()
        self.wait_in_worker = stack.placement is not None

    def watched_services(
        self, context: Context, checks: list[HealthCheck], runtime: RuntimeContext
    ) -> list[str] | None:
        """What this run's steps created or restarted, as the runtime reports it: the
        services the release changed. A run without a known start (or a cleared one,
        whose first attempt restarted things earlier) watches every service."""
        everything = [service.name for service in run_stack(self.stack_name).services]
        run = context.get("dag_run")
        since = getattr(run, "start_date", None)
        if since is None or (getattr(run, "clear_number", 0) or 0) > 0:
            return everything
        states = asyncio.run(runtime.containers())
        if not states:
            return everything  # the runtime could not tell: nothing is assumed unchanged
        touched = touched_services(states, since)
        untouched = sorted(set(everything) - set(touched))
        if untouched:
            self.log.info(
                "Not changed by this run (kept running since before %s): %s",
                since.isoformat(),
                ", ".join(untouched),
            )
        return touched

    def unhealthy_window(self, runtime: RuntimeContext | None) -> float | None:
        if self._stack_runtime is None:
            return super().unhealthy_window(runtime)
        version = check_version(str(self.version))
        try:
            return self._stack_runtime.unhealthy_window(version, self.watch)
        except Exception as error:
            self.log.warning("Cannot read the runtime's unhealthy window: %s", error)
            return None

    def _record(self) -> StepRecord:
        return StepRecord(
            step=self.task_id, version=str(self.version), dry_run=as_bool(self.is_dry_run)
        )

    def execute(self, context: Context) -> Any:
        self._adopt_run_stack()
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
        return super().execute(context)

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
