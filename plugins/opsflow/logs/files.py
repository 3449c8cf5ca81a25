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
nothing. No Airflow imports here: the DAG, tests and the benchmark share this module.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import gzip
import heapq
import importlib
import importlib.util
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from opsflow.stack.safety import run_time_problem

COMPRESSED_SUFFIXES = (".gz", ".zst", ".xz", ".bz2")
TMP_SUFFIX = ".opsflow-tmp"
MAX_ACTIONS = 50
LARGEST_KEPT = 5
MAX_DEPTH = 256
CAP_BUCKET_SECONDS = 3600

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_DAY = 86400.0
_EXTENSIONS = {"gzip": ".gz", "zstd": ".zst"}

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
        for name in ("compress_after_days", "delete_after_days", "max_total_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.min_age_minutes < 0:
            raise ValueError(f"min_age_minutes must be >= 0, got {self.min_age_minutes!r}")
        if self.compression not in _EXTENSIONS:
            raise ValueError(f"compression must be 'gzip' or 'zstd', got {self.compression!r}")
        if self.compression == "zstd" and not _zstd_available():
            raise ValueError(
                "compression 'zstd' needs the Python package 'zstandard', which is not "
                "installed; use compression 'gzip' or install zstandard"
            )
        if self.delete_uncompressed and self.delete_after_days is None:
            raise ValueError("delete_uncompressed needs delete_after_days")


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


def _matcher(patterns: tuple[str, ...]) -> tuple[Any, Any]:
    """One compiled regex for name patterns and one for path patterns (``None`` if none)."""
    if "*" in patterns:
        return _match_all, None  # cheaper than a regex on the hot path
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths = [fnmatch.translate(p) for p in patterns if "/" in p]
    name_re = re.compile("|".join(names)).match if names else None
    path_re = re.compile("|".join(paths)).match if paths else None
    return name_re, path_re


def _match_all(_: str) -> bool:
    return True


class _Counter:
    """A write-only sink that counts bytes: how a dry run learns compressed sizes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        return None


class _Changed(Exception):
    """The file changed (written, replaced) while we compressed it."""


class _Cleaner:
    """State of one clean_root call: counters, the size-cap histogram, the largest heap."""

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
        self.delete_cut = None if days is None else now - days * _DAY
        self.delete_plain_cut = self.delete_cut if rule.delete_uncompressed else None
        days = rule.compress_after_days
        self.compress_cut = None if days is None else now - days * _DAY
        self.extension = _EXTENSIONS[rule.compression]
        self.phase = 1
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

    def keep_largest(self, size: int, rel: str) -> None:
        heap = self.heap
        if len(heap) < LARGEST_KEPT:
            heapq.heappush(heap, (size, rel))
        elif size > heap[0][0]:
            heapq.heapreplace(heap, (size, rel))

    # ------------------------------------------------------------------ passes

    def run(self, root_fd: int, level: int) -> None:
        report = self.report
        self.walk(root_fd, "", level, 0)
        cap = self.rule.max_total_bytes
        if cap is not None and self.total > cap:
            self.plan_cap(cap)
            self.phase = 2
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

    def walk(self, fd: int, prefix: str, level: int, depth: int) -> tuple[int, bool]:
        """Clean one directory; returns (entries left in it, whether this pass removed any)."""
        report = self.report
        rule = self.rule
        dry = self.dry_run
        phase = self.phase
        replay = dry and phase == 2
        name_match = self.name_match
        path_match = self.path_match
        open_files = self.open_files
        recent_cut = self.recent_cut
        delete_cut = self.delete_cut
        delete_plain_cut = self.delete_plain_cut
        compress_cut = self.compress_cut
        capping = phase == 1 and rule.max_total_bytes is not None
        histogram = self.histogram
        cut_bucket = self.cut_bucket
        cap = rule.max_total_bytes if phase == 2 else None
        heap = self.heap
        compressed_ends = COMPRESSED_SUFFIXES
        isreg = stat.S_ISREG
        unlink = os.unlink
        seen = matched = before = total = 0
        n_deleted = n_recent = n_open = 0
        remaining = 0
        removed = False
        subdirs: list[str] = []
        created: set[str] = set()
        listed = len(report.actions)

        try:
            entries = os.scandir(fd)
        except OSError as exc:
            self.error(f"cannot list {prefix or '.'}: {exc.strerror or exc}")
            return 1, False
        with entries:
            for entry in entries:
                name = entry.name
                # d_type answers these without a syscall; symlinks are neither files nor dirs.
                try:
                    regular = entry.is_file(follow_symlinks=False)
                    if not regular and entry.is_dir(follow_symlinks=False):
                        subdirs.append(name)
                        continue
                except OSError:
                    regular = False
                if created and name in created:
                    continue  # our own compressed file, listed after we made it
                seen += 1
                remaining += 1
                if not regular:
                    continue
                if name[0] == "." and name.endswith(TMP_SUFFIX):
                    if self.leftover(fd, entry, prefix, replay):
                        remaining -= 1
                        removed = True
                    continue
                compressed = name.endswith(compressed_ends)
                if not (
                    (name_match is not None and name_match(name))
                    or (path_match is not None and path_match(prefix + name))
                    or (compressed and self.matches_base(name, prefix))
                ):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    remaining -= 1
                    continue
                except OSError as exc:
                    self.error(f"cannot stat {prefix}{name}: {exc.strerror or exc}")
                    continue
                if not isreg(st.st_mode):
                    continue
                matched += 1
                size = st.st_size
                mtime = st.st_mtime
                before += size
                # ---- first-pass decision (applied in pass 1, replayed by a dry pass 2)
                if mtime > recent_cut:
                    decision = _RECENT
                elif open_files and (st.st_dev, st.st_ino) in open_files:
                    decision = _OPEN
                elif compressed:
                    decision = _DELETE if delete_cut is not None and mtime < delete_cut else _KEEP
                elif delete_plain_cut is not None and mtime < delete_plain_cut:
                    decision = _DELETE
                elif compress_cut is not None and mtime < compress_cut:
                    decision = _COMPRESS
                else:
                    decision = _KEEP
                if phase == 1:
                    eligible = decision == _KEEP
                    if decision == _DELETE:
                        if not dry:
                            try:
                                unlink(name, dir_fd=fd)
                            except FileNotFoundError:
                                remaining -= 1
                                continue
                            except OSError as exc:
                                self.error(f"cannot delete {prefix}{name}: {exc.strerror or exc}")
                                decision = _KEEP
                        if decision == _DELETE:
                            n_deleted += 1
                            remaining -= 1
                            removed = True
                            if listed < MAX_ACTIONS:
                                self.action(f"delete {prefix}{name}")
                                listed = len(report.actions)
                            else:
                                self.hidden_actions += 1
                            continue
                    elif decision == _COMPRESS:
                        result = self.compress(fd, name, st, prefix)
                        if not dry:
                            created.add(f".{name}{TMP_SUFFIX}")
                        if result is not None:
                            eligible = True
                            name, size = result
                            if not dry:
                                created.add(name)
                    elif decision == _RECENT:
                        n_recent += 1
                    elif decision == _OPEN:
                        n_open += 1
                else:
                    if replay:
                        if decision == _DELETE:
                            remaining -= 1
                            continue
                        if decision == _COMPRESS:
                            size = self.compressed_size(fd, name, prefix)
                            name = self.compressed_name(name, mtime)
                    eligible = decision != _RECENT and decision != _OPEN
                    if eligible and cap is not None:
                        bucket = int(mtime // CAP_BUCKET_SECONDS)
                        if (
                            bucket < cut_bucket or (bucket == cut_bucket and self.total > cap)
                        ) and self.delete_for_cap(fd, name, prefix):
                            self.total -= size
                            remaining -= 1
                            removed = True
                            continue
                # ---- the file stays
                if phase == 1:
                    total += size
                    if capping and eligible:
                        bucket = int(mtime // CAP_BUCKET_SECONDS)
                        histogram[bucket] = histogram.get(bucket, 0) + size
                if len(heap) < LARGEST_KEPT or size > heap[0][0]:
                    self.keep_largest(size, prefix + name)

        if phase == 1:
            report.files_seen += seen
            report.files_matched += matched
            report.bytes_before += before
            report.deleted += n_deleted
            report.skipped_recent += n_recent
            report.skipped_open += n_open
            self.total += total

        for name in subdirs:
            left, child_removed = self.subdir(fd, name, prefix, level, depth)
            remaining += left
            removed = removed or child_removed
        return remaining, removed

    def subdir(self, fd: int, name: str, prefix: str, level: int, depth: int) -> tuple[int, bool]:
        """Descend into one subdirectory; remove it when it ends up empty and is dated or lies
        inside a dated directory."""
        rel = f"{prefix}{name}"
        if depth >= MAX_DEPTH:
            self.error(f"{rel}: deeper than {MAX_DEPTH} levels, not descended")
            return 1, False
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return 0, False
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return 1, False  # swapped for a symlink or a file since listed: not ours
            self.error(f"cannot open {rel}/: {exc.strerror or exc}")
            return 1, False
        try:
            if os.fstat(child).st_dev != self.root_dev:
                if self.phase == 1:
                    self.action(f"skip {rel}/ (another filesystem)")
                return 1, False
            child_level = _date_level(name, level)
            if not child_level and (level or _DATE_RE.search(name)):
                # Dated itself, or inside a dated directory (run_id=...2026-01-01.../task_id=t):
                # it belongs to that date and goes with it when empty.
                child_level = INSIDE_DATED
            left, removed = self.walk(child, f"{rel}/", child_level, depth + 1)
        finally:
            os.close(child)
        if left or not self.rule.remove_empty_dated_dirs:
            return 1, removed
        if not child_level:
            return 1, removed
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

    # ------------------------------------------------------------------ single files

    def matches_base(self, name: str, prefix: str) -> bool:
        found = _COMPRESSED_RE.fullmatch(name)
        if found is None or not found.group(1):
            return False
        base = found.group(1)
        if self.name_match is not None and self.name_match(base):
            return True
        return self.path_match is not None and bool(self.path_match(prefix + base))

    def is_untouchable(self, st: os.stat_result) -> bool:
        return st.st_mtime > self.recent_cut or (st.st_dev, st.st_ino) in self.open_files

    def leftover(self, fd: int, entry: os.DirEntry[str], prefix: str, replay: bool) -> bool:
        """Remove a temp file a crashed run left behind (unless recent or open: a live run)."""
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or self.is_untouchable(st):
            return False
        if replay:
            return True
        if self.phase == 2 and not self.dry_run:
            return False  # appeared since pass 1: a live run's file
        if not self.dry_run:
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                return True
            except OSError as exc:
                self.error(f"cannot remove {prefix}{entry.name}: {exc.strerror or exc}")
                return False
        self.action(f"remove leftover {prefix}{entry.name}")
        return True

    def delete_for_cap(self, fd: int, name: str, prefix: str) -> bool:
        if not self.dry_run:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as exc:
                self.error(f"cannot delete {prefix}{name}: {exc.strerror or exc}")
                return False
        self.report.deleted += 1
        self.action(f"delete {prefix}{name} (size cap)")
        return True

    def compressed_name(self, name: str, mtime: float) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(mtime))
        return f"{name}.{stamp}{self.extension}"

    def compressed_size(self, fd: int, name: str, prefix: str) -> int:
        """Size the compressed file would have (dry run): compress into a counter."""
        sink = _Counter()
        try:
            src = os.open(name, _READ_FLAGS, dir_fd=fd)
        except OSError as exc:
            self.error(f"cannot read {prefix}{name}: {exc.strerror or exc}")
            return 0
        try:
            st = os.fstat(src)
            self.stream(src, sink, name, int(st.st_mtime))
        except OSError as exc:
            self.error(f"cannot read {prefix}{name}: {exc.strerror or exc}")
        finally:
            os.close(src)
        return sink.size

    def stream(self, src: int, out: IO[bytes] | _Counter, name: str, mtime: int) -> int:
        """Compress everything readable from ``src`` into ``out``; returns bytes read."""
        read = 0
        if self.rule.compression == "zstd":
            zstandard = importlib.import_module("zstandard")
            with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
                while chunk := os.read(src, _CHUNK):
                    writer.write(chunk)
                    read += len(chunk)
            return read
        with gzip.GzipFile(
            filename=name, mode="wb", compresslevel=6, fileobj=out, mtime=mtime
        ) as writer:
            while chunk := os.read(src, _CHUNK):
                writer.write(chunk)
                read += len(chunk)
        return read

    def compress(
        self, fd: int, name: str, st: os.stat_result, prefix: str
    ) -> tuple[str, int] | None:
        """Compress next to the original; returns (new name, size) or None if it stayed."""
        new_name = self.compressed_name(name, st.st_mtime)
        rel = f"{prefix}{name}"
        if self.dry_run:
            size = self.compressed_size(fd, name, prefix)
            self.report.compressed += 1
            self.action(f"compress {rel} -> {new_name}")
            return new_name, size
        tmp = f".{name}{TMP_SUFFIX}"
        tmp_exists = False
        try:
            src = os.open(name, _READ_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink since listed: not ours
                self.report.skipped_changed += 1
                return None
            self.error(f"cannot read {rel}: {exc.strerror or exc}")
            return None
        try:
            before = os.fstat(src)
            if (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino):
                raise _Changed
            dst = self.create_tmp(fd, tmp, before, prefix)
            tmp_exists = True
            try:
                with open(dst, "wb", closefd=False) as out:
                    read = self.stream(src, out, name, int(before.st_mtime))
                    out.flush()
                os.fsync(dst)
                os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
                size = os.fstat(dst).st_size
            finally:
                os.close(dst)
            after = os.fstat(src)
            if (
                read != before.st_size
                or after.st_size != before.st_size
                or after.st_mtime_ns != before.st_mtime_ns
            ):
                raise _Changed
            os.rename(tmp, new_name, src_dir_fd=fd, dst_dir_fd=fd)
            tmp_exists = False
            os.fsync(fd)
            try:
                current = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                current = before  # rotated away meanwhile: the compressed copy is all there is
                name = ""
            after = os.fstat(src)
            if (
                (current.st_dev, current.st_ino) != (before.st_dev, before.st_ino)
                or after.st_size != before.st_size
                or after.st_mtime_ns != before.st_mtime_ns
            ):
                # Written between the check and now: keep both, nothing is lost.
                self.report.skipped_changed += 1
                self.action(f"keep {rel} (written during compression) and {new_name}")
                return None
            if name:
                os.unlink(name, dir_fd=fd)
        except _Changed:
            self.report.skipped_changed += 1
            self.action(f"skip {rel} (changed during compression)")
            return None
        except OSError as exc:
            self.error(f"cannot compress {rel}: {exc.strerror or exc}")
            return None
        finally:
            os.close(src)
            if tmp_exists:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
        self.report.compressed += 1
        self.action(f"compress {rel} -> {new_name}")
        return new_name, size

    def create_tmp(self, fd: int, tmp: str, original: os.stat_result, prefix: str) -> int:
        """Create the temp file with the original's mode and owner; clear a stale one once."""
        for attempt in range(2):
            try:
                dst = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=fd)
                break
            except FileExistsError:
                st = os.stat(tmp, dir_fd=fd, follow_symlinks=False)
                if attempt or not stat.S_ISREG(st.st_mode) or self.is_untouchable(st):
                    raise
                os.unlink(tmp, dir_fd=fd)
                self.action(f"remove leftover {prefix}{tmp}")
        try:
            os.fchmod(dst, stat.S_IMODE(original.st_mode))
            if os.geteuid() == 0:
                os.fchown(dst, original.st_uid, original.st_gid)
        except OSError:
            os.close(dst)
            os.unlink(tmp, dir_fd=fd)
            raise
        return dst


def _date_level(name: str, parent_level: int) -> int:
    """1, 2, 3 for the year, month and day directories of a ``YYYY/MM/DD`` layout, else 0."""
    if _YEAR_RE.fullmatch(name):
        return 1
    if parent_level == 1 and _MONTH_RE.fullmatch(name):
        return 2
    if parent_level == 2 and _DAY_RE.fullmatch(name):
        return 3
    return 0
