"""Where opsflow keeps its state, and the file helpers every writer of it shares.

The lowest layer: it imports nothing of opsflow but its errors, so the ledger, the lock,
the backups and the config snapshots all write files the same way.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

from opsflow.errors import OpsflowError

STATE_DIR_ENV = "OPSFLOW_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/opsflow")
# A stack name becomes a directory name (the stack model's rule).
_STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")


class DiskFull(OpsflowError, OSError):
    """A write ran out of space; names the directory."""


def state_dir() -> Path:
    """``$OPSFLOW_STATE_DIR``, else ``/var/lib/opsflow``."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured) if configured else DEFAULT_STATE_DIR


def stack_state_dir(stack: str) -> Path:
    """The state directory of one stack (ledger, lock, config snapshots, run snapshots)."""
    if not isinstance(stack, str) or not _STACK_NAME.fullmatch(stack):
        raise ValueError(f"invalid stack name {stack!r}")
    return state_dir() / stack


PRIVATE_DIR_MODE = 0o700


def make_private_dirs(directory: Path) -> None:
    """Create missing directories as 0700; directories that already exist are left alone.

    ``mkdir``'s mode is filtered by the umask, so each created directory is chmod-ed.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        path.chmod(PRIVATE_DIR_MODE)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (the file's own fsync is not enough)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: memoryview | bytes, path: Path) -> None:
    """Write every byte to ``fd``; a full disk names the directory it filled."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFull(errno.ENOSPC, f"disk full while writing {path.parent}") from err
            raise
        view = view[written:]


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write under a temporary name of this writer's own, fsync, rename: readers see the
    old or the new file, and two writers of the same file never share a temporary."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
