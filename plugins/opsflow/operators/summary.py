"""The last task of a workflow: say what happened, and end the run honestly.

It runs whatever happened upstream (trigger rule ``all_done``). Because it is the DAG's
only leaf, Airflow derives the run's state from it, so it fails whenever a step failed or
did not run: a summary must never turn a failed deploy into a green run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from opsflow.operators.steps import RECORD_KEY, as_bool


class RunSummaryOperator(BaseOperator):
    """Collect the step records of ``step_task_ids`` and log one readable summary."""

    template_fields: Sequence[str] = ("version", "is_dry_run")
    ui_color = "#f4f4f4"

    def __init__(
        self,
        *,
        stack_name: str,
        workflow: str,
        step_task_ids: list[str],
        version: str | None = None,
        dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        # The failing step has alerted already; the summary's own failure only reports it.
        kwargs["on_failure_callback"] = None
        super().__init__(**kwargs)
        if not step_task_ids:
            raise ValueError("step_task_ids must name at least one task")
        self.stack_name = stack_name
        self.workflow = workflow
        self.step_task_ids = step_task_ids
        self.version = version
        self.is_dry_run = dry_run

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        steps: dict[str, dict[str, Any] | None] = {
            task_id: ti.xcom_pull(task_ids=task_id, key=RECORD_KEY)
            for task_id in self.step_task_ids
        }
        failed = [t for t, r in steps.items() if r is None or r["status"] == "failed"]
        outcome = "failed" if failed else ("dry-run" if as_bool(self.is_dry_run) else "succeeded")
        summary = {
            "stack": self.stack_name,
            "workflow": self.workflow,
            "version": str(self.version) if self.version else "",
            "run_id": context["run_id"],
            "outcome": outcome,
            "steps": steps,
            "total_seconds": round(sum((r or {}).get("seconds", 0.0) for r in steps.values()), 2),
        }
        message = self.failure(steps, failed, context)
        if message:
            summary["outcome"] = "failed"
        self.log.info("%s", render_summary(summary))
        if message:
            self.report(message, context)
            raise AirflowFailException(message)
        return summary

    def failure(
        self, steps: dict[str, dict[str, Any] | None], failed: list[str], context: Context
    ) -> str | None:
        """The run's failure in one line, or ``None`` when the run succeeded."""
        if not failed:
            return None
        first = failed[0]
        reason = (steps[first] or {}).get("detail") or "did not run"
        subject = " ".join(filter(None, [self.stack_name, self.version and str(self.version)]))
        return f"{self.workflow} of {subject} failed at {first}: {reason}"

    def report(self, message: str, context: Context) -> None:
        """Nothing here: the failing step has alerted already."""


def render_summary(summary: dict[str, Any]) -> str:
    """A fixed-width block that reads well in the task log."""
    subject = " ".join(filter(None, [summary["stack"], summary["version"]]))
    width = max(10, *(len(task_id) for task_id in summary["steps"]))
    lines = [
        f"==== opsflow {summary['workflow']} summary: {subject} "
        f"-> {summary['outcome'].upper()} ====",
        f"run: {summary['run_id']}   total step time: {summary['total_seconds']:.1f}s",
        f"{'step':<{width}} {'status':<9} {'seconds':>8}  detail",
    ]
    for task_id, record in summary["steps"].items():
        if record is None:
            lines.append(f"{task_id:<{width}} {'not run':<9} {'-':>8}")
            continue
        seconds = f"{record.get('seconds', 0.0):.1f}"
        lines.append(
            f"{task_id:<{width}} {record['status']:<9} {seconds:>8}  {record.get('detail', '')}"
        )
        lines.extend(f"{'':<{width}} $ {command}" for command in record.get("commands", []))
        lines.extend(f"{'':<{width}} {line}" for line in record.get("lines", []))
    images = {
        service: fact
        for record in summary["steps"].values()
        if record
        for service, fact in record.get("images", {}).items()
    }
    if images:
        lines.append("images:")
        for service, fact in sorted(images.items()):
            image_id = (fact.get("id") or "?")[:19]
            lines.append(f"  {service:<12} {fact.get('image', '?')}  {image_id}")
    health = [
        check
        for record in summary["steps"].values()
        if record
        for check in record.get("health", [])
    ]
    if health:
        lines.append("health (last round):")
        for check in health:
            mark = "ok  " if check.get("ok") else "FAIL"
            lines.append(f"  {mark} {check.get('name')}: {check.get('detail', '')}")
    return "\n".join(lines)


class UpgradeSummaryOperator(RunSummaryOperator):
    """The upgrade's last task: one alert per failed run that says how it ended.

    The steps of an upgrade do not alert on their own (a failed health gate is followed by
    a rollback, and the person on call needs the whole story in one message): "upgrade X ->
    Y failed at <task> with <error>; rolled back to X; healthy", or "...; rollback failed
    at <task> with <error>; human needed".
    """

    def __init__(self, *, record_task_id: str = "record", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_task_id = record_task_id

    def failure(
        self, steps: dict[str, dict[str, Any] | None], failed: list[str], context: Context
    ) -> str | None:
        ended = context["ti"].xcom_pull(task_ids=self.record_task_id) or {}
        outcome = ended.get("outcome")
        if outcome in ("succeeded", "dry-run"):
            return None
        if not ended:  # the ledger record itself failed: fall back to the step records
            first = next((t for t in failed if t != self.record_task_id), self.record_task_id)
            ended = {"failed_task": first, "error": (steps.get(first) or {}).get("detail")}
        pre = context["ti"].xcom_pull(task_ids="preflight") or {}
        source = ended.get("from_version") or pre.get("from_version") or "?"
        move = f"{self.stack_name} {source} -> {self.version}"
        head = (
            f"upgrade {move} failed at {ended.get('failed_task')} "
            f"with {ended.get('error') or 'no error recorded'}"
        )
        if outcome == "rolled-back":
            return f"{head}; rolled back to {ended.get('rolled_back_to')}; healthy"
        if outcome == "rollback-failed":
            return (
                f"{head}; rollback failed at {ended.get('rollback_failed_task')} with "
                f"{ended.get('rollback_error')}; human needed"
            )
        return f"{head}; the running release was not changed"

    def report(self, message: str, context: Context) -> None:
        from opsflow.notifiers.routes import send_alert
        from opsflow.stack.loader import load_stack

        results = send_alert(
            load_stack(self.stack_name), {**context, "exception": AirflowFailException(message)}
        )
        for result in results:
            state = "delivered" if result.delivered else "FAILED"
            self.log.info("alert via %s: %s", result.route, state)
