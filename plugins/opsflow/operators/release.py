"""What the release workflows (deploy, upgrade, rollback, restore) share: this run's ledger
entry, the step records of the run, and the ``record`` step that writes how the run ended.

The ledger entry of a run is ``<dag_id>/<run_id>``, so a run that is cleared and run again
finds the entry its first attempt wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from opsflow.operators.steps import RECORD_KEY, StepOperator, StepRecord, run_stack
from opsflow.releases.ledger import Ledger, LedgerEntry, now_iso
from opsflow.releases.outcome import Observation, Settled, StepFacts, settle_upgrade
from opsflow.releases.switch import ReleaseSwitch, Snapshot
from opsflow.stack.model import check_version

RecordMap = dict[str, dict[str, Any] | None]


def entry_id(context: Context) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}"


def triggered_by(context: Context) -> str:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    kind = str(getattr(dag_run, "run_type", "manual")).rsplit(".", 1)[-1].lower()
    return f"{kind} by {user}" if user else kind


def step_records(context: Context, task_ids: Sequence[str]) -> RecordMap:
    ti = context["ti"]
    return {task_id: ti.xcom_pull(task_ids=task_id, key=RECORD_KEY) for task_id in task_ids}


def task_states(context: Context) -> dict[str, str]:
    """Airflow's state of every task of this run, or {} when Airflow cannot be asked."""
    ti = context["ti"]
    try:
        found = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])
    except Exception:
        return {}
    states = found.get(ti.run_id, {}) if isinstance(found, dict) else {}
    return {str(task): str(getattr(state, "value", state)) for task, state in states.items()}


def unreported(task_id: str, states: dict[str, str]) -> str:
    """Why a step left no record, as far as Airflow knows."""
    state = states.get(task_id)
    if state == "failed":
        return "failed before it ran (an infrastructure error, see its task log)"
    if state == "upstream_failed":
        return "did not run (an earlier step failed)"
    if state == "skipped":
        return "skipped"
    return "did not finish"


def first_failure(
    records: RecordMap, states: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """The first step, in order, that failed or never reported, with its error. A step
    skipped on purpose reports ``skipped`` and is not a failure."""
    for task_id, record in records.items():
        if record is None:
            return task_id, unreported(task_id, states or {})
        if record["status"] == "failed":
            return task_id, record.get("detail") or "failed"
    return None


def step_facts(
    records: RecordMap,
    rollback: RecordMap | None = None,
    states: dict[str, str] | None = None,
    *,
    verify_task: str = "verify",
) -> StepFacts:
    rollback = rollback or {}
    verify = records.get(verify_task)
    back = rollback.get("rollback")
    back_verify = rollback.get("rollback_verify")
    return StepFacts(
        failure=first_failure(records, states),
        verify_ok=bool(verify and verify["status"] == "ok"),
        rollback=back["status"] if back else None,
        rollback_error=(back or {}).get("detail") or None,
        rollback_verify_ok=bool(back_verify and back_verify["status"] == "ok"),
        rollback_verify_error=(back_verify or {}).get("detail")
        or (unreported("rollback_verify", states or {}) if back_verify is None else None),
    )


def upgrade_releases(entry: LedgerEntry) -> list[tuple[str, dict[str, str]]]:
    """The two releases an upgrade run can leave running: the new one first."""
    candidates = [(entry.version, entry.image_ids())]
    if entry.snapshot:
        snapshot = Snapshot.from_dict(entry.snapshot)
        candidates.append(
            (snapshot.version, {s: str(f.get("id")) for s, f in snapshot.images.items()})
        )
    return candidates


def settle_upgrade_run(
    switch: ReleaseSwitch, entry: LedgerEntry, context: Context, step_task_ids: Sequence[str]
) -> tuple[Settled, Observation]:
    """How an upgrade run ended: the steps' reports checked against what runs now."""
    states = task_states(context)
    facts = step_facts(
        step_records(context, step_task_ids),
        step_records(context, ["rollback", "rollback_verify"]),
        states,
    )
    observed = switch.observe(upgrade_releases(entry))
    previous = Snapshot.from_dict(entry.snapshot).version if entry.snapshot else None
    settled = settle_upgrade(
        target=entry.version, previous=previous, facts=facts, observed=observed
    )
    return settled, observed


class ReleaseStepOperator(StepOperator):
    """Base: the stack, its release switch and this run's ledger entry."""

    template_fields: Sequence[str] = ("is_dry_run", "version")
    ui_color = "#e6f4ea"

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        kwargs.setdefault("on_failure_callback", None)  # the summary sends one alert per run
        super().__init__(**kwargs)
        self.version = version

    def switch(self) -> ReleaseSwitch:
        return ReleaseSwitch(run_stack(self.stack_name), self.log)

    def entry(self, context: Context) -> LedgerEntry:
        entry = Ledger(self.stack_name).get(entry_id(context))
        if entry is None:
            raise AirflowFailException(
                f"no ledger entry {entry_id(context)}: preflight did not run"
            )
        return entry


class LedgerRecordOperator(StepOperator):
    """Always runs: write how the run ended into the ledger, from what runs now (upgrade
    runs: and the automatic rollback as its own entry)."""

    template_fields: Sequence[str] = ("is_dry_run", "version")
    ui_color = "#fdf3e1"

    def __init__(
        self,
        *,
        action: str,
        version: str,
        step_task_ids: Sequence[str],
        images_from: str | None = None,
        backup_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.action = action
        self.version = version
        self.step_task_ids = list(step_task_ids)
        self.images_from = images_from
        self.backup_from = backup_from

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        version = check_version(str(self.version))
        if record.dry_run:
            record.detail = "dry run: nothing recorded"
            return {"outcome": "dry-run"}
        ledger = Ledger(self.stack_name)
        entry = ledger.get(entry_id(context)) or LedgerEntry(
            entry_id=entry_id(context),
            stack=self.stack_name,
            action=self.action,
            version=version,
            run_id=context["run_id"],
            dag_id=context["ti"].dag_id,
            triggered_by=triggered_by(context),
            started_at=_run_start(context),
        )
        entry.ended_at = now_iso()
        if entry.action == "upgrade" and entry.snapshot:
            result = self._finish_upgrade(entry, ledger, context)
        else:
            result = self._finish(entry, context)
        ledger.write(entry)
        record.detail = entry.describe()
        record.lines = [f"running now: {result['running']}"] if result.get("running") else []
        return result

    def _finish(self, entry: LedgerEntry, context: Context) -> dict[str, Any]:
        """Deploy, rollback and restore runs (and upgrades that stopped before the snapshot)."""
        records = step_records(context, self.step_task_ids)
        failure = first_failure(records, task_states(context))
        if self.images_from and (fetched := records.get(self.images_from)):
            entry.images = {
                service: {"image": fact["image"], "id": fact.get("id")}
                for service, fact in fetched.get("images", {}).items()
            }
        if self.backup_from and (backup := context["ti"].xcom_pull(task_ids=self.backup_from)):
            entry.backup_id = entry.backup_id or backup.get("backup_id")
        result: dict[str, Any] = {"version": entry.version, "from_version": entry.from_version}
        switch = ReleaseSwitch(run_stack(self.stack_name), self.log)
        if entry.action in ("deploy", "rollback") and entry.image_ids():
            observed = switch.observe([(entry.version, entry.image_ids())])
            result["running"] = observed.describe()
            result["observed"] = observed.to_dict()
            result["images"] = entry.images if observed.release == entry.version else {}
            if failure is None and observed.release != entry.version:
                failure = ("verify", f"{entry.version} is not what runs ({observed.describe()})")
        if failure is None:
            if entry.action == "deploy" and not entry.config_digest:
                applied = switch.save_config()
                entry.config_digest, entry.config_files = applied.digest, applied.files
                entry.stack_file_digest = switch.stack_file_digest()
            entry.outcome = "succeeded"
            entry.failed_task = entry.error = None
            return {**result, "outcome": "succeeded"}
        entry.outcome = "failed"
        entry.failed_task, entry.error = failure
        return {**result, "outcome": "failed", "failed_task": failure[0], "error": failure[1]}

    def _finish_upgrade(
        self, entry: LedgerEntry, ledger: Ledger, context: Context
    ) -> dict[str, Any]:
        switch = ReleaseSwitch(run_stack(self.stack_name), self.log)
        settled, observed = settle_upgrade_run(switch, entry, context, self.step_task_ids)
        entry.outcome = settled.outcome
        entry.failed_task, entry.error = settled.failed_task, settled.error
        back = context["ti"].xcom_pull(task_ids="rollback") or {}
        if back:
            ledger.write(self._rollback_entry(entry, settled, back))
        images: dict[str, Any] = {}
        if observed.release == entry.version:
            images = entry.images
        elif entry.snapshot and observed.release == entry.snapshot.get("version"):
            images = dict(entry.snapshot.get("images") or {})
        return {
            "images": images,
            "outcome": settled.outcome,
            "version": entry.version,
            "from_version": entry.from_version,
            "failed_task": settled.failed_task,
            "error": settled.error,
            "rolled_back_to": settled.rolled_back_to,
            "rollback_failed_task": settled.rollback_failed_task,
            "rollback_error": settled.rollback_error,
            "running": settled.running,
            "observed": observed.to_dict(),
            "alert": settled.alert(self.stack_name, entry.from_version, entry.version),
        }

    def _rollback_entry(
        self, entry: LedgerEntry, settled: Settled, back: dict[str, Any]
    ) -> LedgerEntry:
        """The automatic rollback as an entry of its own: a release that ran again."""
        assert entry.snapshot is not None
        snapshot = Snapshot.from_dict(entry.snapshot)
        healthy = settled.outcome == "rolled-back"
        return LedgerEntry(
            entry_id=f"{entry.entry_id}/rollback",
            stack=entry.stack,
            action="rollback",
            version=snapshot.version,
            from_version=entry.version,
            run_id=entry.run_id,
            dag_id=entry.dag_id,
            triggered_by=f"automatic rollback of {entry.entry_id}",
            ended_at=now_iso(),
            images=snapshot.images,
            config_digest=snapshot.config_digest,
            backup_id=entry.backup_id if "restored" in str(back.get("data")) else None,
            outcome="succeeded" if healthy else "failed",
            failed_task=None if healthy else settled.rollback_failed_task,
            error=None if healthy else settled.rollback_error,
            notes=[str(back.get("data") or ""), f"running: {settled.running}"],
        )


def _run_start(context: Context) -> str:
    started = getattr(context["dag_run"], "start_date", None)
    return started.isoformat(timespec="seconds") if started else now_iso()
