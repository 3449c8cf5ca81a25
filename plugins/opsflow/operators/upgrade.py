"""Operators of ``<stack>__upgrade``: preflight, snapshot, pre-upgrade backup, the automatic
rollback and the ledger record. The build, migrate and start steps are the deploy's.

The ledger entry of the run (``<dag_id>/<run_id>``) is written at preflight and carries
the snapshot and the backup id, so a run that is cleared and run again after its task
process died resumes with the snapshot of the release it left, never with a snapshot of
the half-upgraded stack.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from opsflow.backup.manifest import new_backup_id, utcnow
from opsflow.operators.compose import ComposeStepOperator
from opsflow.operators.steps import RECORD_KEY, StepOperator, StepRecord, as_bool, first_line
from opsflow.releases.ledger import Ledger, LedgerEntry, check_version, now_iso
from opsflow.releases.switch import ReleaseSwitch, Snapshot, postgres_source_names
from opsflow.stack.loader import load_stack
from opsflow.stack.model import Stack

PREFLIGHT_TASK = "preflight"
SNAPSHOT_TASK = "snapshot"
BACKUP_TASK = "pre_upgrade_backup"
MIGRATION_STARTED = "migration started"
# Steps whose failure triggers the rollback (everything after the snapshot).
ROLLBACK_TRIGGERS = ("pre_upgrade_backup", "build", "pull", "migrate", "start", "verify")


def entry_id(context: Context) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}"


def triggered_by(context: Context) -> str:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    kind = str(getattr(dag_run, "run_type", "manual")).rsplit(".", 1)[-1].lower()
    return f"{kind} by {user}" if user else kind


def step_records(context: Context, task_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    ti = context["ti"]
    return {task_id: ti.xcom_pull(task_ids=task_id, key=RECORD_KEY) for task_id in task_ids}


def first_failure(records: dict[str, dict[str, Any] | None]) -> tuple[str, str] | None:
    """The first step that reported a failure, with its error (callers treat a step that
    never reported, e.g. because its task process died, separately)."""
    for task_id, record in records.items():
        if record is not None and record["status"] == "failed":
            return task_id, record.get("detail") or "failed"
    return None


def healthy_now(stack: Stack) -> list[str]:
    """One round of every health check of the stack; the names of the failing ones."""
    from opsflow.factory.common import compose_context
    from opsflow.triggers.checks import ComposeContext, check_name, run_check

    data = compose_context(stack)
    compose = ComposeContext.from_dict(data) if data else None

    async def one_round() -> list[Any]:
        return await asyncio.gather(*(run_check(check, compose) for check in stack.checks))

    results = asyncio.run(one_round())
    return [
        f"{check_name(check)}: {result.detail}"
        for check, result in zip(stack.checks, results, strict=True)
        if not result.ok
    ]


class ReleaseStepOperator(StepOperator):
    """Base: the stack, its release switch and this run's ledger entry."""

    template_fields: Sequence[str] = ("is_dry_run", "version")
    ui_color = "#e6f4ea"

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        kwargs.setdefault("on_failure_callback", None)  # the summary sends one alert per run
        super().__init__(**kwargs)
        self.version = version

    def switch(self) -> ReleaseSwitch:
        return ReleaseSwitch(load_stack(self.stack_name), self.log)

    def entry(self, context: Context) -> LedgerEntry:
        entry = Ledger(self.stack_name).get(entry_id(context))
        if entry is None:
            raise AirflowFailException(
                f"no ledger entry {entry_id(context)}: preflight did not run"
            )
        return entry


class UpgradePreflightOperator(ReleaseStepOperator):
    """Refuse to start unless the stack is healthy, the target can be fetched, the config
    is valid and there is room for the pre-upgrade backup; then open the ledger entry."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        target = check_version(str(self.version))
        switch = self.switch()
        ledger = switch.ledger
        entry = ledger.get(entry_id(context))
        if entry is not None and entry.outcome == "running" and not record.dry_run:
            record.lines = [
                f"resuming {entry.describe()}: the snapshot and backup of the first attempt "
                "are reused; the stack may be half-upgraded, so its health is not required"
            ]
            record.detail = f"resumed {entry.from_version} -> {target}"
            return {"from_version": entry.from_version, "to_version": target, "resumed": True}
        current = ledger.current()
        if current is None:
            raise AirflowFailException(
                f"no release of {self.stack_name} is recorded in {ledger.path}: deploy one "
                f"with {self.stack_name}__deploy first, so there is something to roll back to"
            )
        if not record.dry_run:
            # Opened before the checks: the entry's start is when this run held the lock.
            ledger.write(
                LedgerEntry(
                    entry_id=entry_id(context),
                    stack=self.stack_name,
                    action="upgrade",
                    version=target,
                    from_version=current.version,
                    run_id=context["run_id"],
                    dag_id=context["ti"].dag_id,
                    triggered_by=triggered_by(context),
                    stack_file_digest=switch.stack_file_digest(),
                )
            )
        if current.version == target:
            raise AirflowFailException(
                f"{self.stack_name} already runs {target}: nothing to upgrade "
                f"(use {self.stack_name}__deploy to redeploy the same version)"
            )
        record.lines = [f"current release {current.version} (from the ledger), target {target}"]
        self._checks(switch, target, record)
        record.detail = f"{current.version} -> {target}: all checks passed"
        return {"from_version": current.version, "to_version": target, "resumed": False}

    def _checks(self, switch: ReleaseSwitch, target: str, record: StepRecord) -> None:
        stack = switch.stack
        try:
            images = switch.project.images(target)
        except Exception as error:
            raise AirflowFailException(f"config of {target} is invalid: {error}") from None
        record.lines.append(f"config valid for {target}: images {sorted(set(images.values()))}")
        record.lines.append(self._fetchable(switch, target, images))
        unhealthy = healthy_now(stack)
        if unhealthy:
            raise AirflowFailException(
                f"{self.stack_name} is not healthy now, so an upgrade has no safe starting "
                f"point: {'; '.join(unhealthy)}"
            )
        record.lines.append(f"healthy now: all {len(stack.checks)} checks green")
        undoable = postgres_source_names(stack) or switch.down_migration_allowed(target)
        if stack.migration and not undoable:
            raise AirflowFailException(
                f"{self.stack_name} migrates its schema but backs up no PostgreSQL "
                "database: a failed migration could not be undone (add backup sources)"
            )
        record.lines.append(self._disk_space(switch))

    def _fetchable(self, switch: ReleaseSwitch, target: str, images: dict[str, str]) -> str:
        config = switch.project.config(target).get("services", {})
        if switch.project.runtime.images == "build":
            missing = [
                f"{name}: {spec['build'].get('context')}"
                for name, spec in config.items()
                if spec.get("build") and not Path(str(spec["build"].get("context"))).is_dir()
            ]
            if missing:
                raise AirflowFailException(f"build context missing for {'; '.join(missing)}")
            return f"buildable: every build context of {target} exists"
        from opsflow.runtimes.engine import image_facts

        facts = image_facts(sorted(set(images.values())))
        absent = [ref for ref, fact in facts.items() if not fact["id"]]
        for ref in absent:
            # Only asks the registry for the manifest; nothing is downloaded.
            probe = ["docker", "manifest", "inspect", ref]
            result = switch.project.runner(target, self.log).run(probe, timeout=60, check=False)
            if result.returncode != 0:
                raise AirflowFailException(f"image {ref} is neither local nor pullable")
        return f"pullable: {len(facts) - len(absent)} local, {len(absent)} in the registry"

    def _disk_space(self, switch: ReleaseSwitch) -> str:
        from opsflow.backup.postgres import database_size
        from opsflow.backup.stack_backup import StackBackups
        from opsflow.operators.steps import human_bytes

        backups = StackBackups(switch.stack)
        needed = 0
        for source in switch.stack.backup.sources.postgres:
            needed += database_size(backups.resolve(source.conn_id), source.database)
        root = backups.staging_root
        probe = root if root.exists() else Path(root.anchor or "/")
        free = shutil.disk_usage(probe).free
        if needed and free < needed * 1.1:
            raise AirflowFailException(
                f"not enough disk for the pre-upgrade backup in {root}: "
                f"{human_bytes(free)} free, {human_bytes(needed)} of databases"
            )
        return f"disk: {human_bytes(free)} free in {root} for {human_bytes(needed)} of databases"


class UpgradeSnapshotOperator(ReleaseStepOperator):
    """Record what a rollback puts back: the running release's images and config."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        pre = context["ti"].xcom_pull(task_ids=PREFLIGHT_TASK) or {}
        previous = check_version(str(pre.get("from_version")))
        switch = self.switch()
        if record.dry_run:
            record.lines = [f"would record images and config of {previous} and of the new config"]
            return {}
        entry = self.entry(context)
        if entry.snapshot:
            record.lines = [f"reusing the snapshot of {previous} taken by the first attempt"]
            record.detail = f"{previous} (resumed)"
            return entry.snapshot
        snapshot, notes = switch.snapshot(previous)
        applied = switch.save_config()
        entry.snapshot = snapshot.to_dict()
        entry.config_digest, entry.config_files = applied.digest, applied.files
        entry.notes += notes
        switch.ledger.write(entry)
        record.lines = [
            *notes,
            *(
                f"{service}: {fact['image']} {str(fact['id'])[:19]}"
                for service, fact in sorted(snapshot.images.items())
            ),
            f"config of {previous}: {snapshot.config_digest[:12]}; "
            f"config applied now: {applied.digest[:12]}",
        ]
        record.detail = (
            f"{previous}: {len(snapshot.images)} images, config {snapshot.config_digest[:12]}"
        )
        return snapshot.to_dict()


class PreUpgradeBackupOperator(ReleaseStepOperator):
    """Back up the stack's PostgreSQL databases before anything changes them."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        stack = load_stack(self.stack_name)
        names = postgres_source_names(stack)
        if not names:
            raise AirflowSkipException("the stack backs up no PostgreSQL database")
        if record.dry_run:
            record.lines = [f"would back up {', '.join(names)} (trigger pre-upgrade)"]
            return {}
        entry = self.entry(context)
        if entry.backup_id:
            record.detail = f"{entry.backup_id} (taken by the first attempt)"
            return {"backup_id": entry.backup_id}
        from opsflow.backup.stack_backup import StackBackups

        backup_id = new_backup_id(utcnow(), f"{context['run_id']}/pre-upgrade")
        manifest = StackBackups(stack).take_backup(
            names, backup_id, "pre-upgrade", context["run_id"], self.log, verify=False
        )
        entry.backup_id = manifest.backup_id
        Ledger(self.stack_name).write(entry)
        record.detail = f"{manifest.backup_id} of {', '.join(names)}"
        return {"backup_id": manifest.backup_id}


class UpgradeComposeStepOperator(ComposeStepOperator):
    """A deploy step inside an upgrade: alerts come from the summary, and the migration
    notes in the ledger that it started (a rollback must then restore the data, even if
    this task's process dies before it can report)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("on_failure_callback", None)
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        if self.step == "migrate" and not as_bool(self.is_dry_run):
            ledger = Ledger(self.stack_name)
            entry = ledger.get(entry_id(context))
            if entry is not None and MIGRATION_STARTED not in entry.notes:
                entry.notes.append(MIGRATION_STARTED)
                ledger.write(entry)
        return super().execute(context)


class UpgradeRollbackOperator(ReleaseStepOperator):
    """Always runs; when a step after the snapshot failed, put the previous release back:
    stop the new one, restore images and config, restore the data if a migration started
    (or run the declared safe down-migration), start the previous release."""

    def __init__(self, *, step_task_ids: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.step_task_ids = list(step_task_ids)

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        if record.dry_run:
            raise AirflowSkipException("dry run: nothing to roll back")
        records = step_records(context, [SNAPSHOT_TASK, *self.step_task_ids])
        snapshot_record = records.pop(SNAPSHOT_TASK)
        if not snapshot_record or snapshot_record["status"] != "ok":
            raise AirflowSkipException("the upgrade stopped before the snapshot: nothing changed")
        failure = first_failure(records)
        unreported = [t for t, r in records.items() if r is None]
        if failure is None and not unreported:
            raise AirflowSkipException("the upgrade succeeded: nothing to roll back")
        entry = self.entry(context)
        snapshot = Snapshot.from_dict(entry.snapshot or {})
        target = check_version(str(self.version))
        reason = f"{failure[0]}: {failure[1]}" if failure else f"{unreported[0]} did not finish"
        record.lines = [f"rolling back {target} -> {snapshot.version} because {reason}"]
        data = self._switch_back(entry, snapshot, target, records, context, record)
        record.detail = f"back on {snapshot.version} ({data})"
        return {"version": snapshot.version, "data": data, "reason": reason}

    def _switch_back(
        self,
        entry: LedgerEntry,
        snapshot: Snapshot,
        target: str,
        records: dict[str, dict[str, Any] | None],
        context: Context,
        record: StepRecord,
    ) -> str:
        switch = self.switch()
        migrated = MIGRATION_STARTED in entry.notes or records.get("migrate") is not None
        touched = migrated or records.get("start") is not None
        if touched:
            stopped = switch.stop_app(target)
            record.lines.append(f"stopped {', '.join(stopped)} of {target}")
        record.lines += switch.put_back_images(snapshot.images)
        changed = switch.put_back_config(snapshot.config_digest)
        record.lines.append(f"config put back: {', '.join(changed) or 'unchanged'}")
        data = "data untouched (no migration ran)"
        if migrated:
            data = self._put_back_data(switch, entry, snapshot, target, context, record)
        if touched or changed:
            switch.start(snapshot.version)
            record.lines.append(f"started {snapshot.version}")
        return data

    def _put_back_data(
        self,
        switch: ReleaseSwitch,
        entry: LedgerEntry,
        snapshot: Snapshot,
        target: str,
        context: Context,
        record: StepRecord,
    ) -> str:
        if switch.down_migration_allowed(target):
            try:
                switch.down_migrate(target, snapshot.version)
                return f"down-migrated to {snapshot.version}'s schema"
            except Exception as error:
                record.lines.append(f"down-migration failed ({first_line(str(error))}): restoring")
        if not entry.backup_id:
            raise AirflowFailException(
                "a migration started but there is no pre-upgrade backup to restore"
            )
        record.lines += switch.restore_databases(entry.backup_id, context["run_id"])
        return f"databases restored from {entry.backup_id}"


class LedgerRecordOperator(StepOperator):
    """Always runs: write how the run ended into the ledger (upgrade runs: and the
    automatic rollback as its own entry)."""

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
        kwargs.setdefault("retries", 1)
        super().__init__(**kwargs)
        self.action = action
        self.version = version
        self.step_task_ids = list(step_task_ids)
        self.images_from = images_from
        self.backup_from = backup_from

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        version = check_version(str(self.version))
        records = step_records(context, self.step_task_ids)
        failure = first_failure(records)
        unreported = [t for t, r in records.items() if r is None]
        ok = failure is None and not unreported
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
        result = self._finish(entry, records, failure, unreported, ok, context)
        ledger.write(entry)
        if entry.action == "upgrade" and result.get("rollback"):
            ledger.write(result.pop("rollback"))
        record.detail = entry.describe()
        return result

    def _finish(
        self,
        entry: LedgerEntry,
        records: dict[str, dict[str, Any] | None],
        failure: tuple[str, str] | None,
        unreported: list[str],
        ok: bool,
        context: Context,
    ) -> dict[str, Any]:
        ti = context["ti"]
        entry.ended_at = now_iso()
        if self.images_from and (fetched := records.get(self.images_from)):
            entry.images = {
                service: {"image": fact["image"], "id": fact.get("id")}
                for service, fact in fetched.get("images", {}).items()
            }
        if self.backup_from and (backup := ti.xcom_pull(task_ids=self.backup_from)):
            entry.backup_id = entry.backup_id or backup.get("backup_id")
        if entry.action == "deploy" and ok and not entry.config_digest:
            switch = ReleaseSwitch(load_stack(self.stack_name), self.log)
            applied = switch.save_config()
            entry.config_digest, entry.config_files = applied.digest, applied.files
            entry.stack_file_digest = switch.stack_file_digest()
        if ok:
            entry.outcome = "succeeded"
            return {"outcome": entry.outcome, "version": entry.version}
        failed_task, error = failure or (unreported[0], "did not finish")
        entry.failed_task, entry.error = failed_task, error
        entry.outcome = "failed"
        result: dict[str, Any] = {
            "outcome": "failed",
            "version": entry.version,
            "from_version": entry.from_version,
            "failed_task": failed_task,
            "error": error,
        }
        if entry.action == "upgrade":
            self._rollback_outcome(entry, result, context)
        return result

    def _rollback_outcome(
        self, entry: LedgerEntry, result: dict[str, Any], context: Context
    ) -> None:
        """Upgrades: say whether the automatic rollback brought the previous release back."""
        rollback = step_records(context, ["rollback", "rollback_verify"])
        done = rollback["rollback"]
        if not done or done["status"] == "skipped" or not entry.snapshot:
            return
        failure = first_failure(rollback)
        healthy = failure is None and rollback["rollback_verify"] is not None
        entry.outcome = "rolled-back" if healthy else "rollback-failed"
        result["outcome"] = entry.outcome
        snapshot = Snapshot.from_dict(entry.snapshot)
        if not healthy:
            task, error = failure or ("rollback_verify", "did not finish")
            result["rollback_failed_task"], result["rollback_error"] = task, error
        back = context["ti"].xcom_pull(task_ids="rollback") or {}
        result["rollback"] = LedgerEntry(
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
            failed_task=None if healthy else result.get("rollback_failed_task"),
            error=None if healthy else result.get("rollback_error"),
            notes=[str(back.get("data") or "")],
        )
        result["rolled_back_to"] = snapshot.version


def _run_start(context: Context) -> str:
    started = getattr(context["dag_run"], "start_date", None)
    return started.isoformat(timespec="seconds") if started else now_iso()
