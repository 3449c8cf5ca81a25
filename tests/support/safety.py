"""Stack-file path safety: a directory inside a system directory, to point symlinks at."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsflow.stack.safety import ALLOWED_ROOTS_ENV


@pytest.fixture
def system_victim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away directory inside a system directory (/dev/shm, else /run), with the
    default allow-list in force: what a symlink planted after load could point to."""
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="opsflow-victim-", dir=shm if shm.is_dir() else "/run"))
    try:
        yield base
    finally:
        shutil.rmtree(base)
