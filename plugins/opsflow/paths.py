"""Filesystem helpers shared by the state that opsflow writes (release history, backups)."""

from __future__ import annotations

import os
from pathlib import Path

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
