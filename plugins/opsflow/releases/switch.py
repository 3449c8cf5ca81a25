"""Put a recorded release back: its config, its images, its data when asked, then start it.

Shared by the automatic rollback of ``<stack>__upgrade`` and by ``<stack>__rollback``.
Helm, Argo Rollouts and Kamal put back images only; a release is also the config it ran
with and the schema its code expects, so all three come back together here. No Airflow
task code: the benchmark drives the same calls.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsflow.backup.manifest import BackupError, new_backup_id, utcnow
from opsflow.backup.stream import check_artifact
from opsflow.releases.ledger import ConfigSnapshot, Ledger
from opsflow.releases.outcome import Observation, observe
from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.process import LineLogger
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import Stack, check_version

STOP_TIMEOUT = 300.0
START_TIMEOUT = 600.0


@dataclass(frozen=True)
class Snapshot:
    """The release an upgrade leaves: what a rollback puts back."""

    version: str
    images: dict[str, dict[str, Any]]  # service -> {"image": ref, "id": sha256}
    config_digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "images": self.images, "config_digest": self.config_digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        return cls(check_version(data["version"]), dict(data["images"]), str(data["config_digest"]))


class ReleaseSwitch:
    def __init__(self, stack: Stack, log: LineLogger, stacks_dir: Path | None = None) -> None:
        self.stack = stack
        self.log = log
        self.stacks_dir = stacks_dir
        self.ledger = Ledger(stack.name)
        self.runtime = runtime_for(stack, stacks_dir)

    # ------------------------------------------------------------------ facts

    def config_paths(self) -> list[tuple[str, Path]]:
        """The stack's config files; the stack file itself is opsflow's description of the
        stack, not its config: its digest is recorded, but a rollback never rewrites it."""
        return self.runtime.config_paths()

    def stack_file_digest(self) -> str:
        import hashlib

        from opsflow.stack.loader import stack_path

        return hashlib.sha256(stack_path(self.stack.name, self.stacks_dir).read_bytes()).hexdigest()

    def save_config(self) -> ConfigSnapshot:
        return self.ledger.save_config(self.config_paths())

    def app_services(self) -> list[str]:
        """Services whose image follows the release (the database and cache keep running)."""
        return [service.name for service in self.stack.services if service.versioned]

    def images(self, version: str) -> dict[str, dict[str, Any]]:
        """Reference and local image id of every versioned service of ``version`` (the
        database and cache images are not the release's to put back)."""
        versioned = set(self.app_services())
        refs = {s: ref for s, ref in self.runtime.images(version).items() if s in versioned}
        facts = self.runtime.image_facts(sorted(set(refs.values())))
        return {service: {"image": ref, "id": facts[ref]["id"]} for service, ref in refs.items()}

    def missing_images(self, images: dict[str, dict[str, Any]]) -> list[str]:
        """The recorded images (by id) that are no longer on this host."""
        facts = self.runtime.image_facts(sorted({str(fact["id"]) for fact in images.values()}))
        return [
            f"{service} ({fact['image']}, {str(fact['id'])[:19]})"
            for service, fact in sorted(images.items())
            if not facts[str(fact["id"])]["id"]
        ]

    def observe(self, releases: Sequence[tuple[str, Mapping[str, str]]]) -> Observation:
        """Which of ``releases`` (``[(version, {service: image id})]``, preferred first) the
        versioned services run now, as the engine reports it."""
        return observe(self.runtime.running(), self.app_services(), releases)

    def snapshot(self, version: str) -> tuple[Snapshot, list[str]]:
        """The running release as the ledger recorded it, checked against the engine."""
        notes: list[str] = []
        current = self.ledger.current()
        entry = current.entry if current and current.version == version else None
        live = self.images(version)
        recorded = dict(entry.images) if entry and entry.images else {}
        images = {}
        for service, fact in live.items():
            known = recorded.get(service, {})
            if known.get("id") and fact["id"] != known["id"]:
                notes.append(
                    f"{fact['image']} now points to {str(fact['id'] or 'nothing')[:19]}, "
                    "the release ran "
                    f"{str(known['id'])[:19]}: the rollback uses the recorded image"
                )
                fact = {"image": fact["image"], "id": known["id"]}
            if not fact["id"]:
                raise BackupError(
                    f"image {fact['image']} of release {version} is not on this host: "
                    "a rollback could not start it"
                )
            images[service] = fact
        gone = self.missing_images(images)
        if gone:
            raise BackupError(
                f"recorded images of release {version} are gone from this host: "
                f"{', '.join(gone)}; a rollback could not start it"
            )
        on_disk = self.save_config()
        digest = entry.config_digest if entry and entry.config_digest else on_disk.digest
        if digest != on_disk.digest:
            changed = _changed(self.ledger, digest, on_disk)
            notes.append(
                f"config on disk differs from what {version} ran with ({', '.join(changed)}): "
                "the upgrade applies the file on disk; a rollback puts back the recorded one"
            )
        return Snapshot(version, images, digest), notes

    # ------------------------------------------------------------------ actions

    def stop_app(self, version: str) -> list[str]:
        services = self.app_services()
        self.runtime.run("stop", version, self.log, services=services, timeout=STOP_TIMEOUT)
        return services

    def put_back_images(self, images: dict[str, dict[str, Any]]) -> list[str]:
        """Make each service's reference mean the recorded image again (a rebuilt or
        re-pulled tag would otherwise start something else under the old name)."""
        try:
            return self.runtime.pin_images(images)
        except RuntimeFailure as error:
            raise BackupError(str(error)) from error

    def put_back_config(self, digest: str) -> list[str]:
        return self.ledger.restore_config(digest, self.config_paths())

    def start(self, version: str) -> None:
        self.runtime.run("start", version, self.log, timeout=START_TIMEOUT)

    def down_migration_allowed(self, new_version: str) -> bool:
        migration = self.stack.migration
        if migration is None or not migration.down_command:
            return False
        return any(fnmatch.fnmatchcase(new_version, p) for p in migration.down_safe_for)

    def down_migrate(self, new_version: str, previous_version: str) -> None:
        self.runtime.down_migrate(new_version, previous_version, self.log)

    def restore_databases(self, backup_id: str, run_id: str) -> list[str]:
        """Restore every PostgreSQL source from one backup; the writers must be stopped.

        Each artifact is checked against the manifest first, and ``restore_postgres`` swaps
        the restored copy in only after it matched the backup's fingerprint.
        """
        from opsflow.backup.stack_backup import StackBackups

        backups = StackBackups(self.stack, self.stacks_dir)
        store, manifest = backups.find(backup_id, self.log)
        held = {saved.name for saved in manifest.sources}
        names = [name for name in postgres_source_names(self.stack) if name in held]
        staging = backups.staging_root / ".staging" / new_backup_id(utcnow(), f"{run_id}/restore")
        lines = []
        try:
            artifact_dir = backups.artifact_dir(store, manifest, staging)
            ctx = backups.context(manifest.backup_id, self.log, staging)
            for name in names:
                saved = manifest.source(name)
                artifact = artifact_dir / saved.artifacts[0].name
                check_artifact(artifact, saved.artifacts[0])
                backups.restore(saved, artifact, ctx)
                lines.append(f"{name}: restored from {manifest.backup_id}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return lines


def postgres_source_names(stack: Stack) -> list[str]:
    return [source.name for source in stack.backup.sources.postgres]


def _changed(ledger: Ledger, digest: str, on_disk: ConfigSnapshot) -> list[str]:
    import hashlib

    try:
        stored = ledger.config_files(digest)
    except (FileNotFoundError, ValueError):
        return ["recorded copy missing"]
    return sorted(
        name
        for name, sha in on_disk.files.items()
        if (hashlib.sha256(stored[name]).hexdigest() if name in stored else "missing") != sha
    ) or ["no file"]
