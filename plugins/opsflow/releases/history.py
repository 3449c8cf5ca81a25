"""A minimal, file-based record of successful deploys per stack.

Image pruning must never remove what a rollback needs, so it has to know which versions
were deployed last. Until a proper release ledger exists this is one JSON line per
successful deploy in ``<state dir>/<stack>/releases.jsonl``: append-only, written with
fsync so a crash never loses a recorded release, and read leniently so one damaged line
never hides the others. No Airflow imports: the deploy DAG and the cleanup code both use it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsflow.paths import make_private_dirs
from opsflow.stack.model import STACK_NAME_PATTERN, VERSION_PATTERN

log = logging.getLogger(__name__)

STATE_DIR_ENV = "OPSFLOW_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/opsflow")
HISTORY_FILE = "releases.jsonl"
_STACK_NAME = re.compile(STACK_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class Release:
    """One successful deploy: the version, the image of every service and the run that did it."""

    stack: str
    version: str
    run_id: str
    recorded_at: datetime
    images: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "version": self.version,
            "run_id": self.run_id,
            "recorded_at": self.recorded_at.isoformat(),
            "images": dict(self.images),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Release:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        images = data.get("images", {})
        if not isinstance(images, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in images.items()
        ):
            raise ValueError("images must map service names to image references")
        for key in ("stack", "version", "run_id", "recorded_at"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"{key} must be a non-empty string")
        return cls(
            stack=data["stack"],
            version=data["version"],
            run_id=data["run_id"],
            recorded_at=_aware(datetime.fromisoformat(data["recorded_at"])),
            images=dict(images),
        )


def state_dir() -> Path:
    """``$OPSFLOW_STATE_DIR``, else ``/var/lib/opsflow``."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured) if configured else DEFAULT_STATE_DIR


def history_path(stack: str) -> Path:
    # The stack name becomes a directory name: refuse anything the stack model would refuse.
    if not isinstance(stack, str) or not _STACK_NAME.fullmatch(stack):
        raise ValueError(f"invalid stack name {stack!r}")
    return state_dir() / stack / HISTORY_FILE


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def record_release(
    stack: str,
    version: str,
    images: dict[str, str],
    run_id: str,
    when: datetime | None = None,
) -> None:
    """Append one successful deploy; a second call for the same ``run_id`` changes nothing.

    The check for an existing line and the append happen under an exclusive lock, so a
    retried task racing its own earlier attempt still writes one line.
    """
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"invalid version {version!r}")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"invalid run_id {run_id!r}")
    path = history_path(stack)
    release = Release(
        stack=stack,
        version=version,
        run_id=run_id,
        recorded_at=_aware(when or datetime.now(UTC)),
        images=dict(images),
    )
    line = json.dumps(release.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(os.dup(fd), "rb") as existing:
            content = existing.read()
        if any(r.run_id == run_id for r in _parse(content, path)):
            log.info("release of %s by run %s is already recorded", stack, run_id)
            return
        # A line cut short by a crash must not swallow the new one.
        prefix = b"\n" if content and not content.endswith(b"\n") else b""
        os.write(fd, prefix + line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock
    log.info("recorded release %s of %s (run %s) in %s", version, stack, run_id, path)


def _parse(content: bytes, path: Path) -> list[Release]:
    found: list[Release] = []
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            found.append(Release.from_dict(json.loads(raw)))
        except (ValueError, TypeError) as exc:  # JSONDecodeError and bad dates are ValueErrors
            log.warning("skipping unreadable line %s of %s: %s", number, path, exc)
    return found


def releases(stack: str) -> list[Release]:
    """Every recorded release of ``stack``, oldest first; damaged lines are skipped."""
    path = history_path(stack)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse(content, path)


def current_and_previous(stack: str) -> list[str]:
    """Versions of the newest two distinct releases, newest first (fewer if fewer exist).

    Distinct because redeploying the same version must not push the real previous
    release, the one a rollback goes back to, out of the answer.
    """
    return [release.version for release in newest_distinct(releases(stack), 2)]


def newest_distinct(recorded: list[Release], count: int) -> list[Release]:
    """The newest release of each of the newest ``count`` distinct versions, newest first."""
    found: list[Release] = []
    seen: set[str] = set()
    for release in reversed(recorded):
        if release.version not in seen:
            seen.add(release.version)
            found.append(release)
            if len(found) == count:
                break
    return found
