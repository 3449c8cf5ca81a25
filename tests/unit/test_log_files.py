"""The log file cleanup engine on real files: safety, decisions, dry run, size cap, scale."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsflow.logs.files import (
    TMP_SUFFIX,
    CleanupRule,
    RootReport,
    clean_root,
    open_file_ids,
    parse_size,
)
from opsflow.stack.safety import ALLOWED_ROOTS_ENV

DAY = 86400.0
NOBODY = 65534


def make(path: Path, data: bytes = b"x\n", *, age_days: float, now: float) -> Path:
    """A file with the given content, modified ``age_days`` before ``now``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = now - age_days * DAY
    os.utime(path, (stamp, stamp))
    return path


def tree_hash(root: Path) -> str:
    """Hash of every name, type, mode, size, mtime and content under ``root`` (no following)."""
    digest = hashlib.sha256()

    def visit(directory: Path) -> None:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            rel = Path(entry.path).relative_to(root)
            digest.update(f"{rel}|{st.st_mode}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if entry.is_symlink():
                digest.update(str(Path(entry.path).readlink()).encode())
            elif entry.is_dir(follow_symlinks=False):
                visit(Path(entry.path))
            else:
                digest.update(Path(entry.path).read_bytes())

    st = root.stat()
    digest.update(f".|{st.st_mode}|{st.st_mtime_ns}\n".encode())
    visit(root)
    return digest.hexdigest()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def counters(report: RootReport) -> dict[str, Any]:
    data = report.to_dict()
    data.pop("dry_run")
    return data


@pytest.fixture
def now() -> float:
    return time.time()


# ------------------------------------------------------------------ rules and parsing


def test_parse_size_uses_powers_of_1024() -> None:
    assert parse_size("100") == 100
    assert parse_size("512K") == 512 * 1024
    assert parse_size("10m") == 10 * 1024**2
    assert parse_size("200MB") == 200 * 1024**2
    assert parse_size("200 MiB") == 200 * 1024**2
    assert parse_size("1.5GiB") == 3 * 1024**3 // 2
    assert parse_size("2T") == 2 * 1024**4
    assert parse_size("64B") == 64
    for bad in ("", "MB", "ten", "1.5.2G", "-1K", "10X", "5iB"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)


@pytest.mark.parametrize("pattern", ["../*.log", "app/../../etc/*.log", "..", "/etc/*.log"])
def test_patterns_leaving_the_root_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="refused") as caught:
        CleanupRule(patterns=("*.log", pattern))
    assert repr(pattern) in str(caught.value)


def test_rule_validation_messages() -> None:
    with pytest.raises(ValueError, match="delete_uncompressed needs delete_after_days"):
        CleanupRule(delete_uncompressed=True)
    with pytest.raises(ValueError, match="compress_after_days must be >= 0"):
        CleanupRule(compress_after_days=-1)
    with pytest.raises(ValueError, match="at least one pattern"):
        CleanupRule(patterns=())


def test_zstd_needs_the_zstandard_package() -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="zstandard"):
            CleanupRule(compression="zstd")
    else:
        assert CleanupRule(compression="zstd").compression == "zstd"


# ------------------------------------------------------------------ safety


def test_symlink_to_a_file_outside_is_never_touched(tmp_path: Path, now: float) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    secret = make(outside / "secret.log", b"keep me\n" * 100, age_days=90, now=now)
    before = secret.stat()
    root.mkdir()
    link = root / "escape.log"
    link.symlink_to(secret)
    os.utime(link, (now - 90 * DAY,) * 2, follow_symlinks=False)
    inside = make(root / "inside.log", age_days=90, now=now)
    (root / "inside-link.log").symlink_to(inside)
    rule = CleanupRule(compress_after_days=1, delete_after_days=30, delete_uncompressed=True)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.status == "ok"
    assert report.deleted == 1  # inside.log only
    assert link.is_symlink() and link.readlink() == secret
    assert (root / "inside-link.log").is_symlink()
    assert secret.read_bytes() == b"keep me\n" * 100
    assert secret.stat().st_mtime_ns == before.st_mtime_ns
    assert files_under(outside) == {"secret.log"}


def test_symlinked_directory_is_not_descended(tmp_path: Path, now: float) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    make(outside / "2026-01-01" / "old.log", age_days=90, now=now)
    make(outside / "old.log", age_days=90, now=now)
    root.mkdir()
    (root / "logs").symlink_to(outside, target_is_directory=True)
    (root / "2026-01-02").symlink_to(outside / "2026-01-01", target_is_directory=True)
    rule = CleanupRule(patterns=("*.log", "logs/*"), delete_after_days=1, delete_uncompressed=True)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.status == "ok"
    assert report.files_matched == 0 and report.deleted == 0 and report.dirs_removed == 0
    assert files_under(outside) == {"2026-01-01/old.log", "old.log"}
    assert (root / "logs").is_symlink() and (root / "2026-01-02").is_symlink()


def test_directory_swapped_for_a_symlink_mid_run_is_not_followed(
    tmp_path: Path, now: float
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    make(outside / "victim.log", b"outside\n", age_days=90, now=now)
    make(root / "0-first.log", age_days=90, now=now)
    make(root / "sub" / "old.log", age_days=90, now=now)
    swapped: list[str] = []

    def swap_on_first_action(line: str) -> None:
        # Runs inside the walk, after the root was listed and before "sub" is entered.
        if not swapped:
            (root / "sub").rename(tmp_path / "moved")
            (root / "sub").symlink_to(outside, target_is_directory=True)
            swapped.append(line)

    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)
    report = clean_root(
        root, rule, dry_run=False, now=now, open_files=frozenset(), log=swap_on_first_action
    )

    assert swapped, "the swap never ran"
    assert report.deleted == 1  # 0-first.log; sub/ became a symlink and was left alone
    assert (outside / "victim.log").read_bytes() == b"outside\n"
    assert (tmp_path / "moved" / "old.log").exists()


def test_root_that_is_a_symlink_is_refused(tmp_path: Path, now: float) -> None:
    real = tmp_path / "real"
    make(real / "old.log", age_days=90, now=now)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)

    report = clean_root(tmp_path / "link", rule, dry_run=False, now=now, open_files=frozenset())

    assert report.status == "error"
    assert report.error is not None and "symlink" in report.error
    assert (real / "old.log").exists()


@pytest.mark.parametrize("root", ["/", "/etc", "/proc", "/usr/share/doc", "/var"])
def test_a_system_directory_is_never_cleaned_not_even_dry(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    rule = CleanupRule(patterns=("*",), compress_after_days=0, delete_after_days=0)
    lines: list[str] = []

    report = clean_root(Path(root), rule, dry_run=True, open_files=frozenset(), log=lines.append)

    assert report.status == "error"
    assert report.error is not None and report.error.startswith(f"refused: {root} ")
    assert "system director" in report.error
    assert report.files_seen == 0 and report.actions == []
    assert lines == [f"ERROR: log root {root}: {report.error}"]


def test_root_whose_parent_became_a_symlink_into_a_system_dir_is_refused(
    tmp_path: Path, system_victim: Path, now: float
) -> None:
    # Loaded as /tmp/.../stack/logs; then "stack" was replaced by a link into /dev/shm.
    victim = make(system_victim / "logs" / "old.log", age_days=90, now=now)
    (tmp_path / "stack").symlink_to(system_victim, target_is_directory=True)
    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)

    report = clean_root(
        tmp_path / "stack" / "logs", rule, dry_run=False, now=now, open_files=frozenset()
    )

    assert report.status == "error"
    assert report.error is not None
    assert f"resolves to {system_victim / 'logs'}, which lies in the system directory" in (
        report.error
    )
    assert victim.exists() and report.deleted == 0


def test_an_allowed_root_beneath_a_system_dir_is_cleaned(
    system_victim: Path, monkeypatch: pytest.MonkeyPatch, now: float
) -> None:
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(system_victim))
    make(system_victim / "old.log", age_days=90, now=now)
    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)

    report = clean_root(system_victim, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.status == "ok" and report.deleted == 1


def test_missing_root_is_a_warning(tmp_path: Path) -> None:
    lines: list[str] = []
    report = clean_root(tmp_path / "nope", CleanupRule(), dry_run=False, log=lines.append)
    assert report.status == "missing"
    assert report.error is not None and "does not exist" in report.error
    assert any(line.startswith("WARNING") for line in lines)


# ------------------------------------------------------------------ unreadable roots


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory in /tmp that an unprivileged user can traverse (pytest's tmp is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="opsflow-logs-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def run_unprivileged(job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``job`` as a user that file modes apply to (root ignores them).

    As root, a forked child drops to ``nobody`` (the interpreter is already loaded, so the
    venv's location does not need to be readable by that user); otherwise ``job`` runs here.
    """
    if os.geteuid() != 0:
        return job()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = json.dumps(job())
            status = 0
        except BaseException as exc:
            payload = json.dumps({"exception": repr(exc)})
        finally:
            with os.fdopen(write_end, "w") as out:
                out.write(payload)
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        data = answer.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    assert "exception" not in result, result
    return result


def owned_by_runner(path: Path) -> None:
    """Hand ``path`` to the user ``run_unprivileged`` runs as."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def test_unreadable_root_is_an_error(shared_dir: Path, now: float) -> None:
    root = shared_dir / "locked"
    make(root / "old.log", age_days=90, now=now)
    root.chmod(0o000 if os.geteuid() != 0 else 0o700)  # as root: owned by root, 0700
    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)

    result = run_unprivileged(
        lambda: clean_root(root, rule, dry_run=False, now=now, open_files=frozenset()).to_dict()
    )

    assert result["status"] == "error"
    assert "Permission denied" in result["error"]
    root.chmod(0o755)
    assert (root / "old.log").exists()


def test_unreadable_subdirectory_is_reported_and_the_run_goes_on(
    shared_dir: Path, now: float
) -> None:
    root = shared_dir / "root"
    make(root / "a" / "old.log", age_days=90, now=now)
    make(root / "locked" / "old.log", age_days=90, now=now)
    make(root / "z" / "old.log", age_days=90, now=now)
    for path in [root, root / "a", root / "a" / "old.log", root / "z", root / "z" / "old.log"]:
        owned_by_runner(path)
    (root / "locked").chmod(0o000 if os.geteuid() != 0 else 0o700)
    rule = CleanupRule(delete_after_days=1, delete_uncompressed=True)

    result = run_unprivileged(
        lambda: clean_root(root, rule, dry_run=False, now=now, open_files=frozenset()).to_dict()
    )

    assert result["status"] == "error"
    assert result["deleted"] == 2  # a/ and z/ were cleaned around the unreadable one
    assert "locked" in result["error"] and "Permission denied" in result["error"]
    assert any(line.startswith("error cannot open locked/") for line in result["actions"])
    (root / "locked").chmod(0o755)
    assert files_under(root) == {"locked/old.log"}


# ------------------------------------------------------------------ files in use


def test_file_held_open_is_skipped(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    held = make(root / "held.log", b"in use\n", age_days=90, now=now)
    make(root / "closed.log", age_days=90, now=now)
    rule = CleanupRule(compress_after_days=1, delete_after_days=30, delete_uncompressed=True)
    with held.open("ab") as handle:
        report = clean_root(root, rule, dry_run=False, now=now, open_files=open_file_ids())
        # The default (open_files=None) scans /proc itself.
        again = clean_root(root, rule, dry_run=False, now=now)
        handle.write(b"still writing\n")
    assert report.skipped_open == 1 and report.deleted == 1
    assert again.skipped_open == 1 and again.deleted == 0
    assert held.read_bytes() == b"in use\nstill writing\n"
    assert files_under(root) == {"held.log"}


def test_recent_file_is_never_touched(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    make(root / "fresh.log", age_days=5 / 1440, now=now)  # 5 minutes old
    make(root / "old.log", age_days=90, now=now)
    rule = CleanupRule(delete_after_days=0, delete_uncompressed=True, min_age_minutes=10)
    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert report.skipped_recent == 1 and report.deleted == 1
    assert files_under(root) == {"fresh.log"}


def test_file_written_during_compression_is_not_lost(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    first = os.urandom(20 * 1024 * 1024)  # incompressible: gzip needs a while
    big = make(root / "big.log", first, age_days=3, now=now)
    tmp = root / f".big.log{TMP_SUFFIX}"
    appended = b"line written while compressing\n"
    wrote = threading.Event()

    def writer() -> None:
        deadline = time.monotonic() + 30
        while not tmp.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        with big.open("ab") as handle:
            for _ in range(5):
                handle.write(appended)
                handle.flush()
                time.sleep(0.002)
        wrote.set()

    thread = threading.Thread(target=writer)
    thread.start()
    # open_files is empty on purpose: the writer must be caught by the change check alone.
    report = clean_root(
        root, CleanupRule(compress_after_days=1), dry_run=False, now=now, open_files=frozenset()
    )
    thread.join()

    assert wrote.is_set()
    assert report.skipped_changed == 1 and report.compressed == 0
    assert big.read_bytes() == first + appended * 5
    assert files_under(root) == {"big.log"}  # no temp file, no half compressed copy


# ------------------------------------------------------------------ decisions


def test_compressed_names_sort_by_date_and_round_trip(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    rule = CleanupRule(compress_after_days=1)
    contents = {}
    for age in (9, 5, 3):  # the same file name rotated three times
        data = f"day -{age}\n".encode() * 1000
        original = make(root / "app.log", data, age_days=age, now=now)
        original.chmod(0o640)
        mtime_ns = original.stat().st_mtime_ns
        report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
        assert report.compressed == 1 and report.status == "ok"
        contents[mtime_ns] = data

    names = sorted(files_under(root))
    assert len(names) == 3
    assert all(n.startswith("app.log.") and n.endswith(".gz") for n in names)
    by_mtime = sorted(names, key=lambda n: (root / n).stat().st_mtime_ns)
    assert names == by_mtime
    for name in names:
        packed = root / name
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(packed.stat().st_mtime_ns / 1e9))
        assert name == f"app.log.{stamp}.gz"
        assert gzip.decompress(packed.read_bytes()) == contents[packed.stat().st_mtime_ns]
        assert stat.S_IMODE(packed.stat().st_mode) == 0o640
    # Compressed files are not compressed again.
    again = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert again.compressed == 0 and again.files_matched == 3


def test_delete_after_days(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    make(root / "a.log.20260101T000000.gz", age_days=40, now=now)
    make(root / "b.log.gz", age_days=31, now=now)
    make(root / "c.log.20260201T000000.gz", age_days=29, now=now)
    make(root / "plain-old.log", age_days=40, now=now)
    make(root / "other.txt.gz", age_days=40, now=now)  # does not match *.log
    rule = CleanupRule(delete_after_days=30)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert report.deleted == 2
    assert files_under(root) == {"c.log.20260201T000000.gz", "plain-old.log", "other.txt.gz"}

    rule = CleanupRule(delete_after_days=30, delete_uncompressed=True)
    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert report.deleted == 1
    assert files_under(root) == {"c.log.20260201T000000.gz", "other.txt.gz"}


def test_path_patterns_match_relative_paths(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    make(root / "app" / "x.out", age_days=90, now=now)
    make(root / "web" / "x.out", age_days=90, now=now)
    rule = CleanupRule(patterns=("app/*.out",), delete_after_days=1, delete_uncompressed=True)
    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert report.deleted == 1
    assert files_under(root) == {"web/x.out"}


def test_size_cap_deletes_oldest_first_and_stops_under_the_cap(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    for age in range(1, 11):  # 10 files of 1000 bytes, 1..10 days old, in two folders
        make(root / f"d{age % 2}" / f"f{age:02d}.log", b"x" * 1000, age_days=age, now=now)
    make(root / "recent.log", b"r" * 3000, age_days=1 / 1440, now=now)  # never deleted
    rule = CleanupRule(max_total_bytes=7500)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    # 13000 bytes; the 6 oldest go (7000 left <= 7500), the 4 newest and the recent one stay.
    assert report.deleted == 6
    assert report.bytes_before == 13000 and report.bytes_after == 7000
    assert files_under(root) == {
        "recent.log",
        "d1/f01.log",
        "d0/f02.log",
        "d1/f03.log",
        "d0/f04.log",
    }
    assert report.largest[0] == ("recent.log", 3000)
    assert len(report.largest) == 5


def test_size_cap_never_deletes_open_or_recent_files(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    old = make(root / "old.log", b"o" * 5000, age_days=10, now=now)
    make(root / "fresh.log", b"f" * 5000, age_days=0, now=now)
    with old.open("rb"):
        report = clean_root(root, CleanupRule(max_total_bytes=1000), dry_run=False, now=now)
    assert report.deleted == 0 and report.bytes_after == 10000
    assert files_under(root) == {"old.log", "fresh.log"}


def test_empty_dated_directories_are_removed_bottom_up(tmp_path: Path, now: float) -> None:
    root = tmp_path / "2026-11-20"  # the root is never removed, dated or not
    for rel in ("2026-11-01/a.log", "app_2026_11_02/a.log", "20261103/a.log", "2026/11/04/a.log"):
        make(root / rel, age_days=40, now=now)
    make(root / "2026-11-05" / "keep.txt", age_days=40, now=now)  # not matched: stays
    (root / "archive").mkdir()  # empty, not dated: stays
    (root / "2026-10-31").mkdir()  # empty, dated: goes
    (root / "2025" / "12").mkdir(parents=True)  # empty Y/M: goes
    rule = CleanupRule(delete_after_days=30, delete_uncompressed=True)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.deleted == 4
    assert sorted(p.name for p in root.iterdir()) == ["2026-11-05", "archive"]
    assert report.dirs_removed == 9  # 4 dated + 2026/11/04 chain (3) + 2025/12 chain (2)
    assert root.is_dir()
    assert clean_root(root, rule, dry_run=False, now=now, open_files=frozenset()).dirs_removed == 0


def test_empty_directories_inside_a_dated_one_go_with_it(tmp_path: Path, now: float) -> None:
    # Airflow's layout: dag_id=x/run_id=manual__2026-10-01T00:00:00+00:00/task_id=t/attempt=1.log
    root = tmp_path / "logs"
    old_run = root / "dag_id=x" / "run_id=manual__2026-10-01T00:00:00+00:00"
    make(old_run / "task_id=t" / "attempt=1.log", age_days=40, now=now)
    make(root / "dag_processor" / "2026-10-01" / "dags-folder" / "a.py.log", age_days=40, now=now)
    (root / "dag_id=x" / "cache").mkdir()  # empty, not dated, not inside a dated dir: stays
    rule = CleanupRule(delete_after_days=30, delete_uncompressed=True)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.deleted == 2
    assert not old_run.exists()
    assert sorted(p.name for p in (root / "dag_id=x").iterdir()) == ["cache"]
    assert list((root / "dag_processor").iterdir()) == []
    assert report.dirs_removed == 4


def test_leftover_temp_file_is_removed(tmp_path: Path, now: float) -> None:
    root = tmp_path / "root"
    make(root / f".a.log{TMP_SUFFIX}", b"half", age_days=1, now=now)  # crashed run
    make(root / f".b.log{TMP_SUFFIX}", b"live", age_days=0, now=now)  # a run in progress
    make(root / "a.log", b"a\n" * 100, age_days=2, now=now)
    rule = CleanupRule(compress_after_days=1)

    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())

    assert report.compressed == 1
    names = files_under(root)
    assert f".a.log{TMP_SUFFIX}" not in names and f".b.log{TMP_SUFFIX}" in names
    assert any(a == f"remove leftover .a.log{TMP_SUFFIX}" for a in report.actions)


def test_dry_run_changes_nothing_and_predicts_the_real_run(tmp_path: Path, now: float) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    make(outside / "secret.log", age_days=90, now=now)
    for day in range(1, 13):
        for app in ("api", "web"):
            make(
                root / app / f"2026-10-{day:02d}" / f"{app}.log",
                f"{app} {day}\n".encode() * (200 * day),
                age_days=day * 3,
                now=now,
            )
    make(root / "api" / "b.log.20260101T000000.gz", b"old", age_days=60, now=now)
    make(root / f".x.log{TMP_SUFFIX}", b"left", age_days=2, now=now)
    make(root / "notes.txt", age_days=90, now=now)
    (root / "link.log").symlink_to(outside / "secret.log")
    rule = CleanupRule(
        compress_after_days=7, delete_after_days=25, max_total_bytes=parse_size("4K")
    )
    before = tree_hash(root)
    outside_before = tree_hash(outside)

    dry = clean_root(root, rule, dry_run=True, now=now, open_files=frozenset())

    assert tree_hash(root) == before
    assert tree_hash(outside) == outside_before
    assert dry.compressed > 0 and dry.deleted > 0 and dry.dirs_removed > 0
    real = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    assert counters(real) == counters(dry)
    assert tree_hash(outside) == outside_before
    assert real.bytes_after <= parse_size("4K")


# ------------------------------------------------------------------ scale


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for big trees: in memory when /dev/shm exists, removed afterwards.

    /dev is a system directory, so the tree is allowed explicitly, as an operator would.
    """
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="opsflow-logs-", dir=shm if shm.is_dir() else None))
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(base))
    try:
        yield base
    finally:
        shutil.rmtree(base)


def test_hundred_thousand_files_in_nested_directories(scratch: Path, now: float) -> None:
    root = scratch / "root"
    started = time.perf_counter()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for top in range(10):
        for sub in range(100):
            directory = root / f"t{top}" / f"s{sub:02d}"
            directory.mkdir(parents=True)
            for i in range(100):
                path = f"{directory}/f{i:02d}.log"
                fd = os.open(path, flags, 0o644)
                os.write(fd, b"line\n")
                os.close(fd)
                # ages 0.5 .. 45.5 days by i % 10; one file in 100 is 1 minute old
                stamp = now - (60.0 if i == 99 else ((i % 10) * 5 + 0.5) * DAY)
                os.utime(path, (stamp, stamp))
    built = time.perf_counter() - started
    rule = CleanupRule(delete_after_days=22, delete_uncompressed=True)

    started = time.perf_counter()
    report = clean_root(root, rule, dry_run=False, now=now, open_files=frozenset())
    took = time.perf_counter() - started
    print(f"100,000 files: built in {built:.1f} s, cleaned in {took:.2f} s")

    # i % 10 in 5..9 is older than 22 days: 50 files per dir, minus i == 99 (recent).
    assert report.status == "ok"
    assert report.files_seen == 100_000 and report.files_matched == 100_000
    assert report.deleted == 49_000
    assert report.skipped_recent == 1_000
    assert report.bytes_before == 500_000 and report.bytes_after == 255_000
    remaining = sum(1 for _ in root.glob("t*/s*/*"))
    assert remaining == 51_000


# ------------------------------------------------------------------ from the stack file


@pytest.mark.parametrize("delete_uncompressed", [False, True])
def test_a_stack_root_reaches_files_its_application_rotates_itself(
    tmp_path: Path, now: float, delete_uncompressed: bool
) -> None:
    """Backend2's RotatingFileHandler renames app.log.N itself, so opsflow never compresses
    them: ``delete_after_days`` deletes such plain files only when the stack file's root
    says ``delete_uncompressed``."""
    from opsflow.operators.maintenance import root_rule
    from opsflow.stack.model import LogRoot

    root = LogRoot(
        path=str(tmp_path),
        patterns=["app.log.*"],
        delete_after_days=30,
        delete_uncompressed=delete_uncompressed,
    )
    stale = make(tmp_path / "app.log.11", age_days=40, now=now)
    recent = make(tmp_path / "app.log.1", age_days=2, now=now)
    other = make(tmp_path / "access.log.1", age_days=40, now=now)

    report = clean_root(tmp_path, root_rule(root), dry_run=False, now=now, open_files=frozenset())

    assert report.status == "ok"
    assert stale.exists() is not delete_uncompressed
    assert recent.exists() and other.exists()
    assert report.deleted == int(delete_uncompressed)
