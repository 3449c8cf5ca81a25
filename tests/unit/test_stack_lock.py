"""The stack lock: one holder, named; resumed by its own run; taken over only when safe.

The behaviour, racing processes included, runs on both state backends (``state`` is
parametrized: files, and a real PostgreSQL database of the test's own); the file format
(modes, a damaged ``lock.json``) is checked on files only (``file_state``).
"""

from __future__ import annotations

import json
import multiprocessing
import stat
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from opsflow.releases.lock import LockHolder, OwnerCheck, StackLock
from support.state_backends import BACKENDS, backend_state, postgres_server

__all__ = ["postgres_server"]  # the session's PostgreSQL, for the postgres variant

HOUR = timedelta(hours=1)


@pytest.fixture(params=BACKENDS)
def state(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """``$OPSFLOW_STATE_DIR``, on each backend in turn."""
    yield from backend_state(request, tmp_path / "state", monkeypatch)


@pytest.fixture
def file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$OPSFLOW_STATE_DIR`` of the file backend, for checks of its file format."""
    root = tmp_path / "state"
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    monkeypatch.delenv("OPSFLOW_STATE_BACKEND", raising=False)
    return root


def holder(run_id: str, dag_id: str = "demo__upgrade", ttl: timedelta = HOUR) -> LockHolder:
    return LockHolder.new("demo", dag_id, run_id, ttl)


def answering(answer: bool | None, asked: list[LockHolder] | None = None) -> OwnerCheck:
    """An owner check that always gives ``answer`` and notes whom it was asked about."""

    def check(current: LockHolder) -> bool | None:
        if asked is not None:
            asked.append(current)
        return answer

    return check


def never_asked(current: LockHolder) -> bool | None:
    raise AssertionError(f"the owner check must not be asked about {current}")


def test_a_free_lock_is_acquired(state: Path) -> None:
    lock = StackLock("demo")
    assert lock.holder() is None
    owner = holder("run-1")
    result = lock.acquire(owner, never_asked)
    assert (result.acquired, result.holder, result.note) == (True, owner, "")
    assert lock.holder() == owner
    assert StackLock("demo").holder() == owner  # another process's view


def test_the_lock_file_names_its_holder_privately(file_state: Path) -> None:
    state = file_state
    StackLock("demo").acquire(holder("run-1"), never_asked)
    assert StackLock("demo").where == str(state / "demo" / "lock.json")
    data = json.loads((state / "demo" / "lock.json").read_text(encoding="utf-8"))
    assert (data["dag_id"], data["run_id"], data["stack"]) == ("demo__upgrade", "run-1", "demo")
    assert stat.S_IMODE((state / "demo" / "lock.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "demo").stat().st_mode) == 0o700


def test_a_new_holder_expires_after_its_ttl() -> None:
    owner = holder("run-1", ttl=timedelta(minutes=30))
    acquired = datetime.fromisoformat(owner.acquired_at)
    assert datetime.fromisoformat(owner.expires_at) - acquired == timedelta(minutes=30)
    assert not owner.expired()
    assert owner.expired(acquired + timedelta(minutes=30))
    assert owner.host


def test_a_second_run_is_refused_and_told_who_holds_the_lock(state: Path) -> None:
    lock = StackLock("demo")
    first = holder("run-1")
    lock.acquire(first, never_asked)
    asked: list[LockHolder] = []
    result = lock.acquire(holder("run-2", dag_id="demo__rollback"), answering(False, asked))
    assert not result.acquired
    assert result.holder == first
    assert asked == [first]
    assert result.holder is not None
    description = result.holder.describe()
    assert "demo__upgrade" in description and "run-1" in description
    assert lock.holder() == first


def test_the_same_run_id_of_another_dag_is_another_run(state: Path) -> None:
    lock = StackLock("demo")
    first = holder("manual__2026-01-02", dag_id="demo__upgrade")
    lock.acquire(first, never_asked)
    result = lock.acquire(holder("manual__2026-01-02", dag_id="demo__restore"), answering(False))
    assert (result.acquired, result.holder) == (False, first)


def test_the_holding_run_acquires_again_and_keeps_its_start(state: Path) -> None:
    lock = StackLock("demo")
    earlier = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    first = replace(
        holder("run-1"),
        acquired_at=earlier.isoformat(timespec="seconds"),
        expires_at=(earlier + timedelta(days=3650)).isoformat(timespec="seconds"),
    )
    lock.acquire(first, never_asked)
    retry = holder("run-1", ttl=timedelta(hours=2))
    result = lock.acquire(retry, never_asked)
    assert result.acquired
    assert "resumed" in result.note
    assert result.holder is not None
    assert result.holder.acquired_at == first.acquired_at  # held since the first try
    assert result.holder.expires_at == retry.expires_at  # with the retry's expiry
    assert lock.holder() == result.holder


def test_the_lock_of_an_ended_run_is_taken_over(state: Path) -> None:
    lock = StackLock("demo")
    first = holder("run-1")
    lock.acquire(first, never_asked)
    asked: list[LockHolder] = []
    second = holder("run-2")
    result = lock.acquire(second, answering(True, asked))
    assert (result.acquired, result.holder) == (True, second)
    assert asked == [first]
    assert result.note == f"took over the lock of {first.describe()}: that run has ended"
    assert lock.holder() == second


def test_an_expired_lock_is_taken_over_when_the_owner_cannot_be_checked(state: Path) -> None:
    lock = StackLock("demo")
    stale = holder("run-1", ttl=timedelta(seconds=-1))
    assert stale.expired()
    lock.acquire(stale, never_asked)
    second = holder("run-2")
    result = lock.acquire(second, answering(None))
    assert (result.acquired, result.holder) == (True, second)
    assert result.note == f"took over the expired lock of {stale.describe()}"
    assert lock.holder() == second


def test_a_live_lock_is_kept_when_the_owner_cannot_be_checked(state: Path) -> None:
    lock = StackLock("demo")
    first = holder("run-1")
    lock.acquire(first, never_asked)
    result = lock.acquire(holder("run-2"), answering(None))
    assert (result.acquired, result.holder, result.note) == (False, first, "")
    assert lock.holder() == first


def test_only_the_holder_releases_the_lock(state: Path) -> None:
    lock = StackLock("demo")
    first = holder("run-1")
    lock.acquire(first, never_asked)
    assert lock.release("demo__upgrade", "run-2") == first
    assert lock.release("demo__rollback", "run-1") == first
    assert lock.holder() == first
    assert lock.release("demo__upgrade", "run-1") is None
    assert lock.holder() is None
    assert not (state / "demo" / "lock.json").exists()  # nor any file on another backend
    assert lock.release("demo__upgrade", "run-1") is None  # releasing twice is harmless
    second = holder("run-2")
    assert lock.acquire(second, never_asked).acquired


def test_stacks_have_their_own_locks(state: Path) -> None:
    StackLock("demo").acquire(holder("run-1"), never_asked)
    shop = LockHolder.new("shop", "shop__upgrade", "run-1", HOUR)
    assert StackLock("shop").acquire(shop, never_asked).acquired
    assert StackLock("shop").holder() == shop


def test_bad_stack_names_are_refused(state: Path) -> None:
    with pytest.raises(ValueError, match="invalid stack name"):
        StackLock("../etc")
    assert not state.exists()


@pytest.mark.parametrize(
    "content",
    ["{not json", "", '["a", "list"]', '{"dag_id": "demo__upgrade"}', '{"surprise": 1}'],
)
def test_a_damaged_lock_file_is_reported_not_ignored(file_state: Path, content: str) -> None:
    state = file_state
    path = state / "demo" / "lock.json"
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    lock = StackLock("demo")
    with pytest.raises(RuntimeError, match="unreadable stack lock") as raised:
        lock.holder()
    assert str(path) in str(raised.value)
    with pytest.raises(RuntimeError, match="remove it"):
        lock.acquire(holder("run-1"), never_asked)
    with pytest.raises(RuntimeError, match="unreadable stack lock"):
        lock.release("demo__upgrade", "run-1")
    assert path.read_text(encoding="utf-8") == content  # left for a person to look at


def _race(run_id: str, start: Barrier, results: Queue[tuple[str, bool, str | None]]) -> None:
    """One contender: wait for all the others, then try to take the lock."""
    start.wait(timeout=30)
    try:
        result = StackLock("demo").acquire(holder(run_id), answering(False))
    except Exception as exc:  # reported to the test, which would otherwise wait in vain
        results.put((run_id, False, f"raised {exc!r}"))
        raise
    results.put((run_id, result.acquired, result.holder.run_id if result.holder else None))


def test_only_one_of_several_racing_processes_acquires(state: Path) -> None:
    context = multiprocessing.get_context("fork")
    contenders = [f"run-{number}" for number in range(8)]
    start = context.Barrier(len(contenders))
    results: Queue[tuple[str, bool, str | None]] = context.Queue()
    processes = [context.Process(target=_race, args=(run, start, results)) for run in contenders]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    winners = [run for run, acquired, _ in outcomes if acquired]
    assert len(winners) == 1
    # Every loser was told who won, and the lock file names the winner.
    assert {named for _, _, named in outcomes} == {winners[0]}
    current = StackLock("demo").holder()
    assert current is not None and current.run_id == winners[0]
