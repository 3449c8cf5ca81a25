"""The manifest of one backup: what was saved, how to check it, and whether it was proven.

A backup exists only once its manifest is written, and the manifest is written last: a
directory or key prefix without one is an interrupted backup, never listed, restored or
counted by retention (it is swept later). Plain dataclasses and JSON; no Airflow imports.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from opsflow.errors import OpsflowError
from opsflow.runtimes.process import LineLogger

FORMAT = 1
MANIFEST_NAME = "manifest.json"
BACKUP_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$"
_BACKUP_ID = re.compile(BACKUP_ID_PATTERN)

SourceKind = Literal["postgres", "redis", "bucket", "files"]
Status = Literal["verified", "unverified", "failed"]
VerificationStatus = Literal["passed", "failed", "skipped"]


class BackupError(OpsflowError, RuntimeError):
    """A backup or restore step failed for a reason an operator can act on."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_iso() -> str:
    return utcnow().isoformat(timespec="seconds")


def new_backup_id(started: datetime, run_id: str) -> str:
    """Sortable by time; the run id's hash makes it unique and stable across task retries."""
    stamp = started.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(run_id.encode()).hexdigest()[:6]}"


def check_backup_id(value: str) -> str:
    if not isinstance(value, str) or not _BACKUP_ID.fullmatch(value):
        raise BackupError(f"not a backup id (expected like 20261121T020000Z-1a2b3c): {value!r}")
    return value


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(check_backup_id(backup_id)[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@dataclass
class Artifact:
    """One file of a backup, as stored: zstd-compressed, with its size and sha256."""

    name: str
    size: int
    sha256: str


@dataclass
class Verification:
    status: VerificationStatus
    checked_at: str = ""
    seconds: float = 0.0
    # One line per difference found, naming the table, key space or object.
    differences: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SourceBackup:
    """What one source's dump produced; ``fingerprint`` is what verification compares."""

    name: str
    kind: SourceKind
    artifacts: list[Artifact]
    started_at: str
    ended_at: str
    tool_version: str = ""
    server_version: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceBackup:
        data = dict(data)
        data["artifacts"] = [Artifact(**a) for a in data.get("artifacts", [])]
        verification = data.get("verification")
        data["verification"] = Verification(**verification) if verification else None
        return cls(**data)


@dataclass
class Manifest:
    backup_id: str
    stack: str
    # The run type of a backup run (scheduled | manual | backfill | asset_triggered ...),
    # or why another workflow took it (pre-restore | pre-upgrade | pre-rollback).
    trigger: str
    run_id: str
    started_at: str
    ended_at: str
    sources: list[SourceBackup]
    compression: dict[str, Any] = field(default_factory=dict)
    # Per destination ("local", "s3"): where it went and whether the copy was checked.
    destinations: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def status(self) -> Status:
        """Verified only when every source was restored and matched."""
        verifications = [source.verification for source in self.sources]
        if any(v is not None and v.status == "failed" for v in verifications):
            return "failed"
        if verifications and all(v is not None and v.passed for v in verifications):
            return "verified"
        return "unverified"

    @property
    def created(self) -> datetime:
        return backup_time(self.backup_id)

    def source(self, name: str) -> SourceBackup:
        for source in self.sources:
            if source.name == name:
                return source
        raise BackupError(f"backup {self.backup_id} has no source {name!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        data["sources"] = [source.to_dict() for source in self.sources]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data.pop("status", None)
        if data.get("format") != FORMAT:
            raise BackupError(f"unsupported manifest format {data.get('format')!r}")
        data["sources"] = [SourceBackup.from_dict(s) for s in data.get("sources", [])]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError) as err:
            raise BackupError(f"unreadable manifest: {err}") from None


def conclude(
    name: str, differences: list[str], details: dict[str, Any], started: float, log: LineLogger
) -> Verification:
    """The verdict of one verification, logged with every difference it found.

    ``started`` is the ``time.monotonic()`` reading taken when the verification began.
    """
    status: VerificationStatus = "failed" if differences else "passed"
    seconds = round(time.monotonic() - started, 2)
    log.info(
        "%s: verification %s in %.1fs (%d differences)", name, status, seconds, len(differences)
    )
    for line in differences:
        log.info("  %s", line)
    return Verification(
        status=status,
        checked_at=now_iso(),
        seconds=seconds,
        differences=differences,
        details=details,
    )
