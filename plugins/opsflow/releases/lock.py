"""The stack lock: at most one deploy, upgrade, rollback or restore of a stack at a time.

``max_active_runs`` only limits runs of one DAG; these four DAGs change the same
containers and databases, so they share one lock per stack, readable without Airflow. It
names its holder (DAG and run), and every read-modify-write happens while the store holds
it exclusively: with the file backend ``lock.json`` in the stack's state directory, next to
the ledger, under ``flock`` on a separate guard file; with the PostgreSQL backend the
stack's row of ``opsflow_stack_lock``, ``FOR UPDATE`` in one transaction. The decision
below (:func:`decide`) is the same for both.

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
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from opsflow.paths import make_private_dirs, stack_state_dir, write_atomic
from opsflow.state.backend import POSTGRES, selected

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


def decide(current: LockHolder | None, owner: LockHolder, ended: OwnerCheck) -> LockResult:
    """Whether ``owner`` gets a lock ``current`` holds (``None``: free), and with which note.

    Every backend asks this while it holds the lock exclusively, so racing runs are
    decided one after the other, each on what the one before left.
    """
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
    return LockResult(True, owner, note)


# A stored holder: the JSON text of lock.json, or the columns of a database row.
RawHolder = str | Mapping[str, Any] | None


class LockRecord(Protocol):
    """The lock of one stack while its store holds it exclusively."""

    def read(self) -> RawHolder: ...

    def write(self, holder: Mapping[str, str] | None) -> None:
        """Store ``holder`` (``None``: the lock is free)."""


class LockStore(Protocol):
    """Where one stack's lock is kept; it stores and returns, ``decide`` decides."""

    @property
    def where(self) -> str: ...

    def read(self) -> RawHolder: ...

    def exclusive(self) -> AbstractContextManager[LockRecord]: ...


class FileLockStore:
    """``lock.json``, changed only under ``flock`` on the guard file next to it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE

    @property
    def where(self) -> str:
        return str(self.path)

    def read(self) -> RawHolder:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write(self, holder: Mapping[str, str] | None) -> None:
        if holder is None:
            self.path.unlink(missing_ok=True)
        else:
            write_atomic(self.path, json.dumps(dict(holder), indent=2).encode() + b"\n")

    @contextmanager
    def exclusive(self) -> Iterator[FileLockStore]:
        make_private_dirs(self.directory)
        fd = os.open(self.directory / GUARD_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # also releases the flock


def lock_store(stack: str) -> LockStore:
    """The store ``$OPSFLOW_STATE_BACKEND`` names for ``stack`` (nothing is opened yet)."""
    directory = stack_state_dir(stack)
    chosen = selected()
    if chosen.kind == POSTGRES:
        from opsflow.state.postgres import PostgresLockStore

        return PostgresLockStore(stack, chosen.conn_id)
    return FileLockStore(directory)


class StackLock:
    def __init__(self, stack: str, store: LockStore | None = None) -> None:
        self.stack = stack
        # The file location, also under another backend (it is where an import reads).
        self.directory = stack_state_dir(stack)
        self.path = self.directory / LOCK_FILE
        self.store = store if store is not None else lock_store(stack)

    @property
    def where(self) -> str:
        """Where the lock is kept, for messages: a file path or a database table."""
        return self.store.where

    def _parse(self, raw: RawHolder) -> LockHolder | None:
        if raw is None:
            return None
        try:
            data: Any = json.loads(raw) if isinstance(raw, str) else dict(raw)
            holder = LockHolder(**data)
            holder.expired()  # a lock whose expiry cannot be read is damaged
            return holder
        except (ValueError, TypeError) as exc:
            # A damaged lock must not wedge the stack forever, nor be silently ignored.
            raise RuntimeError(f"unreadable stack lock {self.where}: {exc}; remove it") from exc

    def holder(self) -> LockHolder | None:
        return self._parse(self.store.read())

    def acquire(self, owner: LockHolder, ended: OwnerCheck) -> LockResult:
        if owner.stack != self.stack:
            raise ValueError(f"a holder of stack {owner.stack!r} for the {self.stack} lock")
        with self.store.exclusive() as record:
            result = decide(self._parse(record.read()), owner, ended)
            if result.acquired:
                assert result.holder is not None
                record.write(asdict(result.holder))
            return result

    def release(self, dag_id: str, run_id: str) -> LockHolder | None:
        """Free the lock if this run holds it; returns whoever holds it afterwards."""
        with self.store.exclusive() as record:
            current = self._parse(record.read())
            if current is not None and (current.dag_id, current.run_id) == (dag_id, run_id):
                record.write(None)
                return None
            return current

    def adopt(self, holder: LockHolder) -> LockResult:
        """Put ``holder`` in a free lock (moving a held lock to another store); when the
        lock is held already, by it or another run, nothing changes and ``acquired`` is
        False. ``holder`` of the result is the holder afterwards."""
        if holder.stack != self.stack:
            raise ValueError(f"a holder of stack {holder.stack!r} for the {self.stack} lock")
        with self.store.exclusive() as record:
            current = self._parse(record.read())
            if current is not None:
                return LockResult(False, current)
            record.write(asdict(holder))
            return LockResult(True, holder)
