"""The release ledger: every deploy, upgrade, rollback and restore of a stack, and what it left.

It lives outside Airflow's metadata database, because it must outlive ``airflow db clean``
and be readable when Airflow itself is down, which is exactly when an operator needs to
know what ran last. Where it lives is a :class:`LedgerStore`: the embedded default is files
under ``$OPSFLOW_STATE_DIR/<stack>/`` on one machine (below); with workers on many hosts it
is one PostgreSQL database (``OPSFLOW_STATE_BACKEND=postgres``, :mod:`opsflow.state`),
holding the same entries, legacy releases and snapshots as rows. What an entry means, and
which of them count as releases, is decided here for both:

- ``ledger.jsonl``: one JSON line per change of an entry (an entry is written when its
  action starts and again when it ends). The newest line of an entry wins. Appends are
  fsynced under an exclusive lock; one damaged line is skipped, never fatal.
- ``configs/<digest>.tar``: content-addressed copies of the config files (compose files,
  env file, listed config paths) a release ran with, so a rollback puts back the config
  that belonged to the release and not only its images.

No Airflow imports: DAG tasks, image pruning and the benchmark all read it. Constructing a
``Ledger`` touches no file and no database; the first read or write does.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from opsflow.paths import make_private_dirs, stack_state_dir, write_atomic
from opsflow.stack.model import check_version
from opsflow.state.backend import POSTGRES, selected

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
LEGACY_HISTORY_FILE = "releases.jsonl"
ACTIONS = ("deploy", "upgrade", "rollback", "restore")
# running -> succeeded | failed | rolled-back (failed, previous release healthy again)
#          | rollback-failed (failed, and putting the previous release back failed too)
OUTCOMES = ("running", "succeeded", "failed", "rolled-back", "rollback-failed")
# Actions whose success changes which release runs.
RELEASE_ACTIONS = ("deploy", "upgrade", "rollback")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class LedgerEntry:
    """One action on a stack; ``images`` maps a service to ``{"image": ref, "id": sha256}``."""

    entry_id: str
    stack: str
    action: str
    version: str
    run_id: str
    dag_id: str
    triggered_by: str
    started_at: str = field(default_factory=now_iso)
    from_version: str | None = None
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_digest: str | None = None
    config_files: dict[str, str] = field(default_factory=dict)
    stack_file_digest: str | None = None
    backup_id: str | None = None
    # Upgrades: the release they left (version, images, config digest), for the rollback.
    snapshot: dict[str, Any] | None = None
    ended_at: str | None = None
    outcome: str = "running"
    failed_task: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        check_version(self.version)
        if self.from_version is not None:
            check_version(self.from_version)
        for key in ("entry_id", "stack", "run_id", "dag_id"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"{key} must be a non-empty string")
        # Dates are parsed here so a damaged line is skipped by the reader, never fatal.
        _parse_time(self.started_at)
        if self.ended_at is not None:
            _parse_time(self.ended_at)
        if not isinstance(self.images, dict) or not all(
            isinstance(fact, dict) for fact in self.images.values()
        ):
            raise ValueError("images must map services to {image, id}")

    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    def image_ids(self) -> dict[str, str]:
        return {s: str(f["id"]) for s, f in self.images.items() if f.get("id")}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LedgerEntry:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """``upgrade 1.1.0 -> 1.2.0 rolled-back (demo__upgrade manual__…, 2026-11-22T10:00Z)``."""
        move = f"{self.from_version} -> {self.version}" if self.from_version else self.version
        failed = f" at {self.failed_task}" if self.failed_task else ""
        return (
            f"{self.action} {move} {self.outcome}{failed} "
            f"({self.dag_id} {self.run_id}, {self.started_at})"
        )


@dataclass(frozen=True)
class Release:
    """A release that ran: what image pruning keeps and the rollback form offers."""

    stack: str
    version: str
    run_id: str
    recorded_at: datetime
    images: dict[str, str] = field(default_factory=dict)  # service -> image id or reference
    entry: LedgerEntry | None = None


@dataclass(frozen=True)
class ConfigSnapshot:
    digest: str
    files: dict[str, str]  # archive name -> sha256, or "missing"


# A stored record: where it came from (for the warning when it is unreadable) and its JSON.
Record = tuple[str, str | bytes]


class LedgerStore(Protocol):
    """Where one stack's ledger is kept; it stores and returns, the ``Ledger`` decides."""

    @property
    def where(self) -> str: ...

    def put_entry(self, entry_id: str, started_at: datetime, data: str) -> None:
        """Keep ``data`` (the entry as JSON) as the entry's newest state."""

    def entry_records(self) -> list[Record]:
        """Every stored state of the entries, oldest write first."""

    def legacy_records(self) -> list[Record]:
        """The release history that preceded the ledger, in its order."""

    def has_config(self, digest: str) -> bool: ...

    def put_config(self, digest: str, data: bytes) -> bool: ...

    def get_config(self, digest: str) -> bytes | None: ...


class FileLedgerStore:
    """``ledger.jsonl``, ``releases.jsonl`` and ``configs/`` in one stack's state directory.

    Appends are fsynced under an exclusive ``flock``; one damaged line is skipped, never
    fatal; a line cut short by a crash does not swallow the next one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LEDGER_FILE
        self.legacy = directory / LEGACY_HISTORY_FILE
        self.configs = directory / "configs"

    @property
    def where(self) -> str:
        return str(self.path)

    def put_entry(self, entry_id: str, started_at: datetime, data: str) -> None:
        make_private_dirs(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            prefix = b""
            if size:
                # A line cut short by a crash must not swallow the new one.
                last = os.pread(fd, 1, size - 1)
                prefix = b"\n" if last != b"\n" else b""
            os.write(fd, prefix + data.encode("utf-8") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)  # also releases the lock

    def entry_records(self) -> list[Record]:
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [
            (f"line {number} of {self.path}", raw)
            for number, raw in enumerate(content.splitlines(), start=1)
            if raw.strip()
        ]

    def legacy_records(self) -> list[Record]:
        try:
            lines = self.legacy.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [(f"line of {self.legacy}", raw) for raw in lines]

    def _config(self, digest: str) -> Path:
        return self.configs / f"{digest}.tar"

    def has_config(self, digest: str) -> bool:
        return self._config(digest).exists()

    def put_config(self, digest: str, data: bytes) -> bool:
        make_private_dirs(self.configs)
        write_atomic(self._config(digest), data)
        return True

    def get_config(self, digest: str) -> bytes | None:
        path = self._config(digest)
        return path.read_bytes() if path.is_file() else None


def ledger_store(stack: str) -> LedgerStore:
    """The store ``$OPSFLOW_STATE_BACKEND`` names for ``stack`` (nothing is opened yet)."""
    directory = stack_state_dir(stack)
    chosen = selected()
    if chosen.kind == POSTGRES:
        from opsflow.state.postgres import PostgresLedgerStore

        return PostgresLedgerStore(stack, chosen.conn_id)
    return FileLedgerStore(directory)


class Ledger:
    """The ledger and config snapshots of one stack."""

    def __init__(self, stack: str, store: LedgerStore | None = None) -> None:
        self.stack = stack
        # The file locations, also under another backend (they are where an import reads).
        self.directory = stack_state_dir(stack)
        self.path = self.directory / LEDGER_FILE
        self.configs = self.directory / "configs"
        self.store = store if store is not None else ledger_store(stack)

    @property
    def where(self) -> str:
        """Where the entries are kept, for messages: a file path or a database table."""
        return self.store.where

    # ------------------------------------------------------------------ entries

    def write(self, entry: LedgerEntry) -> None:
        """Store the entry's current state; readers see the newest state of each entry."""
        if entry.stack != self.stack:
            raise ValueError(f"entry of stack {entry.stack!r} written to the {self.stack} ledger")
        self.store.put_entry(entry.entry_id, *entry_record(entry))
        log.info("ledger %s: %s", self.stack, entry.describe())

    def entries(self) -> list[LedgerEntry]:
        """Every entry in its newest state, in the order the entries were started."""
        found: dict[str, LedgerEntry] = {}
        for where, raw in self.store.entry_records():
            try:
                entry = LedgerEntry.from_dict(json.loads(raw))
            except (ValueError, TypeError) as exc:
                log.warning("skipping unreadable %s: %s", where, exc)
                continue
            found[entry.entry_id] = entry
        return sorted(found.values(), key=lambda e: e.started_at)

    def get(self, entry_id: str) -> LedgerEntry | None:
        return next((e for e in self.entries() if e.entry_id == entry_id), None)

    def releases(self) -> list[Release]:
        """Releases that ran, oldest first: every successful deploy, upgrade and rollback,
        plus the lines of the release history that preceded this ledger."""
        found = self.legacy_releases()
        for entry in self.entries():
            if entry.action in RELEASE_ACTIONS and entry.outcome == "succeeded":
                images = {
                    s: str(f.get("id") or f.get("image"))
                    for s, f in entry.images.items()
                    if f.get("id") or f.get("image")
                }
                found.append(
                    Release(
                        stack=self.stack,
                        version=entry.version,
                        run_id=entry.run_id,
                        recorded_at=_parse_time(entry.ended_at or entry.started_at),
                        images=images,
                        entry=entry,
                    )
                )
        return sorted(found, key=lambda r: r.recorded_at)

    def current(self) -> Release | None:
        recorded = self.releases()
        return recorded[-1] if recorded else None

    def recent(self, count: int) -> list[Release]:
        return newest_distinct(self.releases(), count)

    def backups_taken_on(self, version: str) -> list[str]:
        """Ids of backups taken while ``version`` ran (an upgrade's pre-upgrade backup,
        taken before leaving it), newest first. A rollback's backup id names the backup it
        restored, which belongs to the release it went to, so rollbacks do not count."""
        return [
            e.backup_id
            for e in reversed(self.entries())
            if e.backup_id and e.action == "upgrade" and e.from_version == version
        ]

    def legacy_releases(self) -> list[Release]:
        """The readable lines of the release history that preceded the ledger, in order."""
        found = []
        for where, raw in self.store.legacy_records():
            try:
                data = json.loads(raw)
                found.append(
                    Release(
                        stack=self.stack,
                        version=check_version(data["version"]),
                        run_id=str(data["run_id"]),
                        recorded_at=_parse_time(data["recorded_at"]),
                        images={str(k): str(v) for k, v in data.get("images", {}).items()},
                    )
                )
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("skipping unreadable %s: %s", where, exc)
                continue
        return found

    # ------------------------------------------------------------------ config snapshots

    def save_config(self, files: Iterable[tuple[str, Path]]) -> ConfigSnapshot:
        """Store the files (by archive name) once per distinct content; return the digest.

        A missing file is recorded as missing, so the digest still tells two configs apart.
        """
        contents: dict[str, bytes | None] = {}
        for name, path in files:
            try:
                contents[name] = path.read_bytes()
            except FileNotFoundError:
                contents[name] = None
        return self.save_contents(contents)

    def save_contents(self, contents: Mapping[str, bytes | None]) -> ConfigSnapshot:
        """The same for contents by archive name (``None``: recorded as missing)."""
        digests = {
            name: hashlib.sha256(data).hexdigest() if data is not None else "missing"
            for name, data in sorted(contents.items())
        }
        digest = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
        if not self.store.has_config(digest):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in sorted(contents.items()):
                    if data is None:
                        continue
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), 0o600
                    tar.addfile(info, io.BytesIO(data))
            self.store.put_config(digest, buffer.getvalue())
        return ConfigSnapshot(digest, digests)

    def config_files(self, digest: str) -> dict[str, bytes]:
        """The stored files of a config snapshot, by archive name."""
        if not _DIGEST.fullmatch(digest or ""):
            raise ValueError(f"invalid config digest {digest!r}")
        archive = self.store.get_config(digest)
        if archive is None:
            raise FileNotFoundError(f"config snapshot {digest[:12]} of {self.stack} is missing")
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r") as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    found[member.name] = handle.read()
        return found

    def restore_config(self, digest: str, files: Iterable[tuple[str, Path]]) -> list[str]:
        """Put the snapshot's content back into ``files``; returns the names that changed.

        Each file is replaced atomically with its current mode; a file the snapshot does
        not hold is left alone (the snapshot recorded it as missing).
        """
        stored = self.config_files(digest)
        changed = []
        for name, path in files:
            data = stored.get(name)
            if data is None:
                continue
            try:
                if path.read_bytes() == data:
                    continue
                mode = path.stat().st_mode & 0o777
            except FileNotFoundError:
                mode = 0o600
            write_atomic(path, data, mode)
            path.chmod(mode)
            changed.append(name)
        return changed


def entry_record(entry: LedgerEntry) -> tuple[datetime, str]:
    """When the entry started and its JSON, as every store keeps them."""
    data = json.dumps(entry.to_dict(), sort_keys=True, separators=(",", ":"))
    return _parse_time(entry.started_at), data


def newest_distinct(recorded: list[Release], count: int) -> list[Release]:
    """The newest release of each of the newest ``count`` distinct versions, newest first.

    Distinct because redeploying the same version must not push the real previous
    release, the one a rollback goes back to, out of the answer.
    """
    found: list[Release] = []
    seen: set[str] = set()
    if count <= 0:
        return found
    for release in reversed(recorded):
        if release.version not in seen:
            seen.add(release.version)
            found.append(release)
            if len(found) == count:
                break
    return found


def current_and_previous(stack: str) -> list[str]:
    """Versions of the newest two distinct releases, newest first (fewer if fewer exist)."""
    return [release.version for release in Ledger(stack).recent(2)]


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO date, got {value!r}")
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
