"""The stack lock: at most one deploy, upgrade, rollback or restore of a stack at a time.

``max_active_runs`` only limits runs of one DAG; these four DAGs change the same
containers and databases, so they share one lock per stack: ``lock.json`` in the stack's
state directory, next to the ledger, readable without Airflow. It names its holder (DAG
and run), and every read-modify-write happens under ``flock`` on a separate guard file.

A holder's own run takes the lock again (a cleared or retried run resumes). A lock whose
holder's run has ended (its always-run ``unlock`` task never got to run, e.g. the run was
marked failed by hand) is taken over after an owner check; a lock past its expiry is taken
over only when no owner check is possible (a run known to be still going keeps it).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opsflow.paths import make_private_dirs, stack_state_dir, write_atomic

LOCK_FILE = "lock.json"
GUARD_FILE = ".lock.guard"


@dataclass(frozen=True)
class LockHolder:
    stack: str
    dag_id: str
    run_id: str
    acquired_at: str
    expires_at: str
    host: str = ""

    @classmethod
    def new(cls, stack: str, dag_id: str, run_id: str, ttl: timedelta) -> LockHolder:
        now = datetime.now(UTC)
        return cls(
            stack=stack,
            dag_id=dag_id,
            run_id=run_id,
            acquired_at=now.isoformat(timespec="seconds"),
            expires_at=(now + ttl).isoformat(timespec="seconds"),
            host=socket.gethostname(),
        )

    def same_run(self, other: LockHolder) -> bool:
        return (self.dag_id, self.run_id) == (other.dag_id, other.run_id)

    def expired(self, now: datetime | None = None) -> bool:
        expires = datetime.fromisoformat(self.expires_at)
        if expires.tzinfo is None:
            raise ValueError(f"expires_at {self.expires_at!r} has no time zone")
        return (now or datetime.now(UTC)) >= expires

    def describe(self) -> str:
        return (
            f"{self.dag_id} run {self.run_id} (since {self.acquired_at}, expires {self.expires_at})"
        )


# Answers whether the holder's run has ended: True (ended), False (still running) or
# None (cannot tell, e.g. Airflow unreachable).
OwnerCheck = Callable[[LockHolder], bool | None]


@dataclass(frozen=True)
class LockResult:
    acquired: bool
    holder: LockHolder | None  # the holder now: us when acquired, the other run when not
    note: str = ""


class StackLock:
    def __init__(self, stack: str) -> None:
        self.stack = stack
        self.directory = stack_state_dir(stack)
        self.path = self.directory / LOCK_FILE

    def _guarded(self) -> int:
        make_private_dirs(self.directory)
        fd = os.open(self.directory / GUARD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def holder(self) -> LockHolder | None:
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
            holder = LockHolder(**data)
            holder.expired()  # a lock whose expiry cannot be read is damaged
            return holder
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            # A damaged lock must not wedge the stack forever, nor be silently ignored.
            raise RuntimeError(f"unreadable stack lock {self.path}: {exc}; remove it") from exc

    def acquire(self, owner: LockHolder, ended: OwnerCheck) -> LockResult:
        fd = self._guarded()
        try:
            current = self.holder()
            note = ""
            if current is not None and not current.same_run(owner):
                finished = ended(current)
                if finished:
                    note = f"took over the lock of {current.describe()}: that run has ended"
                elif finished is None and current.expired():
                    note = f"took over the expired lock of {current.describe()}"
                else:
                    return LockResult(False, current)
            elif current is not None:
                owner = LockHolder(**{**asdict(owner), "acquired_at": current.acquired_at})
                note = "this run already held the lock (resumed)"
            write_atomic(self.path, json.dumps(asdict(owner), indent=2).encode() + b"\n")
            return LockResult(True, owner, note)
        finally:
            os.close(fd)

    def release(self, dag_id: str, run_id: str) -> LockHolder | None:
        """Remove the lock if this run holds it; returns whoever holds it afterwards."""
        fd = self._guarded()
        try:
            current = self.holder()
            if current is not None and (current.dag_id, current.run_id) == (dag_id, run_id):
                self.path.unlink()
                return None
            return current
        finally:
            os.close(fd)
