"""Operators of ``<stack>__rollback``: go back to a named earlier release from the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from opsflow.backup.manifest import new_backup_id, utcnow
from opsflow.operators.release import ReleaseStepOperator, entry_id, triggered_by
from opsflow.operators.steps import StepRecord, as_bool
from opsflow.releases.ledger import LedgerEntry, Release
from opsflow.releases.switch import Snapshot, postgres_source_names
from opsflow.stack.model import check_version

PREVIOUS = "previous"


def pick_release(releases: list[Release], wanted: str) -> tuple[Release, Release]:
    """(current, target): ``previous`` is the newest release of another version."""
    if not releases:
        raise AirflowFailException("the ledger records no release of this stack yet")
    current = releases[-1]
    for release in reversed(releases):
        if wanted == PREVIOUS and release.version != current.version:
            return current, release
        if release.version == wanted:
            return current, release
    seen = list(dict.fromkeys(r.version for r in reversed(releases)))
    raise AirflowFailException(
        f"no recorded release {wanted!r} to go back to; recorded: {', '.join(seen[:10])}"
    )


class RollbackPlanOperator(ReleaseStepOperator):
    """Find the target release in the ledger, check its images, config and (when asked)
    backup are all there, snapshot the current release, and open the ledger entry."""

    template_fields: Sequence[str] = ("is_dry_run", "version", "restore_data")

    def __init__(self, *, restore_data: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.restore_data = restore_data

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        wanted = check_version(str(self.version))
        switch = self.switch()
        current, target = pick_release(switch.ledger.releases(), wanted)
        entry = target.entry
        if entry is None or not entry.image_ids():
            raise AirflowFailException(
                f"release {target.version} was recorded without image ids (before the "
                "ledger existed): deploy it instead"
            )
        images = {s: f for s, f in entry.images.items() if f.get("id")}
        gone = switch.missing_images(images)
        if gone:
            raise AirflowFailException(
                f"images of release {target.version} are gone from this host: {', '.join(gone)}"
                f"; deploy {target.version} instead (nothing was stopped)"
            )
        backup_id = None
        if as_bool(self.restore_data):
            backups = switch.ledger.backups_taken_on(target.version)
            if not backups:
                raise AirflowFailException(
                    f"no backup is recorded for release {target.version} (a backup taken "
                    "while it ran, before an upgrade left it): roll back without data"
                )
            backup_id = backups[0]
        snapshot, notes = switch.snapshot(current.version)
        config = entry.config_digest or snapshot.config_digest
        again = " (the current release: re-applied)" if target.version == current.version else ""
        record.lines = [
            f"{current.version} -> {target.version}{again} "
            f"(recorded by {entry.dag_id} {entry.run_id})",
            *notes,
            f"config: {'recorded ' + config[:12] if entry.config_digest else 'not recorded, kept'}",
            f"data: {'restore from ' + backup_id if backup_id else 'left as it is'}",
        ]
        record.detail = f"{current.version} -> {target.version}"
        plan = {
            "from_version": current.version,
            "version": target.version,
            "target": Snapshot(target.version, images, config).to_dict(),
            "backup_id": backup_id,
        }
        if not record.dry_run:
            switch.ledger.write(
                LedgerEntry(
                    entry_id=entry_id(context),
                    stack=self.stack_name,
                    action="rollback",
                    version=target.version,
                    from_version=current.version,
                    run_id=context["run_id"],
                    dag_id=context["ti"].dag_id,
                    triggered_by=triggered_by(context),
                    images=images,
                    config_digest=config,
                    snapshot=snapshot.to_dict(),
                    backup_id=backup_id,
                    notes=notes,
                )
            )
        return plan


class RollbackSwitchOperator(ReleaseStepOperator):
    """Stop the current release, put back the target's images and config (and data when
    asked, after backing up the data it replaces), start the target release."""

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        plan = context["ti"].xcom_pull(task_ids="plan") or {}
        target = Snapshot.from_dict(plan["target"])
        current = check_version(str(plan["from_version"]))
        if record.dry_run:
            record.lines = [
                f"would stop {current}, put back images and config of {target.version}"
                + (f", restore data from {plan['backup_id']}" if plan.get("backup_id") else "")
                + f", start {target.version}"
            ]
            return {}
        switch = self.switch()
        record.lines.append(f"stopped {', '.join(switch.stop_app(current))} of {current}")
        record.lines += switch.put_back_images(target.images)
        changed = switch.put_back_config(target.config_digest)
        record.lines.append(f"config put back: {', '.join(changed) or 'unchanged'}")
        if plan.get("backup_id"):
            from opsflow.backup.stack_backup import StackBackups

            names = postgres_source_names(switch.stack)
            backup_id = new_backup_id(utcnow(), f"{context['run_id']}/pre-rollback")
            StackBackups(switch.stack).take_backup(
                names, backup_id, "pre-rollback", context["run_id"], self.log, verify=False
            )
            record.lines.append(f"backed up the current data first: {backup_id}")
            record.lines += switch.restore_databases(plan["backup_id"], context["run_id"])
        switch.start(target.version)
        record.lines.append(f"started {target.version}")
        record.detail = f"{current} -> {target.version}"
        return {"version": target.version}
