"""Operators of ``<stack>__backup``: plan, dump and verify per source, publish, retention,
freshness and cleanup. Each is a thin shell around :mod:`opsflow.backup.stack_backup`.

Every step pushes its record (XCom ``step_record``) whether it succeeds, fails or is
skipped, so the run summary can tell a source that was not selected from one that broke.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from opsflow.backup.manifest import (
    Manifest,
    SourceBackup,
    Verification,
    new_backup_id,
    utcnow,
)
from opsflow.backup.stack_backup import StackBackups
from opsflow.operators.steps import (
    StepOperator,
    StepRecord,
    as_bool,
    human_bytes,
    human_duration,
    run_stack,
)

PLAN_TASK = "plan"


def run_trigger(run_type: object) -> str:
    """What started the run, for the manifest: the DagRun's run type as Airflow names it
    (``scheduled``, ``manual``, ``backfill``, ``asset_triggered``...).

    The task SDK's ``DagRunType`` is a str enum whose ``str()`` is ``DagRunType.SCHEDULED``,
    so the value is read, never the text.
    """
    value = getattr(run_type, "value", run_type)
    return str(value).strip().lower() if value else "unknown"


def source_list(value: Any) -> list[str] | None:
    """The ``sources`` param as the task receives it: a list, or (templates render as
    strings) its JSON from ``{{ params.sources | tojson }}``. ``None``: none chosen."""
    if isinstance(value, str):
        text = value.strip()
        if not text or text == "None":
            return None
        try:
            value = json.loads(text)
        except ValueError:
            raise AirflowFailException(
                f"sources must be a JSON list of source names, got {text[:200]!r}"
            ) from None
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise AirflowFailException(f"sources must be a list of source names, got {value!r}")
    return list(value)


def is_plan(value: Any) -> bool:
    """A finished plan; a restore plan that stopped early leaves only what ``record`` needs
    (the backup id and the release), never the sources."""
    return isinstance(value, dict) and "sources" in value


class BackupStepOperator(StepOperator):
    """Base of the backup and restore steps: the stack's backups, loaded once per task."""

    ui_color = "#f3ecfb"

    def __init__(self, *, stack_name: str, dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(stack_name=stack_name, dry_run=dry_run, **kwargs)
        self._backups: StackBackups | None = None

    @property
    def backups(self) -> StackBackups:
        if self._backups is None:
            self._backups = StackBackups(run_stack(self.stack_name))
        return self._backups

    def plan(self, context: Context) -> dict[str, Any]:
        plan: dict[str, Any] | None = context["ti"].xcom_pull(task_ids=PLAN_TASK)
        if not is_plan(plan):
            raise AirflowFailException("no backup plan from the plan task")
        assert plan is not None
        return plan


class BackupPlanOperator(BackupStepOperator):
    """Decide the backup id and the sources, and prepare the staging directory."""

    template_fields: Sequence[str] = ("is_dry_run", "sources", "verify")

    def __init__(
        self, *, sources: list[str] | str, verify: bool | str, trigger: str = "", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.sources = sources
        self.verify = verify
        self.trigger = trigger

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        backups = self.backups
        if not backups.stack.backup.enabled:
            raise AirflowFailException(f"stack {self.stack_name} has no backup destination")
        known = backups.source_names()
        wanted = source_list(self.sources) or known
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            raise AirflowFailException(f"unknown backup sources {unknown}; known: {known}")
        dag_run = context["dag_run"]
        started = getattr(dag_run, "run_after", None) or utcnow()
        backup_id = new_backup_id(started, context["run_id"])
        trigger = self.trigger or run_trigger(dag_run.run_type)
        staging = backups.staging_root / ".staging" / backup_id
        if not record.dry_run:
            staging = backups.staging(backup_id)
        destinations = [store.label for store in backups.stores()]
        record.lines = [
            f"backup {backup_id} ({trigger}) of {', '.join(s for s in known if s in wanted)}",
            f"staging {staging}; destinations: {', '.join(destinations)}",
            f"verification: {'on' if as_bool(self.verify) else 'OFF'}",
        ]
        record.report = {"backup_id": backup_id}
        return {
            "backup_id": backup_id,
            "sources": [s for s in known if s in wanted],
            "staging": str(staging),
            "started_at": utcnow().isoformat(),
            "verify": as_bool(self.verify),
            "trigger": trigger,
        }


class SourceStepOperator(BackupStepOperator):
    """A step of one source: skipped when the run did not select it; killable mid-stream."""

    def __init__(self, *, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self._context: Any = None

    def selected_plan(self, context: Context) -> dict[str, Any]:
        plan = self.plan(context)
        if self.source not in plan["sources"]:
            raise AirflowSkipException(f"{self.source} not selected for this run")
        return plan

    def run_context(self, plan: dict[str, Any]) -> Any:
        self._context = self.backups.context(plan["backup_id"], self.log, Path(plan["staging"]))
        return self._context


class SourceDumpOperator(SourceStepOperator):
    """Dump one source into the staging directory (compressed, hashed, fingerprinted)."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = self.selected_plan(context)
        if record.dry_run:
            record.lines = [f"would dump {self.source} into {plan['staging']}"]
            return {}
        dumped = self.backups.dump(self.source, self.run_context(plan))
        size = sum(artifact.size for artifact in dumped.artifacts)
        record.detail = f"{human_bytes(size)} compressed"
        record.lines = [
            f"{artifact.name}: {human_bytes(artifact.size)} sha256 {artifact.sha256}"
            for artifact in dumped.artifacts
        ] + [f"tool {dumped.tool_version}; server {dumped.server_version}".strip()]
        return dumped.to_dict()


class SourceVerifyOperator(SourceStepOperator):
    """Restore one source's fresh dump into a scratch server and compare fingerprints."""

    def __init__(self, *, dump_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.dump_task_id = dump_task_id

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = self.selected_plan(context)
        if record.dry_run:
            record.lines = [f"would restore {self.source} into a scratch server and compare"]
            return {}
        if not plan["verify"]:
            raise AirflowSkipException("verification switched off for this run")
        dumped = SourceBackup.from_dict(context["ti"].xcom_pull(task_ids=self.dump_task_id))
        ctx = self.run_context(plan)
        verification = self.backups.verify(dumped, ctx.staging, ctx)
        record.lines = describe_verification(self.source, verification)
        if not verification.passed:
            context["ti"].xcom_push(key="return_value", value=verification.__dict__)
            raise AirflowFailException(
                f"verification of {self.source} failed: " + "; ".join(verification.differences[:5])
            )
        record.detail = f"restored and matched in {verification.seconds:.1f}s"
        return dict(verification.__dict__)


def describe_verification(source: str, verification: Verification) -> list[str]:
    details = ", ".join(f"{key} {value}" for key, value in sorted(verification.details.items()))
    lines = [f"{source}: verification {verification.status.upper()} ({details})"]
    lines += [f"{source}: DIFFERENCE {difference}" for difference in verification.differences]
    return lines


class PublishBackupOperator(BackupStepOperator):
    """Write the manifest last, to every destination; the offsite copy is checked."""

    def __init__(self, *, sources: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed_min_one_success")
        super().__init__(**kwargs)
        # source name -> (dump task id, verify task id)
        self.source_tasks = sources

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = self.plan(context)
        ti = context["ti"]
        if record.dry_run:
            record.lines = [
                f"would publish {plan['backup_id']} to "
                + ", ".join(store.label for store in self.backups.stores())
            ]
            return {}
        sources = []
        for name in plan["sources"]:
            dump_task, verify_task = self.source_tasks[name]
            dumped = SourceBackup.from_dict(ti.xcom_pull(task_ids=dump_task))
            verified = ti.xcom_pull(task_ids=verify_task)
            dumped.verification = Verification(**verified) if verified else None
            sources.append(dumped)
        manifest = Manifest(
            backup_id=plan["backup_id"],
            stack=self.stack_name,
            trigger=plan["trigger"],
            run_id=context["run_id"],
            started_at=plan["started_at"],
            ended_at=utcnow().isoformat(),
            sources=sources,
            compression={"algorithm": "zstd", "level": self.backups.stack.backup.compression_level},
        )
        problems = self.backups.publish(manifest, Path(plan["staging"]), self.log)
        size = sum(a.size for source in sources for a in source.artifacts)
        record.detail = f"{manifest.backup_id} {manifest.status}, {human_bytes(size)}"
        record.lines = [f"backup {manifest.backup_id}: {manifest.status}"] + [
            f"{label}: {info.get('status')} {info.get('path') or info.get('bucket') or ''}".rstrip()
            for label, info in manifest.destinations.items()
        ]
        if problems:
            raise AirflowFailException("publishing failed: " + "; ".join(problems))
        return {"backup_id": manifest.backup_id, "status": manifest.status}


class BackupRetentionOperator(BackupStepOperator):
    """Delete what the retention policy no longer needs; sweep interrupted backups."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def run(self, record: StepRecord, context: Context) -> list[str]:
        plan = context["ti"].xcom_pull(task_ids=PLAN_TASK) or {}
        keep = {plan["backup_id"]} if plan.get("backup_id") else set()
        record.lines = self.backups.retention(utcnow(), record.dry_run, keep, self.log)
        deleted = [line for line in record.lines if "delete" in line]
        record.detail = f"{len(deleted)} backups {'to delete' if record.dry_run else 'deleted'}"
        return record.lines


class BackupFreshnessOperator(BackupStepOperator):
    """Fail when a source's newest verified backup is older than ``backup.max_age``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def run(self, record: StepRecord, context: Context) -> list[str]:
        problems = self.backups.freshness()
        max_age = self.backups.stack.backup.max_age
        record.lines = problems or [
            f"every source has a verified backup newer than {human_duration(max_age)}"
        ]
        if problems and not record.dry_run:
            raise AirflowFailException("stale backups: " + "; ".join(problems))
        return problems


class BackupCleanupOperator(BackupStepOperator):
    """Always runs: remove the run's scratch servers and whatever is left in staging."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        from opsflow.backup.scratch import remove_scratch, scratch_label

        plan = context["ti"].xcom_pull(task_ids=PLAN_TASK) or {}
        if not plan.get("backup_id"):
            record.lines = ["no plan: nothing to clean"]
            return {}
        removed = remove_scratch(scratch_label(self.stack_name, plan["backup_id"]))
        staging = Path(plan["staging"])
        left = staging.exists()
        if left:
            shutil.rmtree(staging)
        record.lines = [
            f"scratch containers removed: {', '.join(removed) or 'none left'}",
            f"staging {staging}: {'removed (unpublished files)' if left else 'already gone'}",
        ]
        return {"scratch_removed": removed, "staging_removed": left}
