"""Log file cleanup for one root: compress, delete, cap the size, drop empty dated directories.

The engine walks with directory file descriptors (``openat`` with ``O_NOFOLLOW``, ``scandir``
on the descriptor, ``*at`` calls with ``dir_fd``), so no symlink is ever followed and nothing
outside the root can be reached, even if a directory is swapped for a symlink mid-run. Where
the opened root really is (its descriptor's path, every symlink resolved) is checked against
:mod:`opsflow.stack.safety` before anything is read: a root that is, contains or lies in a
system directory is refused, however it came to point there. The
walk streams: per directory it keeps only the names of its subdirectories, so memory depends
on the depth and width of one path, not on the size of the tree. A dry run makes exactly the
same decisions (it compresses into a byte counter to know the compressed sizes) and changes
nothing. Replacing one file by its compressed copy is :mod:`opsflow.logs.compress`'s job.
No Airflow imports here: the DAG, tests and the benchmark share this module.
"""

from __future__ import annotations

import errno
import fnmatch
import heapq
import importlib.util
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from opsflow.logs.compress import (
    EXTENSIONS,
    READ_FLAGS,
    ByteCounter,
    Changed,
    WrittenMeanwhile,
    compress_beside,
    compressed_name,
    stream,
)
from opsflow.stack.safety import run_time_problem

COMPRESSED_SUFFIXES = (".gz", ".zst", ".xz", ".bz2")
TMP_SUFFIX = ".opsflow-tmp"
MAX_ACTIONS = 50
LARGEST_KEPT = 5
MAX_DEPTH = 256
CAP_BUCKET_SECONDS = 3600

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DAY = 86400.0
_NEVER = float("-inf")  # the cut of a rule that is off: no mtime is older

# A compressed name: ours (``a.log.20261120T031500.gz``) or a plain one (``a.log.gz``).
_COMPRESSED_RE = re.compile(r"(.*?)(?:\.\d{8}T\d{6})?\.(?:gz|zst|xz|bz2)", re.S)
# A date inside a directory name: 2026-11-20, 2026_11_20, 2026.11.20 or 20261120.
_DATE_RE = re.compile(
    r"(?<!\d)(?:19|20)\d\d([-_.]?)(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12]\d|3[01])(?!\d)"
)
_YEAR_RE = re.compile(r"(?:19|20)\d\d")
# Level of a directory that is dated, or lies inside a dated one (after year/month/day).
INSIDE_DATED = 4
_MONTH_RE = re.compile(r"0?[1-9]|1[0-2]")
_DAY_RE = re.compile(r"0?[1-9]|[12]\d|3[01]")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?|b)?", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Decisions of the first pass (replayed by a dry run's second pass).
_KEEP, _DELETE, _COMPRESS, _RECENT, _OPEN = range(5)
# Kinds of a listed entry, from its d_type.
_FILE, _DIR, _OTHER = range(3)
# Fates of a listed entry in one pass: still there, gone by itself, removed by this pass.
_LEFT, _GONE, _REMOVED = range(3)


def parse_size(text: str) -> int:
    """Bytes in a size such as ``200MB``, ``1.5GiB``, ``10m``, ``512K`` or ``100``.

    Every unit is a power of 1024 (``MB`` and ``MiB`` are both 1,048,576 bytes), as with
    Docker's ``max-size`` and ``du -h``, so ``10m`` means the same here as in a stack file.
    """
    found = _SIZE_RE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not a size: {text!r} (examples: 200MB, 1.5GiB, 10m, 512K, 100)")
    unit = (found.group(2) or "").lower()
    return round(float(found.group(1)) * _SIZE_UNITS[unit])


def _zstd_available() -> bool:
    return importlib.util.find_spec("zstandard") is not None


@dataclass(frozen=True)
class CleanupRule:
    """What to do with the files of one root (times in days/minutes, sizes in bytes).

    Patterns are ``fnmatch`` patterns. A pattern with ``/`` is matched against the path
    relative to the root (``*`` then also crosses ``/``), any other against the base name.
    A compressed file (``a.log.gz``, ``a.log.20261120T031500.gz``) matches when the name
    without the compression suffix matches.
    """

    patterns: tuple[str, ...] = ("*.log",)
    compress_after_days: float | None = None
    delete_after_days: float | None = None
    delete_uncompressed: bool = False
    max_total_bytes: int | None = None
    min_age_minutes: float = 10.0
    compression: Literal["gzip", "zstd"] = "gzip"
    remove_empty_dated_dirs: bool = True

    def __post_init__(self) -> None:
        patterns = tuple(self.patterns)
        object.__setattr__(self, "patterns", patterns)
        _check_patterns(patterns)
        for name in ("compress_after_days", "delete_after_days", "max_total_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.min_age_minutes < 0:
            raise ValueError(f"min_age_minutes must be >= 0, got {self.min_age_minutes!r}")
        if self.compression not in EXTENSIONS:
            raise ValueError(f"compression must be 'gzip' or 'zstd', got {self.compression!r}")
        if self.compression == "zstd" and not _zstd_available():
            raise ValueError(
                "compression 'zstd' needs the Python package 'zstandard', which is not "
                "installed; use compression 'gzip' or install zstandard"
            )
        if self.delete_uncompressed and self.delete_after_days is None:
            raise ValueError("delete_uncompressed needs delete_after_days")


def _check_patterns(patterns: tuple[str, ...]) -> None:
    if not patterns:
        raise ValueError("a cleanup rule needs at least one pattern")
    for pattern in patterns:
        if not pattern:
            raise ValueError("an empty pattern matches nothing; remove it")
        if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
            raise ValueError(
                f"pattern {pattern!r} refused: a pattern must stay inside its root "
                "(no leading '/' and no '..')"
            )


@dataclass
class RootReport:
    """Outcome of one root; ``actions`` lists the first actions (what would happen, dry)."""

    root: str
    status: Literal["ok", "missing", "error"]
    dry_run: bool
    error: str | None = None
    files_seen: int = 0
    files_matched: int = 0
    compressed: int = 0
    deleted: int = 0
    dirs_removed: int = 0
    skipped_open: int = 0
    skipped_recent: int = 0
    skipped_changed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    largest: list[tuple[str, int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (XCom, task return value)."""
        return {
            "root": self.root,
            "status": self.status,
            "dry_run": self.dry_run,
            "error": self.error,
            "files_seen": self.files_seen,
            "files_matched": self.files_matched,
            "compressed": self.compressed,
            "deleted": self.deleted,
            "dirs_removed": self.dirs_removed,
            "skipped_open": self.skipped_open,
            "skipped_recent": self.skipped_recent,
            "skipped_changed": self.skipped_changed,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "largest": [[path, size] for path, size in self.largest],
            "actions": list(self.actions),
        }


def open_file_ids() -> frozenset[tuple[int, int]]:
    """(st_dev, st_ino) of every regular file some process holds open, from ``/proc/*/fd``.

    Processes that vanish or cannot be read are skipped: the answer is a snapshot, and the
    age check (``min_age_minutes``) covers writers that open files only now and then.
    """
    ids: set[tuple[int, int]] = set()
    try:
        procs = os.scandir("/proc")
    except OSError:
        return frozenset()
    with procs:
        for proc in procs:
            if not proc.name.isdigit():
                continue
            fd_dir = f"/proc/{proc.name}/fd"
            try:
                fds = os.scandir(fd_dir)
            except OSError:
                continue
            with fds:
                for fd in fds:
                    try:
                        st = fd.stat()  # follows the magic link to the open file
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        ids.add((st.st_dev, st.st_ino))
    return frozenset(ids)


def clean_root(
    root: Path,
    rule: CleanupRule,
    *,
    dry_run: bool,
    now: float | None = None,
    open_files: frozenset[tuple[int, int]] | None = None,
    log: Callable[[str], None] | None = None,
) -> RootReport:
    """Apply ``rule`` to the files under ``root``; never raises for filesystem trouble.

    A missing root gives status ``missing``; a root that is a symlink, cannot be read or
    really is a system directory (``/``, ``/etc``, ``/usr/share``, ...), or any entry that
    cannot be read or changed, gives status ``error`` (the run goes on).
    """
    report = RootReport(root=str(root), status="ok", dry_run=dry_run)
    say = log if log is not None else _ignore
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        report.status = "missing"
        report.error = f"{root} does not exist"
        say(f"WARNING: log root {root} does not exist; nothing to clean")
        return report
    except OSError as exc:
        report.status = "error"
        report.error = _root_error(root, exc)
        say(f"ERROR: log root {root}: {report.error}")
        return report
    try:
        refused = _refused_root(root, fd)
        if refused is not None:
            report.status = "error"
            report.error = refused
            say(f"ERROR: log root {root}: {refused}")
            return report
        cleaner = _Cleaner(
            report,
            rule,
            dry_run=dry_run,
            now=time.time() if now is None else now,
            open_files=open_file_ids() if open_files is None else open_files,
            log=say,
            root_dev=os.fstat(fd).st_dev,
        )
        level = 0
        for part in root.parts:  # a root inside a YYYY/MM/DD layout continues it
            level = _date_level(part, level)
        cleaner.run(fd, level)
    finally:
        os.close(fd)
    say(_summary(report))
    return report


def _ignore(_: str) -> None:
    return None


def _refused_root(root: Path, fd: int) -> str | None:
    """Why the opened root must not be cleaned: where its descriptor really points decides."""
    try:
        real: str | None = str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError:
        real = None  # no /proc: resolve the path instead
    problem = run_time_problem(root, real)
    return None if problem is None else f"refused: {problem}"


def _root_error(root: Path, exc: OSError) -> str:
    if root.is_symlink():
        return "the root is a symlink; a log root is never followed (give its real path)"
    if exc.errno == errno.ENOTDIR:
        return "the root is not a directory"
    return f"cannot open the root: {exc.strerror or exc}"


def _summary(report: RootReport) -> str:
    largest = ", ".join(f"{path} ({size} B)" for path, size in report.largest) or "-"
    return (
        f"{report.root}: {'DRY RUN ' if report.dry_run else ''}status={report.status} "
        f"seen={report.files_seen} matched={report.files_matched} "
        f"compressed={report.compressed} deleted={report.deleted} "
        f"dirs_removed={report.dirs_removed} skipped_open={report.skipped_open} "
        f"skipped_recent={report.skipped_recent} skipped_changed={report.skipped_changed} "
        f"bytes {report.bytes_before} -> {report.bytes_after}; largest: {largest}"
    )


def _matcher(patterns: tuple[str, ...]) -> tuple[Callable[[str], Any], Callable[[str], Any]]:
    """One compiled regex for name patterns and one for path patterns (never-matching if none)."""
    if "*" in patterns:
        return _match_all, _match_none  # cheaper than a regex on the hot path
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths = [fnmatch.translate(p) for p in patterns if "/" in p]
    name_re = re.compile("|".join(names)).match if names else _match_none
    path_re = re.compile("|".join(paths)).match if paths else _match_none
    return name_re, path_re


def _match_all(_: str) -> bool:
    return True


def _match_none(_: str) -> bool:
    return False


def _kind(entry: os.DirEntry[str]) -> int:
    """_FILE, _DIR or _OTHER (symlinks, sockets, ...), from d_type: no syscall, no following."""
    try:
        if entry.is_file(follow_symlinks=False):
            return _FILE
        if entry.is_dir(follow_symlinks=False):
            return _DIR
    except OSError:
        pass
    return _OTHER


def _child_level(name: str, parent_level: int) -> int:
    """The date level of a subdirectory: year/month/day, INSIDE_DATED, or 0 (undated)."""
    level = _date_level(name, parent_level)
    if not level and (parent_level or _DATE_RE.search(name)):
        # Dated itself, or inside a dated directory (run_id=...2026-01-01.../task_id=t):
        # it belongs to that date and goes with it when empty.
        return INSIDE_DATED
    return level


class _Cleaner:
    """State of one clean_root call: counters, the size-cap histogram, the largest heap.

    Pass 1 applies the age rules and fills the histogram of what the size cap may delete;
    pass 2 (only over a cap) deletes the oldest of that. A dry pass 2 replays pass 1's
    decisions, since pass 1 changed nothing on disk.
    """

    def __init__(
        self,
        report: RootReport,
        rule: CleanupRule,
        *,
        dry_run: bool,
        now: float,
        open_files: frozenset[tuple[int, int]],
        log: Callable[[str], None],
        root_dev: int,
    ) -> None:
        self.report = report
        self.rule = rule
        self.dry_run = dry_run
        self.open_files = open_files
        self.log = log
        self.root_dev = root_dev
        self.name_match, self.path_match = _matcher(rule.patterns)
        self.recent_cut = now - rule.min_age_minutes * 60.0
        days = rule.delete_after_days
        self.delete_cut = _NEVER if days is None else now - days * _DAY
        self.delete_plain_cut = self.delete_cut if rule.delete_uncompressed else _NEVER
        days = rule.compress_after_days
        self.compress_cut = _NEVER if days is None else now - days * _DAY
        self.extension = EXTENSIONS[rule.compression]
        self.phase = 1
        self.replay = False  # a dry pass 2: replays pass 1's decisions
        self.capping = rule.max_total_bytes is not None  # pass 1 fills the cap's histogram
        self.total = 0  # matched bytes remaining
        self.histogram: dict[int, int] = {}  # hour of mtime -> bytes the cap may delete
        self.cut_bucket = 0
        self.heap: list[tuple[int, str]] = []
        self.errors = 0
        self.first_error: str | None = None
        self.hidden_actions = 0

    # ------------------------------------------------------------------ reporting

    def action(self, text: str) -> None:
        if len(self.report.actions) < MAX_ACTIONS:
            self.report.actions.append(text)
            self.log(("would " if self.dry_run else "") + text)
        else:
            self.hidden_actions += 1

    def error(self, text: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = text
        if len(self.report.actions) < MAX_ACTIONS:
            self.report.actions.append(f"error {text}")
        self.log(f"ERROR: {text}")

    def keep_largest(self, size: int, prefix: str, name: str) -> None:
        heap = self.heap
        if len(heap) < LARGEST_KEPT:
            heapq.heappush(heap, (size, prefix + name))
        elif size > heap[0][0]:
            heapq.heapreplace(heap, (size, prefix + name))

    # ------------------------------------------------------------------ passes

    def run(self, root_fd: int, level: int) -> None:
        report = self.report
        self.walk(root_fd, "", level, 0)
        cap = self.rule.max_total_bytes
        if cap is not None and self.total > cap:
            self.plan_cap(cap)
            self.phase = 2
            self.replay = self.dry_run
            self.heap = []
            self.walk(root_fd, "", level, 0)
            if self.total > cap:
                self.log(
                    f"WARNING: {report.root} stays over its cap ({self.total} > {cap} bytes): "
                    "the rest is recent or held open"
                )
        report.bytes_after = self.total
        report.largest = sorted(((rel, size) for size, rel in self.heap), key=lambda x: -x[1])
        if self.hidden_actions:
            self.log(f"... and {self.hidden_actions} more actions not listed")
        if self.errors:
            report.status = "error"
            report.error = f"{self.errors} error(s); first: {self.first_error}"

    def plan_cap(self, cap: int) -> None:
        """Pick the oldest hour bucket that must be (partly) deleted to get under the cap."""
        excess = self.total - cap
        freed = 0
        buckets = sorted(self.histogram)
        self.cut_bucket = buckets[-1] + 1 if buckets else 0
        for bucket in buckets:
            freed += self.histogram[bucket]
            if freed >= excess:
                self.cut_bucket = bucket
                break
        self.histogram = {}

    # ------------------------------------------------------------------ directories

    def walk(self, fd: int, prefix: str, level: int, depth: int) -> tuple[int, bool]:
        """Clean one directory; returns (entries left in it, whether this pass removed any)."""
        listed = self.clean_files(fd, prefix)
        if listed is None:
            return 1, False
        left, removed, subdirs = listed
        for name in subdirs:
            child_left, child_removed = self.subdir(fd, name, prefix, level, depth)
            left += child_left
            removed = removed or child_removed
        return left, removed

    def clean_files(self, fd: int, prefix: str) -> tuple[int, bool, list[str]] | None:
        """Clean the files of one directory while it is listed (only subdirectory names are
        kept); returns (entries left, whether any was removed, subdirectories), or None when
        the directory cannot be listed."""
        try:
            entries = os.scandir(fd)
        except OSError as exc:
            self.error(f"cannot list {prefix or '.'}: {exc.strerror or exc}")
            return None
        subdirs: list[str] = []
        created: set[str] = set()  # names this pass made here (compressed, temp files)
        fates = [0, 0, 0]  # entries per fate: _LEFT, _GONE, _REMOVED
        with entries:
            for entry in entries:
                kind = _kind(entry)
                if kind == _DIR:
                    subdirs.append(entry.name)
                elif created and entry.name in created:
                    continue  # made by this pass, listed after it was made
                elif kind == _FILE:
                    fates[self.file(fd, entry, prefix, created)] += 1
                else:
                    fates[_LEFT] += 1  # symlinks, sockets, ...: never followed, never touched
        if self.phase == 1:
            self.report.files_seen += sum(fates)
        return fates[_LEFT], fates[_REMOVED] > 0, subdirs

    def subdir(self, fd: int, name: str, prefix: str, level: int, depth: int) -> tuple[int, bool]:
        """Descend into one subdirectory; remove it when it ends up empty and is dated or lies
        inside a dated directory. Returns (1 if it stays else 0, whether anything was removed)."""
        rel = f"{prefix}{name}"
        try:
            child = self.enter(fd, name, rel, depth)
        except FileNotFoundError:
            return 0, False
        if child is None:
            return 1, False
        try:
            if not self.same_filesystem(child, rel):
                return 1, False
            child_level = _child_level(name, level)
            left, removed = self.walk(child, f"{rel}/", child_level, depth + 1)
        finally:
            os.close(child)
        if left or not child_level or not self.rule.remove_empty_dated_dirs:
            return 1, removed
        return self.remove_empty_dir(fd, name, rel, removed)

    def enter(self, fd: int, name: str, rel: str, depth: int) -> int | None:
        """Open a subdirectory without following a link; None when it is not to be walked
        (too deep, unreadable, swapped for a symlink or a file since listed). Raises
        FileNotFoundError when it is gone."""
        if depth >= MAX_DEPTH:
            self.error(f"{rel}: deeper than {MAX_DEPTH} levels, not descended")
            return None
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # else not ours any more
                self.error(f"cannot open {rel}/: {exc.strerror or exc}")
            return None

    def same_filesystem(self, child: int, rel: str) -> bool:
        """Whether an opened subdirectory lies on the root's filesystem (a mount is skipped)."""
        if os.fstat(child).st_dev == self.root_dev:
            return True
        if self.phase == 1:
            self.action(f"skip {rel}/ (another filesystem)")
        return False

    def remove_empty_dir(self, fd: int, name: str, rel: str, removed: bool) -> tuple[int, bool]:
        """Remove an emptied dated directory; a dry run counts it in the pass that emptied it."""
        if self.dry_run:
            if self.phase == 1 or removed:
                self.report.dirs_removed += 1
                self.action(f"rmdir {rel}")
                return 0, True
            return 0, False  # a dry first pass already counted it
        try:
            os.rmdir(name, dir_fd=fd)
        except FileNotFoundError:
            return 0, removed
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                self.error(f"cannot remove {rel}/: {exc.strerror or exc}")
            return 1, removed
        self.report.dirs_removed += 1
        self.action(f"rmdir {rel}")
        return 0, True

    # ------------------------------------------------------------------ one file

    def file(self, fd: int, entry: os.DirEntry[str], prefix: str, created: set[str]) -> int:
        """Clean one regular file; returns its fate (_LEFT, _GONE or _REMOVED)."""
        name = entry.name
        if name[0] == "." and name.endswith(TMP_SUFFIX):  # a temp file of ours
            return _REMOVED if self.leftover(fd, entry, prefix) else _LEFT
        compressed = name.endswith(COMPRESSED_SUFFIXES)
        if not self.covers(name, prefix, compressed):
            return _LEFT
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return _GONE
        except OSError as exc:
            self.error(f"cannot stat {prefix}{name}: {exc.strerror or exc}")
            return _LEFT
        if not stat.S_ISREG(st.st_mode):
            return _LEFT
        decision = self.decide(st, compressed)
        if self.phase == 1:
            return self.apply_age_rules(fd, name, st, decision, prefix, created)
        return self.apply_cap(fd, name, st, decision, prefix)

    def covers(self, name: str, prefix: str, compressed: bool) -> bool:
        """Whether the rule's patterns cover this file (a compressed one by its base name)."""
        return (
            self.name_match(name)
            or self.path_match(prefix + name)
            or (compressed and self.matches_base(name, prefix))
        )

    def matches_base(self, name: str, prefix: str) -> bool:
        found = _COMPRESSED_RE.fullmatch(name)
        if found is None or not found.group(1):
            return False
        base = found.group(1)
        return bool(self.name_match(base) or self.path_match(prefix + base))

    def decide(self, st: os.stat_result, compressed: bool) -> int:
        """Pass 1's decision for one covered file (a dry pass 2 replays it)."""
        mtime = st.st_mtime
        if mtime > self.recent_cut:
            return _RECENT
        if self.open_files and (st.st_dev, st.st_ino) in self.open_files:
            return _OPEN
        if compressed:
            return _DELETE if mtime < self.delete_cut else _KEEP
        if mtime < self.delete_plain_cut:
            return _DELETE
        if mtime < self.compress_cut:
            return _COMPRESS
        return _KEEP

    def apply_age_rules(
        self,
        fd: int,
        name: str,
        st: os.stat_result,
        decision: int,
        prefix: str,
        created: set[str],
    ) -> int:
        """Pass 1: delete or compress as decided, count what stays; returns the fate."""
        report = self.report
        report.files_matched += 1
        size = st.st_size
        report.bytes_before += size
        if decision == _DELETE:
            fate = self.delete_old(fd, name, prefix)
            if fate != _LEFT:
                return fate
            capped = False  # could not be deleted: the cap leaves it alone too
        elif decision == _COMPRESS:
            result = self.compress(fd, name, st, prefix, created)
            capped = result is not None  # a file left uncompressed is left alone
            if result is not None:
                name, size = result
        else:
            capped = decision == _KEEP
            if decision == _RECENT:
                report.skipped_recent += 1
            elif decision == _OPEN:
                report.skipped_open += 1
        self.total += size
        if capped and self.capping:
            bucket = int(st.st_mtime // CAP_BUCKET_SECONDS)
            self.histogram[bucket] = self.histogram.get(bucket, 0) + size
        self.keep_largest(size, prefix, name)
        return _LEFT

    def apply_cap(self, fd: int, name: str, st: os.stat_result, decision: int, prefix: str) -> int:
        """Pass 2: delete what lies in the hours the cap cuts off; returns the fate."""
        size = st.st_size
        if self.replay:  # pass 1 was dry: see the tree as it would have left it
            if decision == _DELETE:
                return _GONE
            if decision == _COMPRESS:
                size = self.compressed_size(fd, name, prefix)
                name = compressed_name(name, st.st_mtime, self.extension)
        if (
            decision != _RECENT
            and decision != _OPEN
            and self.cut_off(st.st_mtime)
            and self.delete_for_cap(fd, name, prefix)
        ):
            self.total -= size
            return _REMOVED
        self.keep_largest(size, prefix, name)
        return _LEFT

    def cut_off(self, mtime: float) -> bool:
        """Whether the cap deletes a file of this age: older hours all, the cut hour while
        the total is still over the cap."""
        bucket = int(mtime // CAP_BUCKET_SECONDS)
        cap = self.rule.max_total_bytes
        return bucket < self.cut_bucket or (
            bucket == self.cut_bucket and cap is not None and self.total > cap
        )

    def is_untouchable(self, st: os.stat_result) -> bool:
        """Recent or held open: a writer (or a live run) may still be at it."""
        return st.st_mtime > self.recent_cut or (st.st_dev, st.st_ino) in self.open_files

    def leftover(self, fd: int, entry: os.DirEntry[str], prefix: str) -> bool:
        """Remove a temp file a crashed run left behind (unless recent or open: a live run)."""
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or self.is_untouchable(st):
            return False
        if self.replay:
            return True  # a dry pass 1 already listed it
        if self.phase == 2 and not self.dry_run:
            return False  # appeared since pass 1: a live run's file
        return self.remove_leftover(fd, entry.name, prefix)

    def remove_leftover(self, fd: int, name: str, prefix: str) -> bool:
        fate = self.unlink(fd, name, prefix, verb="remove")
        if fate == _REMOVED:
            self.action(f"remove leftover {prefix}{name}")
        return fate != _LEFT

    def unlink(self, fd: int, name: str, prefix: str, verb: str = "delete") -> int:
        """Delete one file (not in a dry run); returns its fate, an error is reported."""
        if self.dry_run:
            return _REMOVED
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return _GONE
        except OSError as exc:
            self.error(f"cannot {verb} {prefix}{name}: {exc.strerror or exc}")
            return _LEFT
        return _REMOVED

    def delete_old(self, fd: int, name: str, prefix: str) -> int:
        """Delete a file past its age; returns its fate."""
        fate = self.unlink(fd, name, prefix)
        if fate == _REMOVED:
            self.report.deleted += 1
            if len(self.report.actions) < MAX_ACTIONS:  # no text built for unlisted actions
                self.action(f"delete {prefix}{name}")
            else:
                self.hidden_actions += 1
        return fate

    def delete_for_cap(self, fd: int, name: str, prefix: str) -> bool:
        if self.unlink(fd, name, prefix) != _REMOVED:
            return False
        self.report.deleted += 1
        self.action(f"delete {prefix}{name} (size cap)")
        return True

    # ------------------------------------------------------------------ compression

    def compressed_size(self, fd: int, name: str, prefix: str) -> int:
        """Size the compressed file would have (dry run): compress into a counter."""
        sink = ByteCounter()
        try:
            src = os.open(name, READ_FLAGS, dir_fd=fd)
        except OSError as exc:
            self.error(f"cannot read {prefix}{name}: {exc.strerror or exc}")
            return 0
        try:
            st = os.fstat(src)
            stream(src, sink, name, int(st.st_mtime), self.rule.compression)
        except OSError as exc:
            self.error(f"cannot read {prefix}{name}: {exc.strerror or exc}")
        finally:
            os.close(src)
        return sink.size

    def compress(
        self, fd: int, name: str, st: os.stat_result, prefix: str, created: set[str]
    ) -> tuple[str, int] | None:
        """Compress next to the original; returns (new name, size) or None if it stayed."""
        new_name = compressed_name(name, st.st_mtime, self.extension)
        rel = f"{prefix}{name}"
        if self.dry_run:
            size: int | None = self.compressed_size(fd, name, prefix)
        else:
            size = self.replace_by_compressed(fd, name, st, new_name, prefix, created)
        if size is None:
            return None
        self.report.compressed += 1
        self.action(f"compress {rel} -> {new_name}")
        return new_name, size

    def open_source(self, fd: int, name: str, rel: str) -> int | None:
        """Open a file to compress without following a link; None when it is gone or not ours."""
        try:
            return os.open(name, READ_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink since listed: not ours
                self.report.skipped_changed += 1
            else:
                self.error(f"cannot read {rel}: {exc.strerror or exc}")
            return None

    def replace_by_compressed(
        self,
        fd: int,
        name: str,
        st: os.stat_result,
        new_name: str,
        prefix: str,
        created: set[str],
    ) -> int | None:
        """Compress for real; returns the compressed size, or None if the original stayed.

        The names it creates go into ``created``: the listing still under way skips them.
        """
        rel = f"{prefix}{name}"
        tmp = f".{name}{TMP_SUFFIX}"
        created.add(tmp)
        src = self.open_source(fd, name, rel)
        if src is None:
            return None
        try:
            size = compress_beside(
                fd,
                src,
                name,
                st,
                new_name,
                tmp,
                self.rule.compression,
                untouchable=self.is_untouchable,
                cleared=lambda: self.action(f"remove leftover {prefix}{tmp}"),
            )
            created.add(new_name)
            return size
        except Changed:
            self.report.skipped_changed += 1
            self.action(f"skip {rel} (changed during compression)")
        except WrittenMeanwhile:
            self.report.skipped_changed += 1
            self.action(f"keep {rel} (written during compression) and {new_name}")
        except OSError as exc:
            self.error(f"cannot compress {rel}: {exc.strerror or exc}")
        finally:
            os.close(src)
        return None


def _date_level(name: str, parent_level: int) -> int:
    """1, 2, 3 for the year, month and day directories of a ``YYYY/MM/DD`` layout, else 0."""
    if _YEAR_RE.fullmatch(name):
        return 1
    if parent_level == 1 and _MONTH_RE.fullmatch(name):
        return 2
    if parent_level == 2 and _DAY_RE.fullmatch(name):
        return 3
    return 0
