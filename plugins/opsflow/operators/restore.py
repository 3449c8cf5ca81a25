"""Operators of ``<stack>__restore``: check the backup, back up what is there now, stop the
writers, restore, start the writers again (always), then the health gate decides.

The artifacts are checked against the manifest before anything is stopped or changed, so
a corrupt backup costs nothing but a failed run.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from opsflow.backup.manifest import Manifest, check_backup_id, new_backup_id, utcnow
from opsflow.backup.stream import check_artifact
from opsflow.operators.backup import BackupStepOperator, is_plan, source_list
from opsflow.operators.steps import StepRecord, human_bytes
from opsflow.releases.ledger import Ledger
from opsflow.stack.model import PostgresSource

PLAN_TASK = "plan"
UNKNOWN_RELEASE = "unknown"


class RestorePlanOperator(BackupStepOperator):
    """Find the backup, check every artifact it needs, and say exactly what will happen."""

    template_fields: Sequence[str] = ("is_dry_run", "backup_id", "sources", "target_database")

    def __init__(
        self,
        *,
        backup_id: str,
        sources: list[str] | str,
        target_database: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.sources = sources
        self.target_database = target_database

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        wanted_id = str(self.backup_id).strip()
        release = self._running_release()
        # Pushed before anything can fail, so `record` writes into the ledger the release
        # that ran and the backup asked for (then: the one found) even if the plan stops.
        ti.xcom_push(key="return_value", value={"backup_id": wanted_id, "release": release})
        if wanted_id != "latest":
            check_backup_id(wanted_id)
        backups = self.backups
        store, manifest = backups.find(wanted_id, self.log)
        ti.xcom_push(
            key="return_value", value={"backup_id": manifest.backup_id, "release": release}
        )
        database_sources = [s.name for s in manifest.sources if s.kind != "files"]
        wanted = source_list(self.sources) or []
        names = wanted or database_sources
        missing = sorted(set(names) - set(database_sources))
        if missing:
            raise AirflowFailException(
                f"backup {manifest.backup_id} has no {missing}; it holds {database_sources}"
            )
        target = (str(self.target_database or "").strip()) or None
        if target:
            postgres = [n for n in names if isinstance(backups.source(n), PostgresSource)]
            if names != postgres or len(postgres) != 1:
                raise AirflowFailException(
                    "target_database needs exactly one PostgreSQL source selected"
                )
        # Only an offsite backup is downloaded here; `restore` removes it when done.
        staging = backups.staging_root / ".staging" / new_backup_id(utcnow(), context["run_id"])
        artifact_dir = backups.artifact_dir(store, manifest, staging)
        for name in names:
            for artifact in manifest.source(name).artifacts:
                check_artifact(artifact_dir / artifact.name, artifact)
        record.lines = [
            f"backup {manifest.backup_id} ({manifest.status}, taken {manifest.started_at}) "
            f"from {store.label}; artifacts checked against the manifest",
            f"restore {', '.join(names)} into "
            + (f"database {target} (live data untouched)" if target else "the LIVE stack"),
        ]
        record.detail = f"{manifest.backup_id} -> {target or 'live'}"
        return {
            "backup_id": manifest.backup_id,
            "manifest": manifest.to_dict(),
            "artifact_dir": str(artifact_dir),
            "staging": str(staging),
            "sources": names,
            "target_database": target,
            "live": target is None,
            "release": release,
        }

    def _running_release(self) -> str:
        """The ledger's current release, or ``unknown`` when none is recorded or readable."""
        try:
            current = Ledger(self.stack_name).current()
        except (OSError, ValueError) as error:
            self.log.warning("cannot read the release ledger of %s: %s", self.stack_name, error)
            return UNKNOWN_RELEASE
        return current.version if current else UNKNOWN_RELEASE


def _manifest(plan: dict[str, Any]) -> Manifest:
    return Manifest.from_dict(plan["manifest"])


class PreRestoreBackupOperator(BackupStepOperator):
    """Back up the current state of the sources about to be overwritten (not verified)."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = self.plan(context)
        if not plan["live"]:
            raise AirflowSkipException("restoring into another database: live data untouched")
        if record.dry_run:
            record.lines = [f"would back up {', '.join(plan['sources'])} before restoring"]
            return {}
        backups = self.backups
        backup_id = new_backup_id(utcnow(), f"{context['run_id']}/pre-restore")
        manifest = backups.take_backup(
            plan["sources"], backup_id, "pre-restore", context["run_id"], self.log, verify=False
        )
        record.detail = f"{manifest.backup_id} ({manifest.status})"
        record.lines = [f"pre-restore backup {manifest.backup_id} published"]
        return {"backup_id": manifest.backup_id}


class WritersOperator(BackupStepOperator):
    """Stop (or start again) the services that write the data being restored."""

    def __init__(self, *, action: str, **kwargs: Any) -> None:
        if action not in ("stop", "start"):
            raise ValueError(f"action must be stop or start, got {action!r}")
        if action == "start":
            kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.action = action

    def run(self, record: StepRecord, context: Context) -> list[str]:
        if self.action == "start" and not is_plan(context["ti"].xcom_pull(task_ids=PLAN_TASK)):
            record.lines = ["no plan, nothing was stopped"]
            return []
        plan = self.plan(context)
        backups = self.backups
        if self.action == "stop":
            if not plan["live"]:
                raise AirflowSkipException("live stack untouched")
            services = backups.writers(plan["sources"])
        else:
            stopped = context["ti"].xcom_pull(task_ids="stop_writers") or []
            services = list(stopped)
        if not services:
            record.lines = [f"no service to {self.action}"]
            return []
        verb = f"would {self.action}" if record.dry_run else self.action
        record.lines = [f"{verb}: {', '.join(services)}"]
        if not record.dry_run:
            at_release = dataclasses.replace(backups, release=plan["release"])
            services = at_release.switch_services(self.action, services, self.log)
        record.detail = f"{self.action} {', '.join(services)}"
        return services


class RestoreSourcesOperator(BackupStepOperator):
    """Restore each selected source from the checked artifacts."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = self.plan(context)
        if record.dry_run:
            record.lines = [f"would restore {name}" for name in plan["sources"]]
            return {}
        backups = self.backups
        manifest = _manifest(plan)
        ctx = backups.context(manifest.backup_id, self.log, Path(plan["staging"]))
        reports: dict[str, Any] = {}
        try:
            self._restore(plan, manifest, ctx, record, reports)
        finally:
            shutil.rmtree(plan["staging"], ignore_errors=True)
        size = sum(a.size for n in plan["sources"] for a in manifest.source(n).artifacts)
        record.detail = f"{len(reports)} sources from {manifest.backup_id} ({human_bytes(size)})"
        return reports

    def _restore(
        self,
        plan: dict[str, Any],
        manifest: Manifest,
        ctx: Any,
        record: StepRecord,
        reports: dict[str, Any],
    ) -> None:
        backups = self.backups
        artifact_dir = Path(plan["artifact_dir"])
        for name in plan["sources"]:
            saved = manifest.source(name)
            artifact = artifact_dir / saved.artifacts[0].name
            reports[name] = backups.restore(saved, artifact, ctx, plan["target_database"])
            record.lines.append(f"{name}: restored ({_brief(reports[name])})")


def _brief(report: Any) -> str:
    if isinstance(report, dict):
        return ", ".join(f"{key} {value}" for key, value in report.items() if key != "tables")
    return str(report)
