"""Operators of ``<stack>__upgrade``: preflight, snapshot, pre-upgrade backup and the
automatic rollback (the build, migrate and start steps are the deploy's).

Every step may be retried: Airflow retries a task that failed before it ran (a worker that
could not reach the API server), so a verdict (a failed check, a failed migration, a gate
that timed out) raises :class:`AirflowFailException`, which is never retried.

The ledger entry of the run carries the snapshot, the backup id and the new release's
image ids, so a run that is cleared and run again after a crash resumes with the snapshot
of the release it left, never with a snapshot of the half-upgraded stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from opsflow.backup.manifest import new_backup_id, utcnow
from opsflow.operators.release import (
    ReleaseStepOperator,
    entry_id,
    step_facts,
    step_records,
    task_states,
    triggered_by,
    upgrade_releases,
)
from opsflow.operators.runtime_step import MIGRATION_STARTED
from opsflow.operators.steps import StepRecord, first_line, run_stack
from opsflow.releases.ledger import RELEASE_ACTIONS, Ledger, LedgerEntry
from opsflow.releases.outcome import rollback_decision
from opsflow.releases.switch import ReleaseSwitch, Snapshot, postgres_source_names
from opsflow.runtimes.base import RuntimeContext
from opsflow.stack.model import Stack, check_version

PREFLIGHT_TASK = "preflight"
SNAPSHOT_TASK = "snapshot"
BACKUP_TASK = "pre_upgrade_backup"
# Outcomes after which the stack may be half-upgraded: a run that ended so resumes.
UNSETTLED = ("running", "rollback-failed")


PREFLIGHT_TRIES = 3
PREFLIGHT_PAUSE = 2.0  # seconds between tries


def healthy_now(stack: Stack, runtime: RuntimeContext | None) -> list[str]:
    """The failing health checks of the stack, each with its last answer; empty when all
    pass. A check that fails is asked again (``PREFLIGHT_TRIES`` times, a pause apart): a
    blip of a busy host must not refuse an upgrade, a stack that stays unhealthy does."""
    from opsflow.health import check_name, run_check

    async def failing() -> dict[int, str]:
        failed = dict.fromkeys(range(len(stack.checks)), "")
        for attempt in range(PREFLIGHT_TRIES):
            if attempt:
                await asyncio.sleep(PREFLIGHT_PAUSE)
            asked = sorted(failed)
            results = await asyncio.gather(*(run_check(stack.checks[i], runtime) for i in asked))
            failed = {i: r.detail for i, r in zip(asked, results, strict=True) if not r.ok}
            if not failed:
                break
        return failed

    tries = f"{PREFLIGHT_TRIES} tries, {PREFLIGHT_PAUSE:g}s apart"
    return [
        f"{check_name(stack.checks[index])}: {detail} ({tries})"
        for index, detail in sorted(asyncio.run(failing()).items())
    ]


def archive_attempt(ledger: Ledger, entry: LedgerEntry) -> str:
    """Keep a settled attempt of this run (and its rollback) under ids of their own before
    the run starts over, so clearing a run never erases what its first attempt did."""
    ids = {e.entry_id for e in ledger.entries()}
    number = 1
    while f"{entry.entry_id}/attempt-{number}" in ids:
        number += 1
    suffix = f"attempt-{number}"
    ledger.write(dataclasses.replace(entry, entry_id=f"{entry.entry_id}/{suffix}"))
    rollback = ledger.get(f"{entry.entry_id}/rollback")
    if rollback is not None:
        ledger.write(dataclasses.replace(rollback, entry_id=f"{rollback.entry_id}/{suffix}"))
    return suffix


def unsettled_elsewhere(ledger: Ledger, own_id: str) -> LedgerEntry | None:
    """The newest release action of the stack, when another run left it unsettled."""
    actions = [
        e
        for e in ledger.entries()
        if e.action in RELEASE_ACTIONS and "/attempt-" not in e.entry_id
        and not e.entry_id.startswith(f"{own_id}/") and e.entry_id != own_id
    ]  # fmt: skip
    newest = actions[-1] if actions else None
    if newest is not None and newest.outcome in UNSETTLED and newest.snapshot is not None:
        return newest
    return None


class UpgradePreflightOperator(ReleaseStepOperator):
    """Refuse to start unless the stack runs its recorded release and is healthy, the
    target can be fetched, the config is valid and there is room for the pre-upgrade
    backup; then open the ledger entry. A cleared run resumes its unsettled entry."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        target = check_version(str(self.version))
        switch = self.switch()
        ledger = switch.ledger
        own_id = entry_id(context)
        entry = ledger.get(own_id)
        if entry is not None and not record.dry_run:
            resumed = self._resume(entry, ledger, target, record)
            if resumed is not None:
                return resumed
        current = ledger.current()
        if current is None:
            raise AirflowFailException(
                f"no release of {self.stack_name} is recorded in {ledger.where}: deploy one "
                f"with {self.stack_name}__deploy first, so there is something to roll back to"
            )
        other = unsettled_elsewhere(ledger, own_id)
        if other is not None:
            raise AirflowFailException(
                f"{self.stack_name} has an unsettled {other.describe()}: clear that run to "
                f"resume it, or put a release back with {self.stack_name}__rollback"
            )
        if not record.dry_run:
            # Opened before the checks: the entry's start is when this run held the lock.
            ledger.write(
                LedgerEntry(
                    entry_id=own_id,
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
        recorded = current.entry.image_ids() if current.entry else {}
        if recorded:
            observed = switch.observe([(current.version, recorded)])
            if observed.release != current.version:
                raise AirflowFailException(
                    f"{self.stack_name} does not run its recorded release {current.version} "
                    f"({observed.describe()}): an upgrade would snapshot an unknown state; "
                    f"put a release back with {self.stack_name}__rollback first"
                )
            record.lines.append(f"running now: {observed.describe()} (asked the engine)")
        self._checks(switch, target, record)
        record.detail = f"{current.version} -> {target}: all checks passed"
        return {"from_version": current.version, "to_version": target, "resumed": False}

    def _resume(
        self, entry: LedgerEntry, ledger: Ledger, target: str, record: StepRecord
    ) -> dict[str, Any] | None:
        """Continue this run's own upgrade when it may have left the stack half-upgraded."""
        if entry.outcome == "succeeded":
            raise AirflowFailException(
                f"this run already ended: {entry.describe()}; trigger a new run to upgrade again"
            )
        if entry.snapshot is None:
            return None  # nothing was changed yet: start over
        if entry.outcome not in UNSETTLED:
            suffix = archive_attempt(ledger, entry)
            record.lines.append(f"the earlier attempt ({entry.describe()}) is kept as {suffix}")
            return None
        if entry.version != target:
            raise AirflowFailException(
                f"this run's ledger entry upgrades to {entry.version}, not {target}"
            )
        previous = Snapshot.from_dict(entry.snapshot).version
        entry.outcome, entry.ended_at, entry.failed_task, entry.error = "running", None, None, None
        entry.notes.append("resumed")
        ledger.write(entry)
        record.lines = [
            f"resuming {entry.describe()}: the snapshot of {previous} and the backup "
            f"{entry.backup_id or '(none yet)'} of the first attempt are reused; the stack may "
            "be half-upgraded, so its health is not required"
        ]
        record.detail = f"resumed {previous} -> {target}"
        return {"from_version": previous, "to_version": target, "resumed": True}

    def _checks(self, switch: ReleaseSwitch, target: str, record: StepRecord) -> None:
        stack = switch.stack
        try:
            images = switch.runtime.images(target)
        except Exception as error:
            raise AirflowFailException(f"config of {target} is invalid: {error}") from None
        record.lines.append(f"config valid for {target}: images {sorted(set(images.values()))}")
        record.lines.append(self._fetchable(switch, target, images))
        unhealthy = healthy_now(stack, switch.runtime.context())
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
        runtime = switch.runtime
        if runtime.fetch_step == "build":
            missing = runtime.missing_build_inputs(target)
            if missing:
                raise AirflowFailException(f"build context missing for {'; '.join(missing)}")
            return f"buildable: every build context of {target} exists (built before the backup)"
        facts = runtime.image_facts(sorted(set(images.values())))
        absent = [ref for ref, fact in facts.items() if not fact["id"]]
        for ref in absent:
            if not runtime.pullable(ref, self.log):
                raise AirflowFailException(f"image {ref} is neither local nor pullable")
        return f"pullable: {len(facts) - len(absent)} local, {len(absent)} in the registry"

    def _disk_space(self, switch: ReleaseSwitch) -> str:
        from opsflow.backup.postgres.client import database_size
        from opsflow.backup.stack_backup import StackBackups
        from opsflow.operators.steps import human_bytes

        backups = StackBackups(switch.stack)
        needed = 0
        for source in switch.stack.backup.sources.postgres:
            with switch.runtime.reach(source.service, backups.resolve(source.conn_id)) as point:
                needed += database_size(point, source.database)
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
        stack = run_stack(self.stack_name)
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


class UpgradeRollbackOperator(ReleaseStepOperator):
    """Always runs; unless the new release is verified and is what runs (or nothing of it
    reached the stack), put the previous release back: stop the new one, restore images
    and config, restore the data if a migration started (or run the declared safe
    down-migration), start the previous release. Decided from the ledger and the engine,
    so a step that failed without running can never make it skip."""

    def __init__(self, *, step_task_ids: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.step_task_ids = list(step_task_ids)

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        if record.dry_run:
            raise AirflowSkipException("dry run: nothing to roll back")
        target = check_version(str(self.version))
        entry = Ledger(self.stack_name).get(entry_id(context))
        if entry is None or not entry.snapshot:
            raise AirflowSkipException("the upgrade stopped before the snapshot: nothing changed")
        snapshot = Snapshot.from_dict(entry.snapshot)
        records = step_records(context, self.step_task_ids)
        facts = step_facts(records, states=task_states(context))
        switch = self.switch()
        observed = switch.observe(upgrade_releases(entry))
        migrated = MIGRATION_STARTED in entry.notes or records.get("migrate") is not None
        touched = (
            migrated
            or records.get("start") is not None
            or observed.release != snapshot.version
            or switch.save_config().digest != snapshot.config_digest
        )
        decision = rollback_decision(
            target=target,
            previous=snapshot.version,
            has_snapshot=True,
            facts=facts,
            observed=observed,
            touched=touched,
        )
        if not decision.needed:
            raise AirflowSkipException(decision.reason)
        record.lines = [
            f"rolling back {target} -> {snapshot.version} because {decision.reason}",
            f"running before the rollback: {observed.describe()}",
        ]
        data = self._switch_back(switch, entry, snapshot, target, migrated, context, record)
        record.detail = f"back on {snapshot.version} ({data})"
        return {"version": snapshot.version, "data": data, "reason": decision.reason}

    def _switch_back(
        self,
        switch: ReleaseSwitch,
        entry: LedgerEntry,
        snapshot: Snapshot,
        target: str,
        migrated: bool,
        context: Context,
        record: StepRecord,
    ) -> str:
        stopped = switch.stop_app(target)
        record.lines.append(f"stopped {', '.join(stopped)}")
        record.lines += switch.put_back_images(snapshot.images)
        changed = switch.put_back_config(snapshot.config_digest)
        record.lines.append(f"config put back: {', '.join(changed) or 'unchanged'}")
        data = "data untouched (no migration ran)"
        if migrated:
            data = self._put_back_data(switch, entry, snapshot, target, context, record)
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
