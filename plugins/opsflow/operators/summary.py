"""The last task of a workflow: say what happened, and end the run honestly.

It runs whatever happened upstream (trigger rule ``all_done``). Because it is the DAG's
only leaf, Airflow derives the run's state from it, so it fails whenever a step failed or
did not run: a summary must never turn a failed deploy into a green run. What it says
runs comes from the ``record`` step, which asked the engine, not from the task states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from opsflow.operators.release import task_states, unreported
from opsflow.operators.steps import RECORD_KEY, as_bool, refuse_unknown_conf

RECORD_TASK = "record"
# Steps whose absence is no failure when Airflow skipped them (e.g. the rollback's gate
# after an upgrade that needed no rollback).
OPTIONAL_STATES = ("skipped",)


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
        refuse_unknown_conf(context, self)
        ti = context["ti"]
        steps: dict[str, dict[str, Any] | None] = {
            task_id: ti.xcom_pull(task_ids=task_id, key=RECORD_KEY)
            for task_id in self.step_task_ids
        }
        states = task_states(context)
        failed = [
            t
            for t, r in steps.items()
            if (r is None and states.get(t) not in OPTIONAL_STATES)
            or (r is not None and r["status"] == "failed")
        ]
        ended = ti.xcom_pull(task_ids=RECORD_TASK) if RECORD_TASK in steps else None
        message = self.failure(steps, failed, states, context)
        dry = as_bool(self.is_dry_run)
        outcome = self.outcome(ended, message, dry)
        summary = {
            "stack": self.stack_name,
            "workflow": self.workflow,
            "version": str(self.version) if self.version else "",
            "run_id": context["run_id"],
            "outcome": outcome,
            "steps": steps,
            "states": states,
            "running": (ended or {}).get("running", ""),
            "images": (ended or {}).get("images"),
            "total_seconds": round(sum((r or {}).get("seconds", 0.0) for r in steps.values()), 2),
        }
        self.log.info("%s", render_summary(summary))
        if message:
            self.report(message, context)
            raise AirflowFailException(message)
        return summary

    def outcome(self, ended: dict[str, Any] | None, message: str | None, dry: bool) -> str:
        if message:
            recorded = (ended or {}).get("outcome")
            return recorded if recorded not in (None, "succeeded", "dry-run") else "failed"
        return "dry-run" if dry else "succeeded"

    def failure(
        self,
        steps: dict[str, dict[str, Any] | None],
        failed: list[str],
        states: dict[str, str],
        context: Context,
    ) -> str | None:
        """The run's failure in one line, or ``None`` when the run succeeded."""
        if not failed:
            return None
        first = failed[0]
        reason = (steps[first] or {}).get("detail") or unreported(first, states)
        subject = " ".join(filter(None, [self.stack_name, self.version and str(self.version)]))
        return f"{self.workflow} of {subject} failed at {first}: {reason}"

    def report(self, message: str, context: Context) -> None:
        """Nothing here: the failing step has alerted already."""


def _state_label(task_id: str, states: dict[str, str]) -> str:
    state = states.get(task_id)
    if state == "skipped":
        return "skipped"
    if state == "failed":
        return "failed"
    return "not run"


def render_summary(summary: dict[str, Any]) -> str:
    """A fixed-width block that reads well in the task log."""
    subject = " ".join(filter(None, [summary["stack"], summary["version"]]))
    width = max(10, *(len(task_id) for task_id in summary["steps"]))
    states = summary.get("states") or {}
    lines = [
        f"==== opsflow {summary['workflow']} summary: {subject} "
        f"-> {summary['outcome'].upper()} ====",
        f"run: {summary['run_id']}   total step time: {summary['total_seconds']:.1f}s",
        f"{'step':<{width}} {'status':<9} {'seconds':>8}  detail",
    ]
    for task_id, record in summary["steps"].items():
        if record is None:
            label = _state_label(task_id, states)
            why = unreported(task_id, states) if label != "not run" else ""
            lines.append(f"{task_id:<{width}} {label:<9} {'-':>8}  {why}".rstrip())
            continue
        seconds = f"{record.get('seconds', 0.0):.1f}"
        lines.append(
            f"{task_id:<{width}} {record['status']:<9} {seconds:>8}  {record.get('detail', '')}"
        )
        lines.extend(f"{'':<{width}} $ {command}" for command in record.get("commands", []))
        lines.extend(f"{'':<{width}} {line}" for line in record.get("lines", []))
    hosts = sorted({r["host"] for r in summary["steps"].values() if r and r.get("host")})
    if hosts:
        lines.append(f"steps ran on: {', '.join(hosts)}")
    if summary.get("running"):
        lines.append(f"running now (as the engine reports it): {summary['running']}")
    images = summary.get("images")
    if images is None:  # runs without a record step: the images each step reported
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
    for task_id, record in summary["steps"].items():
        health = (record or {}).get("health") or []
        if not health:
            continue
        lines.append(f"health ({task_id}, last round):")
        for check in health:
            ok = check.get("ok")
            mark = "----" if ok is None else ("ok  " if ok else "FAIL")
            lines.append(f"  {mark} {check.get('name')}: {check.get('detail', '')}")
    return "\n".join(lines)


class UpgradeSummaryOperator(RunSummaryOperator):
    """The upgrade's last task: one alert per failed run that says how it ended.

    The steps of an upgrade do not alert on their own (a failed health gate is followed by
    a rollback, and the person on call needs the whole story in one message): "upgrade X ->
    Y failed at <task> with <error>; rolled back to X; healthy", or "...; rollback failed
    at <task> with <error>; <what runs>; human needed". How it ended is what ``record``
    decided from the engine; when ``record`` itself never ran, the summary asks the same
    question itself.
    """

    def failure(
        self,
        steps: dict[str, dict[str, Any] | None],
        failed: list[str],
        states: dict[str, str],
        context: Context,
    ) -> str | None:
        ended = context["ti"].xcom_pull(task_ids=RECORD_TASK) or {}
        if ended.get("outcome") in ("succeeded", "dry-run"):
            return None
        if ended.get("alert"):
            return str(ended["alert"])
        known, alert = self._settle_here(context)
        if known:
            return alert
        # Stopped before the snapshot: nothing changed, the failing step says why.
        first = next((t for t in failed if t != RECORD_TASK), RECORD_TASK)
        error = (steps.get(first) or {}).get("detail") or unreported(first, states)
        pre = context["ti"].xcom_pull(task_ids="preflight") or {}
        source = ended.get("from_version") or pre.get("from_version") or "?"
        return (
            f"upgrade {self.stack_name} {source} -> {self.version} failed at "
            f"{ended.get('failed_task') or first} with {ended.get('error') or error}; "
            "the running release was not changed"
        )

    def _settle_here(self, context: Context) -> tuple[bool, str | None]:
        """(known, alert): how the run ended when ``record`` did not say; unknown when the
        upgrade stopped before its snapshot."""
        from opsflow.operators.release import entry_id, settle_upgrade_run
        from opsflow.operators.steps import run_stack
        from opsflow.releases.ledger import Ledger
        from opsflow.releases.switch import ReleaseSwitch

        if as_bool(self.is_dry_run):
            return True, None
        entry = Ledger(self.stack_name).get(entry_id(context))
        if entry is None or not entry.snapshot:
            return False, None
        switch = ReleaseSwitch(run_stack(self.stack_name), self.log)
        upgrade_steps = [t for t in self.step_task_ids if t not in ("rollback", "rollback_verify")]
        upgrade_steps = upgrade_steps[: upgrade_steps.index("verify") + 1]
        settled, _ = settle_upgrade_run(switch, entry, context, upgrade_steps)
        return True, settled.alert(self.stack_name, entry.from_version, entry.version)

    def report(self, message: str, context: Context) -> None:
        from opsflow.notifiers.routes import send_alert
        from opsflow.operators.steps import run_stack

        results = send_alert(
            run_stack(self.stack_name), {**context, "exception": AirflowFailException(message)}
        )
        for result in results:
            state = "delivered" if result.delivered else "FAILED"
            self.log.info("alert via %s: %s", result.route, state)
