"""One source of truth per run: every task of a run works from the stack file as it was
when the run's first task read it.

A stack file edited while an upgrade runs must not give its rollback other services, other
checks or another backup destination than its start had. The first task of a run that asks
for the stack stores the file's bytes under the stack's state dir
(``runs/<dag_id>--<run_id>.yaml``; for a file that ``extends`` another, the merged
document); every later task of the run, including retries and a
cleared run's second attempt, reads that copy and judges it as the file at its real path
(its name, relative paths and allowed roots). Snapshots of old runs are pruned.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path

from opsflow.paths import make_private_dirs, stack_state_dir, write_atomic
from opsflow.stack.loader import load_stack_file, parse_stack_text, stack_path, stack_source
from opsflow.stack.model import Stack

RUNS_DIR = "runs"
KEEP_SECONDS = 30 * 86400
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def snapshot_path(stack: str, dag_id: str, run_id: str) -> Path:
    """Where a run's copy of the stack file lives (ids made safe as one file name)."""
    name = f"{_UNSAFE.sub('_', dag_id)}--{_UNSAFE.sub('_', run_id)}.yaml"
    return stack_state_dir(stack) / RUNS_DIR / name[:240]


def load_run_stack(stack: str, dag_id: str, run_id: str, directory: Path | None = None) -> Stack:
    """The stack as this run sees it: its stored copy, stored now if this is the first ask."""
    original = stack_path(stack, directory)
    snapshot = snapshot_path(stack, dag_id, run_id)
    try:
        text = snapshot.read_text(encoding="utf-8")
    except FileNotFoundError:
        load_stack_file(original)  # a broken file fails here, naming the file itself
        text = _store(snapshot, stack_source(original))
    return parse_stack_text(text, original)


def _store(snapshot: Path, content: bytes) -> str:
    """Keep the first copy written: two tasks racing to be first read the same bytes."""
    make_private_dirs(snapshot.parent)
    staged = snapshot.with_name(f".{snapshot.name}.{os.getpid()}.{secrets.token_hex(4)}")
    write_atomic(staged, content)
    try:
        os.link(staged, snapshot)
    except FileExistsError:
        pass
    finally:
        staged.unlink(missing_ok=True)
    _prune(snapshot.parent)
    return snapshot.read_text(encoding="utf-8")


def _prune(directory: Path, now: float | None = None) -> None:
    cutoff = (now or time.time()) - KEEP_SECONDS
    for old in directory.glob("*.yaml"):
        with contextlib.suppress(FileNotFoundError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
