#!/usr/bin/env python
"""Log cleanup benchmark: opsflow's ``clean_root`` next to ``find ROOT -type f -mtime +N -delete``.

A tree of 200,000 small files in 20,000 directories (200 x 100 directories, 10 files each,
ages spread over 0-60 days by a seeded random generator) is written twice, file by file
(same names, sizes, mtimes and creation order), in a temporary directory, so both tools
start from identical, equally cached trees on the same filesystem. ``find`` cleans one copy
and opsflow the other, each in its own child process whose wall time and peak RSS are
measured (``sync`` before each, so neither pays for the other's writeback). The opsflow
child pays for its interpreter start, its imports and the ``/proc`` scan for open files, as
the DAG task would. Both copies must end with the same set of files, the set the generator
predicts. Then opsflow alone (and find too with ``--find-on-doubled``) cleans the tree
doubled (400,000 files in 40,000 directories), to check that its memory stays flat.

``find -mtime +N`` counts whole days (fractions dropped), so it deletes files at least N+1
days old; the equivalent rule is ``delete_after_days=N+1``. Ages are whole days plus
0.25-0.75 of a day, so neither tool meets a file on the boundary.

Pass criteria: opsflow's wall time within 1.5x of find's on each tree both ran on, and
opsflow's peak RSS on the doubled tree within +10% or +5 MB of the single tree's. Exit status 1 on a
failed criterion or a mismatch, 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    GNU_TIME,
    BenchError,
    Check,
    finish,
    gnu_time_argv,
    gnu_time_result,
    machine_line,
)

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0
TIME_RATIO = 1.5
RSS_GROWTH = 0.10
RSS_SLACK_MB = 5.0


@dataclass
class Run:
    tool: str
    files: int
    dirs: int
    wall: float
    rss_mb: float
    inner: float | None = None  # opsflow's own time inside the child (no startup)


def build(
    roots: tuple[Path, ...], top: int, sub: int, per_dir: int, seed: int, now: float
) -> dict[str, int]:
    """Write the same tree under both roots, file by file (same names, sizes, mtimes, order).

    Returns each file's age in whole days (what ``-mtime`` compares).
    """
    rng = random.Random(seed)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    ages: dict[str, int] = {}
    for t in range(top):
        for s in range(sub):
            rel_dir = f"app{t:03d}/part{s:03d}"
            for root in roots:
                (root / rel_dir).mkdir(parents=True)
            for f in range(per_dir):
                whole_days = rng.randrange(0, 61)
                stamp = now - (whole_days + 0.25 + rng.random() * 0.5) * DAY
                data = b"x" * rng.randrange(1, 64)
                name = f"{rel_dir}/svc{f:02d}.log"
                for root in roots:
                    fd = os.open(root / name, flags, 0o644)
                    try:
                        os.write(fd, data)
                        os.utime(fd, (stamp, stamp))
                    finally:
                        os.close(fd)
                ages[name] = whole_days
    return ages


def survivors(ages: dict[str, int], days: int) -> set[str]:
    return {name for name, whole_days in ages.items() if whole_days <= days}


def remaining_files(root: Path) -> set[str]:
    found: set[str] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    found.add(str(Path(entry.path).relative_to(root)))
    return found


def measure(argv: list[str], scratch: Path) -> tuple[float, float, str, str]:
    """Run ``argv``; return (wall seconds, peak RSS in MB, how RSS was measured, stdout).

    GNU time reports the child's own ``ru_maxrss`` (see :func:`benchlib.gnu_time_argv`).
    Without GNU time the child's ``VmHWM`` is sampled from ``/proc`` every 2 ms (a lower
    bound, marked "sampled").
    """
    if GNU_TIME.exists():
        rss_file = scratch / "rss"
        started = time.perf_counter()
        done = subprocess.run(
            gnu_time_argv(argv, rss_file), stdout=subprocess.PIPE, text=True, check=True
        )
        wall = time.perf_counter() - started
        timed = gnu_time_result(rss_file)
        if timed is None:
            raise BenchError(f"GNU time wrote no result to {rss_file}")
        return wall, timed[0], "GNU time", done.stdout
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(argv, stdout=out, text=True)
        peak_kb = 0
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        wall = time.perf_counter() - started
        if child.returncode != 0:
            raise subprocess.CalledProcessError(child.returncode, argv)
        out.seek(0)
        return wall, peak_kb / 1024.0, "sampled", out.read()


def worker(root: str, days: int) -> int:
    """The opsflow side, run in a child process so its peak memory is its own."""
    started = time.perf_counter()
    sys.path.insert(0, str(REPO / "plugins"))
    from opsflow.logs.files import CleanupRule, clean_root

    rule = CleanupRule(
        patterns=("*",),
        delete_after_days=days + 1,
        delete_uncompressed=True,
        min_age_minutes=0,
        remove_empty_dated_dirs=False,
    )
    report = clean_root(Path(root), rule, dry_run=False)
    result = report.to_dict()
    result["seconds"] = time.perf_counter() - started
    result.pop("actions")
    print(json.dumps(result))
    return 0 if report.status == "ok" else 1


@dataclass
class Tree:
    files: int
    dirs: int
    ages: dict[str, int]
    roots: dict[str, Path]  # tool -> its copy


def prepare(base: Path, top: int, tools: tuple[str, ...]) -> Tree:
    """Write one copy of the tree per tool (``top`` x 100 directories of 10 files)."""
    sub, per_dir = 100, 10
    files, dirs = top * sub * per_dir, top * sub + top
    roots = {tool: base / f"{tool}-{files}" for tool in tools}
    started = time.perf_counter()
    ages = build(tuple(roots.values()), top, sub, per_dir, seed=files, now=time.time())
    print(
        f"built {files:,} files in {dirs:,} directories {len(roots)}x "
        f"in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Tree(files, dirs, ages, roots)


def clean_and_check(tree: Tree, days: int, scratch: Path) -> list[Run]:
    """Clean each copy with its tool, then check both left exactly the expected files."""
    argvs = {
        "find": [
            "find",
            str(tree.roots.get("find")),
            "-type",
            "f",
            "-mtime",
            f"+{days}",
            "-delete",
        ],
        "opsflow": [sys.executable, str(Path(__file__).resolve()), "--worker"],
    }
    argvs["opsflow"] += [str(tree.roots["opsflow"]), "--days", str(days)]
    runs: list[Run] = []
    expected = survivors(tree.ages, days)
    for tool, root in tree.roots.items():
        subprocess.run(["sync"], check=True)  # no pending writeback from earlier work
        wall, rss, how, out = measure(argvs[tool], scratch)
        left = remaining_files(root)
        if left != expected:
            raise SystemExit(
                f"MISMATCH: {tool} left {len(left):,} files in {root}, expected {len(expected):,}"
            )
        inner = None
        if tool == "opsflow":
            report = json.loads(out.strip().splitlines()[-1])
            if report["deleted"] != tree.files - len(expected) or (
                report["files_seen"] != tree.files
            ):
                raise SystemExit(f"MISMATCH: opsflow report {report}")
            inner = float(report["seconds"])
        print(
            f"{tool} left the expected {len(expected):,} of {tree.files:,} files "
            f"(peak RSS by {how})",
            flush=True,
        )
        runs.append(
            Run(
                tool if tool == "opsflow" else "find -delete",
                tree.files,
                tree.dirs,
                wall,
                rss,
                inner,
            )
        )
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="find's -mtime +N (default 30)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to build the trees (default: $TMPDIR)"
    )
    parser.add_argument(
        "--find-on-doubled", action="store_true", help="also run find on the doubled tree"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.days)

    if shutil.which("find") is None:
        print("find is needed", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="opsflow-bench-logs-", dir=args.dir))
    print(machine_line(), flush=True)
    started = time.perf_counter()
    try:
        # Everything is built before anything is deleted: deletions (and the discards some
        # filesystems issue for them) would otherwise slow the later builds unevenly.
        doubled_tools = ("find", "opsflow") if args.find_on_doubled else ("opsflow",)
        trees = [prepare(base, 200, ("find", "opsflow")), prepare(base, 400, doubled_tools)]
        runs = [run for tree in trees for run in clean_and_check(tree, args.days, base)]
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)

    print(f"\ntrees in {base.parent}; find ROOT -type f -mtime +{args.days} -delete vs")
    print(
        f"clean_root(delete_after_days={args.days + 1}, delete_uncompressed=True, "
        "min_age_minutes=0, patterns=('*',))\n"
    )
    header = f"{'tool':<14}{'files':>10}{'dirs':>8}{'wall s':>9}{'engine s':>10}"
    print(f"{header}{'peak RSS MB':>13}{'time vs find':>14}")
    find_wall = {r.files: r.wall for r in runs if r.tool.startswith("find")}
    for r in runs:
        inner = f"{r.inner:.2f}" if r.inner is not None else "-"
        versus = f"{r.wall / find_wall[r.files]:.2f}x" if r.files in find_wall else "-"
        print(
            f"{r.tool:<14}{r.files:>10,}{r.dirs:>8,}{r.wall:>9.2f}{inner:>10}"
            f"{r.rss_mb:>13.1f}{versus:>14}"
        )

    ops = [r for r in runs if r.tool == "opsflow"]
    checks: list[Check] = []
    for r in ops:
        if r.files in find_wall:
            ratio = r.wall / find_wall[r.files]
            where = f"opsflow at {r.files:,} files"
            target = f"<= {TIME_RATIO}x"
            checks.append(
                Check("wall vs find", where, f"{ratio:.2f}x", target, ratio <= TIME_RATIO)
            )
    small, doubled = ops
    limit = max(small.rss_mb * (1 + RSS_GROWTH), small.rss_mb + RSS_SLACK_MB)
    checks.append(
        Check(
            "memory flat",
            f"opsflow at {doubled.files:,} files",
            f"{doubled.rss_mb:.1f} MB",
            f"<= {limit:.1f} MB: {small.rss_mb:.1f} MB at {small.files:,} + "
            f"{RSS_GROWTH:.0%} or {RSS_SLACK_MB:g} MB",
            doubled.rss_mb <= limit,
        )
    )
    return finish(checks, started, enforce=True)


if __name__ == "__main__":
    sys.exit(main())
