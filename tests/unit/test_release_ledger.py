"""The release ledger: newest state wins, private, tolerant of damage, and config snapshots.

The behaviour runs on both state backends (``state`` is parametrized: files, and a real
PostgreSQL database of the test's own); the file format (modes, damaged and cut-short
lines, the legacy ``releases.jsonl`` read in place) is checked on files only
(``file_state``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opsflow.paths import state_dir
from opsflow.releases import ledger
from opsflow.releases.ledger import (
    Ledger,
    LedgerEntry,
    Release,
    current_and_previous,
    newest_distinct,
)
from support.state_backends import BACKENDS, backend_state, on_files, postgres_server

__all__ = ["postgres_server"]  # the session's PostgreSQL, for the postgres variant

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="seconds")


def entry(entry_id: str, version: str, minute: int, **changes: Any) -> LedgerEntry:
    """An entry started at ``T0 + minute``; a finished one ends a minute later."""
    values: dict[str, Any] = {
        "entry_id": entry_id,
        "stack": "demo",
        "action": "deploy",
        "version": version,
        "run_id": f"run-{entry_id}",
        "dag_id": "demo__deploy",
        "triggered_by": "tester",
        "started_at": at(minute),
    }
    values.update(changes)
    if values.get("outcome", "running") != "running":
        values.setdefault("ended_at", at(minute + 1))
    return LedgerEntry(**values)


def succeeded(entry_id: str, version: str, minute: int, **changes: Any) -> LedgerEntry:
    return entry(entry_id, version, minute, outcome="succeeded", **changes)


@pytest.fixture(params=BACKENDS)
def state(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """``$OPSFLOW_STATE_DIR``, on each backend in turn."""
    yield from backend_state(request, tmp_path / "state" / "nested", monkeypatch)


@pytest.fixture
def file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$OPSFLOW_STATE_DIR`` of the file backend, for checks of its file format."""
    root = tmp_path / "state" / "nested"
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(root))
    monkeypatch.delenv("OPSFLOW_STATE_BACKEND", raising=False)
    return root


def lines_of(state: Path, stack: str = "demo") -> list[str]:
    return (state / stack / "ledger.jsonl").read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- entries


def test_state_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPSFLOW_STATE_DIR", raising=False)
    assert state_dir() == Path("/var/lib/opsflow")
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path))
    assert state_dir() == tmp_path
    assert Ledger("demo").path == tmp_path / "demo" / "ledger.jsonl"


def test_an_empty_ledger_reads_as_nothing(state: Path) -> None:
    book = Ledger("demo")
    assert book.entries() == []
    assert book.releases() == []
    assert book.current() is None
    assert book.recent(2) == []
    assert book.get("anything") is None
    assert current_and_previous("demo") == []
    assert not state.exists()  # reading creates nothing


def test_the_newest_line_of_an_entry_wins(state: Path) -> None:
    book = Ledger("demo")
    started = entry("e1", "1.0.0", 0)
    book.write(started)
    assert book.get("e1") == started and not started.finished
    done = entry("e1", "1.0.0", 0, outcome="succeeded", backup_id="b-1", notes=["all fine"])
    book.write(done)
    book.write(done)  # writing the same state again changes nothing readers see
    assert book.entries() == [done]
    found = book.get("e1")
    assert found is not None and found.finished
    assert (found.outcome, found.ended_at, found.backup_id, found.notes) == (
        "succeeded",
        at(1),
        "b-1",
        ["all fine"],
    )
    if on_files():  # append-only: every state is kept in the file
        assert len(lines_of(state)) == 3
        assert json.loads(lines_of(state)[0])["outcome"] == "running"
    else:  # the database backend writes no file
        assert not state.exists()


def test_entries_come_in_the_order_they_were_started(state: Path) -> None:
    book = Ledger("demo")
    book.write(entry("late", "1.1.0", 10))
    book.write(entry("early", "1.0.0", 0))
    book.write(entry("middle", "1.0.5", 5))
    book.write(entry("early", "1.0.0", 0, outcome="failed", failed_task="pull"))
    assert [e.entry_id for e in book.entries()] == ["early", "middle", "late"]
    early = book.get("early")
    assert early is not None and early.outcome == "failed"
    assert early.describe() == (f"deploy 1.0.0 failed at pull (demo__deploy run-early, {at(0)})")


def test_an_entry_survives_the_trip_through_json(state: Path) -> None:
    original = entry(
        "e1",
        "1.1.0",
        0,
        action="upgrade",
        from_version="1.0.0",
        images={"api": {"image": "demo/api:1.1.0", "id": "sha256:" + "a" * 64}, "web": {}},
        config_digest="c" * 64,
        config_files={"compose.yaml": "d" * 64},
        snapshot={"version": "1.0.0", "images": {"api": "sha256:" + "b" * 64}},
        outcome="succeeded",
    )
    Ledger("demo").write(original)
    assert Ledger("demo").entries() == [original]
    assert original.image_ids() == {"api": "sha256:" + "a" * 64}
    assert original.describe().startswith("upgrade 1.0.0 -> 1.1.0 succeeded (")
    # Keys a newer version may add are ignored, not fatal.
    data = {**original.to_dict(), "added_later": True}
    assert LedgerEntry.from_dict(data) == original


def test_ledger_file_and_directories_are_private(file_state: Path) -> None:
    Ledger("demo").write(entry("e1", "1.0.0", 0))
    assert stat.S_IMODE((file_state / "demo" / "ledger.jsonl").stat().st_mode) == 0o600
    for directory in (file_state / "demo", file_state, file_state.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_loosened_ledger_file_is_made_private_again(file_state: Path) -> None:
    Ledger("demo").write(entry("e1", "1.0.0", 0))
    path = file_state / "demo" / "ledger.jsonl"
    path.chmod(0o644)
    Ledger("demo").write(entry("e2", "1.1.0", 1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_damaged_lines_are_skipped_with_a_warning(
    file_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = Ledger("demo")
    book.write(succeeded("e1", "1.0.0", 0))
    with book.path.open("ab") as handle:
        handle.write(b"{not json\n")
        handle.write(b'["a", "list"]\n')
        handle.write(b'{"entry_id": "x", "stack": "demo"}\n')  # required fields missing
        handle.write(b"\n")  # blank lines are not damage
        bad = {**succeeded("e9", "1.0.9", 9).to_dict(), "action": "delete"}
        handle.write(json.dumps(bad).encode() + b"\n")
        handle.write(b"\xff\xfe not utf-8\n")
    book.write(succeeded("e2", "1.1.0", 2))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ledger.__name__):
        found = book.entries()
    assert [e.entry_id for e in found] == ["e1", "e2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5
    assert all(str(book.path) in message for message in warnings)
    assert any("line 2 " in message for message in warnings)
    assert current_and_previous("demo") == ["1.1.0", "1.0.0"]


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_one(
    file_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    book = Ledger("demo")
    book.write(succeeded("e1", "1.0.0", 0))
    cut = json.dumps(succeeded("e2", "1.0.9", 2).to_dict())[:40]
    with book.path.open("a", encoding="utf-8") as handle:
        handle.write(cut)  # the crash: no newline
    book.write(succeeded("e3", "1.1.0", 4))
    assert lines_of(file_state)[1] == cut
    with caplog.at_level(logging.WARNING, logger=ledger.__name__):
        assert [e.entry_id for e in book.entries()] == ["e1", "e3"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_releases_are_the_successful_deploys_upgrades_and_rollbacks(state: Path) -> None:
    book = Ledger("demo")
    image_id = "sha256:" + "1" * 64
    images = {"api": {"image": "demo/api:1.0.0", "id": image_id}, "web": {"image": "demo/web:1"}}
    book.write(succeeded("deploy", "1.0.0", 0, images=images))
    book.write(entry("failed", "1.1.0", 10, action="upgrade", outcome="failed"))
    book.write(entry("undone", "1.2.0", 20, action="upgrade", outcome="rolled-back"))
    book.write(entry("broken", "1.2.1", 25, action="upgrade", outcome="rollback-failed"))
    book.write(succeeded("restore", "1.0.0", 30, action="restore"))
    book.write(succeeded("upgrade", "1.3.0", 40, action="upgrade", from_version="1.0.0"))
    book.write(entry("running", "1.4.0", 50, action="upgrade"))
    book.write(succeeded("rollback", "1.0.0", 60, action="rollback", from_version="1.3.0"))

    found = book.releases()
    assert [(r.version, r.run_id) for r in found] == [
        ("1.0.0", "run-deploy"),
        ("1.3.0", "run-upgrade"),
        ("1.0.0", "run-rollback"),
    ]
    first = found[0]
    assert first.stack == "demo"
    assert first.recorded_at == T0 + timedelta(minutes=1)  # when it ended
    assert first.images == {"api": image_id, "web": "demo/web:1"}  # the id when known
    assert first.entry is not None and first.entry.entry_id == "deploy"
    current = book.current()
    assert current is not None and current.run_id == "run-rollback"
    assert current_and_previous("demo") == ["1.0.0", "1.3.0"]


def test_releases_are_ordered_by_when_they_ended(state: Path) -> None:
    book = Ledger("demo")
    # Started first but ended last: the newest release.
    book.write(succeeded("slow", "2.0.0", 0, ended_at=at(30)))
    book.write(succeeded("quick", "1.9.0", 5))
    assert [r.version for r in book.releases()] == ["1.9.0", "2.0.0"]
    assert [e.entry_id for e in book.entries()] == ["slow", "quick"]


def test_a_redeploy_of_the_same_version_does_not_hide_the_previous(state: Path) -> None:
    book = Ledger("demo")
    book.write(succeeded("a", "1.0.0", 0))
    assert current_and_previous("demo") == ["1.0.0"]
    book.write(succeeded("b", "1.1.0", 10))
    book.write(succeeded("c", "1.1.0", 20))  # the same version again
    assert current_and_previous("demo") == ["1.1.0", "1.0.0"]
    recent = book.recent(5)
    assert [(r.version, r.run_id) for r in recent] == [("1.1.0", "run-c"), ("1.0.0", "run-a")]
    book.write(succeeded("d", "1.0.0", 30, action="rollback"))
    assert current_and_previous("demo") == ["1.0.0", "1.1.0"]
    assert [r.version for r in book.recent(1)] == ["1.0.0"]


def test_newest_distinct_keeps_the_newest_release_of_each_version() -> None:
    def release(version: str, day: int) -> Release:
        return Release("demo", version, f"run-{day}", T0 + timedelta(days=day))

    recorded = [release("1", 0), release("2", 1), release("1", 2), release("3", 3)]
    assert [(r.version, r.run_id) for r in newest_distinct(recorded, 2)] == [
        ("3", "run-3"),
        ("1", "run-2"),
    ]
    assert [r.version for r in newest_distinct(recorded, 10)] == ["3", "1", "2"]
    assert newest_distinct([], 2) == []


def test_backups_taken_on_a_version_newest_first(state: Path) -> None:
    book = Ledger("demo")
    book.write(succeeded("d", "1.0.0", 0))
    book.write(succeeded("u1", "1.1.0", 10, action="upgrade", from_version="1.0.0", backup_id="b1"))
    book.write(entry("u2", "1.2.0", 20, action="upgrade", from_version="1.1.0", backup_id="b2"))
    book.write(entry("u3", "1.2.0", 30, action="upgrade", from_version="1.0.0", backup_id="b3"))
    book.write(entry("u4", "1.3.0", 40, action="upgrade", from_version="1.0.0"))  # no backup
    assert book.backups_taken_on("1.0.0") == ["b3", "b1"]
    assert book.backups_taken_on("1.1.0") == ["b2"]
    assert book.backups_taken_on("9.9.9") == []


def test_lines_of_the_old_release_history_count_as_releases(file_state: Path) -> None:
    legacy = file_state / "demo" / "releases.jsonl"
    legacy.parent.mkdir(parents=True)
    old = [
        {"stack": "demo", "version": "0.9.0", "run_id": "old-1", "recorded_at": at(-60),
         "images": {"api": "demo/api:0.9.0"}},
        {"stack": "demo", "version": "0.9.5", "run_id": "old-2",
         "recorded_at": "2026-01-02T02:30:00"},
    ]  # fmt: skip
    legacy.write_text(
        "\n".join(json.dumps(line) for line in old)
        + '\n{"version": "bad version", "run_id": "x", "recorded_at": "2026-01-01T00:00:00"}'
        + '\n{"version": "0.9.7", "run_id": "x"}\n["list"]\n{cut short',
        encoding="utf-8",
    )
    book = Ledger("demo")
    assert [r.version for r in book.releases()] == ["0.9.0", "0.9.5"]
    assert current_and_previous("demo") == ["0.9.5", "0.9.0"]

    book.write(succeeded("new", "1.0.0", 0))
    found = book.releases()
    assert [(r.version, r.run_id) for r in found] == [
        ("0.9.0", "old-1"),
        ("0.9.5", "old-2"),
        ("1.0.0", "run-new"),
    ]
    assert found[0].images == {"api": "demo/api:0.9.0"}
    assert found[0].entry is None
    assert found[1].recorded_at == datetime(2026, 1, 2, 2, 30, tzinfo=UTC)  # naive is UTC
    assert current_and_previous("demo") == ["1.0.0", "0.9.5"]
    assert book.entries() == [succeeded("new", "1.0.0", 0)]  # not ledger entries


def test_stacks_are_kept_apart(state: Path) -> None:
    Ledger("demo").write(succeeded("a", "1.0.0", 0))
    Ledger("shop").write(LedgerEntry(**{**succeeded("a", "2.0.0", 0).to_dict(), "stack": "shop"}))
    assert current_and_previous("demo") == ["1.0.0"]
    assert current_and_previous("shop") == ["2.0.0"]
    with pytest.raises(ValueError, match="shop"):
        Ledger("demo").write(
            LedgerEntry(**{**succeeded("b", "2.0.0", 1).to_dict(), "stack": "shop"})
        )
    assert [e.entry_id for e in Ledger("demo").entries()] == ["a"]


@pytest.mark.parametrize("stack", ["../etc", "Demo", "a/b", "", "x", "demo-"])
def test_bad_stack_names_are_refused(state: Path, stack: str) -> None:
    with pytest.raises(ValueError, match="invalid stack name"):
        Ledger(stack)
    with pytest.raises(ValueError, match="invalid stack name"):
        current_and_previous(stack)
    assert not state.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": ""}, "invalid version"),
        ({"version": "1.0 "}, "invalid version"),
        ({"version": "$(id)"}, "invalid version"),
        ({"version": "../1"}, "invalid version"),
        ({"from_version": "1.0/2"}, "invalid version"),
        ({"action": "delete"}, "action must be one of"),
        ({"action": "Deploy"}, "action must be one of"),
        ({"outcome": "done"}, "outcome must be one of"),
        ({"run_id": ""}, "run_id must be a non-empty string"),
        ({"entry_id": ""}, "entry_id must be a non-empty string"),
        ({"dag_id": None}, "dag_id must be a non-empty string"),
    ],
)
def test_invalid_entries_are_refused(
    file_state: Path, changes: dict[str, Any], message: str
) -> None:
    values = {**entry("e1", "1.0.0", 0).to_dict(), **changes}
    with pytest.raises(ValueError, match=message):
        LedgerEntry(**values)
    with pytest.raises(ValueError, match=message):
        LedgerEntry.from_dict(values)
    assert not file_state.exists()


def test_from_dict_wants_an_object() -> None:
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        LedgerEntry.from_dict(["deploy"])


# --------------------------------------------------------------------------- config snapshots


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "project"
    directory.mkdir()
    compose = directory / "compose.yaml"
    compose.write_text("services:\n  api:\n    image: demo/api:${VERSION}\n", encoding="utf-8")
    env = directory / ".env"
    env.write_text("VERSION=1.0.0\n", encoding="utf-8")
    return {"compose.yaml": compose, ".env": env, "extra.conf": directory / "extra.conf"}


def listed(files: dict[str, Path]) -> list[tuple[str, Path]]:
    return list(files.items())


def test_config_snapshots_are_content_addressed(state: Path, project: dict[str, Path]) -> None:
    book = Ledger("demo")
    first = book.save_config(listed(project))
    assert first.files["extra.conf"] == "missing"
    assert len(first.files["compose.yaml"]) == 64 and len(first.digest) == 64

    again = book.save_config(reversed(listed(project)))  # the order does not matter
    assert again == first

    project[".env"].write_text("VERSION=1.1.0\n", encoding="utf-8")
    changed = book.save_config(listed(project))
    assert changed.digest != first.digest
    assert changed.files["compose.yaml"] == first.files["compose.yaml"]
    assert changed.files[".env"] != first.files[".env"]
    assert book.config_files(changed.digest)[".env"] == b"VERSION=1.1.0\n"
    assert book.config_files(first.digest)[".env"] == b"VERSION=1.0.0\n"  # both kept


def test_a_config_snapshot_is_one_file_written_once(
    file_state: Path, project: dict[str, Path]
) -> None:
    book = Ledger("demo")
    first = book.save_config(listed(project))
    stored = sorted(book.configs.iterdir())
    assert stored == [book.configs / f"{first.digest}.tar"]
    before = stored[0].stat()
    book.save_config(reversed(listed(project)))
    assert sorted(book.configs.iterdir()) == stored
    assert stored[0].stat().st_mtime_ns == before.st_mtime_ns  # not written again
    project[".env"].write_text("VERSION=1.1.0\n", encoding="utf-8")
    book.save_config(listed(project))
    assert len(list(book.configs.iterdir())) == 2


def test_a_missing_file_is_told_apart_from_an_unlisted_one(
    state: Path, project: dict[str, Path]
) -> None:
    book = Ledger("demo")
    with_missing = book.save_config(listed(project))
    without = book.save_config([(n, p) for n, p in project.items() if n != "extra.conf"])
    assert with_missing.digest != without.digest
    assert "extra.conf" not in without.files
    # The missing file is not in the archive: only the files that existed are.
    assert set(book.config_files(with_missing.digest)) == {"compose.yaml", ".env"}


def test_config_snapshots_are_read_back(state: Path, project: dict[str, Path]) -> None:
    book = Ledger("demo")
    snapshot = book.save_config(listed(project))
    assert book.config_files(snapshot.digest) == {
        "compose.yaml": project["compose.yaml"].read_bytes(),
        ".env": project[".env"].read_bytes(),
    }
    assert Ledger("demo").config_files(snapshot.digest) == book.config_files(snapshot.digest)


def test_config_snapshot_files_are_private(file_state: Path, project: dict[str, Path]) -> None:
    book = Ledger("demo")
    snapshot = book.save_config(listed(project))
    assert stat.S_IMODE(book.configs.stat().st_mode) == 0o700
    assert stat.S_IMODE((book.configs / f"{snapshot.digest}.tar").stat().st_mode) == 0o600
    assert [p.name for p in book.configs.iterdir()] == [f"{snapshot.digest}.tar"]  # no .part


def test_restore_config_puts_the_content_back(state: Path, project: dict[str, Path]) -> None:
    book = Ledger("demo")
    compose, env, extra = project["compose.yaml"], project[".env"], project["extra.conf"]
    compose.chmod(0o640)
    snapshot = book.save_config(listed(project))
    original = compose.read_bytes()

    compose.write_text("services: {}\n", encoding="utf-8")
    compose.chmod(0o666)  # wider than a umask lets a new file be: the mode is set, not asked
    extra.write_text("created after the snapshot\n", encoding="utf-8")
    old_time = 1_600_000_000_000_000_000
    os.utime(env, ns=(old_time, old_time))
    with compose.open("rb") as reader:  # a reader that opened the file before the restore
        changed = book.restore_config(snapshot.digest, listed(project))
        assert reader.read() == b"services: {}\n"  # replaced by a rename, not rewritten
    assert changed == ["compose.yaml"]
    assert compose.read_bytes() == original
    assert stat.S_IMODE(compose.stat().st_mode) == 0o666  # the file's mode is kept
    assert env.stat().st_mtime_ns == old_time  # unchanged: not touched
    # Recorded as missing: left alone, not deleted.
    assert extra.read_text(encoding="utf-8") == "created after the snapshot\n"
    assert sorted(p.name for p in compose.parent.iterdir()) == [
        ".env",
        "compose.yaml",
        "extra.conf",
    ]

    assert book.restore_config(snapshot.digest, listed(project)) == []


def test_restore_config_recreates_a_deleted_file_privately(
    state: Path, project: dict[str, Path]
) -> None:
    book = Ledger("demo")
    snapshot = book.save_config(listed(project))
    content = project[".env"].read_bytes()
    project[".env"].unlink()
    assert book.restore_config(snapshot.digest, listed(project)) == [".env"]
    assert project[".env"].read_bytes() == content
    assert stat.S_IMODE(project[".env"].stat().st_mode) == 0o600


@pytest.mark.parametrize("digest", ["", "abc", "A" * 64, "0" * 63, "../" + "0" * 61, "0" * 65])
def test_a_bad_config_digest_is_refused(state: Path, project: dict[str, Path], digest: str) -> None:
    book = Ledger("demo")
    with pytest.raises(ValueError, match="invalid config digest"):
        book.config_files(digest)
    project[".env"].write_text("changed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid config digest"):
        book.restore_config(digest, listed(project))
    assert project[".env"].read_text(encoding="utf-8") == "changed\n"


def test_an_absent_config_snapshot_is_not_found(state: Path, project: dict[str, Path]) -> None:
    book = Ledger("demo")
    book.save_config(listed(project))
    absent = "0" * 64
    with pytest.raises(FileNotFoundError, match="config snapshot 000000000000 of demo is missing"):
        book.config_files(absent)
    with pytest.raises(FileNotFoundError):
        book.restore_config(absent, listed(project))
