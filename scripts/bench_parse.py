#!/usr/bin/env python
"""Parse-time benchmark of the DAG files, next to Airflow's own ``dags report`` figure.

Ten copies of the demo stack (``bench01``..``bench10``) and their thin DAG files are written
to a temporary directory with its own Airflow home (SQLite), then each DAG file is measured
three ways:

* **warm**: how Airflow's DAG processor parses a file. Its manager process has Airflow
  imported and forks one child per file; the child builds a ``BundleDagBag`` for that file.
  A worker process here imports the same Airflow modules once, then forks one child per file
  and repetition. ``import`` is the exec of the DAG file's module (everything it imports,
  opsflow included, since the manager never imports opsflow); ``parse`` is the whole
  ``BundleDagBag`` for the file (import, validation, bagging).
* **cold**: wall time of a fresh interpreter that imports Airflow's DagBag and parses the
  one file: what a one-off ``python dags/x.py`` or a test process pays.
* **airflow**: ``airflow dags report -o json`` for the folder. It parses every file in one
  process, so the first file it reads also pays for importing opsflow.

A guard runs in each warm child: an audit hook records network, subprocess and SQLite
events, and the modules first imported, while the DAG file's module executes inside
Airflow's importer (the window opens when Airflow's ``SourceFileLoader`` starts executing
that file and closes when it returns; DagBag setup, validation and bagging are outside).
C libraries that open sockets themselves (libpq, hiredis) raise no audit event, so the
client modules that would drive them are checked as imports instead.

A file passes when its warm parse median and Airflow's figure are both under the target,
it yields at least one DAG without import errors, and the guard saw nothing. The exit
status is 1 when any file fails, 2 when the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from benchlib import BenchError

REPO = Path(__file__).resolve().parents[1]
DEMO_STACK = REPO / "include" / "stacks" / "demo.yaml"
DEMO_DAG_FILE = REPO / "dags" / "demo.py"
DEMO_WORKING_DIR = REPO / "include" / "demo"
BUNDLE_NAME = "dags-folder"

TARGET_S = 0.5

# Audit events (https://docs.python.org/3/library/audit_events.html) that mean network,
# database or subprocess work.
FORBIDDEN_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "http.client.connect",
        "urllib.Request",
        "smtplib.connect",
        "ftplib.connect",
        "imaplib.open",
        "poplib.connect",
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "pty.spawn",
        "sqlite3.connect",
        "sqlite3.connect/handle",
        "webbrowser.open",
    }
)

# Client libraries whose connections happen in C (no audit event) or that are heavy; a DAG
# file must not be the first to import them.
HEAVY_MODULES = frozenset(
    {
        "docker",
        "grpc",
        "psycopg",
        "psycopg2",
        "redis",
        "boto3",
        "botocore",
        "aiohttp",
        "httpx",
        "requests",
        "kubernetes",
        "paramiko",
    }
)


def log(message: str) -> None:
    print(f"bench-parse: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Fixture: stack files, DAG files, Airflow environment
# --------------------------------------------------------------------------------------


def stack_names(count: int) -> list[str]:
    return [f"bench{i:02d}" for i in range(1, count + 1)]


def write_fixture(root: Path, names: Iterable[str]) -> tuple[Path, Path]:
    """Copies of the demo stack and of its DAG file, one pair per name."""
    import yaml

    stacks_dir = root / "stacks"
    dags_dir = root / "dags"
    stacks_dir.mkdir()
    dags_dir.mkdir()
    demo = yaml.safe_load(DEMO_STACK.read_text(encoding="utf-8"))
    dag_template = DEMO_DAG_FILE.read_text(encoding="utf-8")
    for name in names:
        stack = dict(demo)
        stack["name"] = name
        stack["runtime"] = {
            **demo["runtime"],
            "project": f"opsflow-{name}",
            "working_dir": str(DEMO_WORKING_DIR),
        }
        (stacks_dir / f"{name}.yaml").write_text(
            yaml.safe_dump(stack, sort_keys=False), encoding="utf-8"
        )
        # dags/demo.py names its stack only as "demo"; the copy keeps its exact shape.
        dag_text = dag_template.replace("demo", name)
        if f'register_stack_dags("{name}", globals())' not in dag_text:
            raise RuntimeError(f"{DEMO_DAG_FILE} no longer has the expected shape")
        (dags_dir / f"{name}.py").write_text(dag_text, encoding="utf-8")
    return stacks_dir, dags_dir


def airflow_env(home: Path, stacks_dir: Path, dags_dir: Path) -> dict[str, str]:
    """The environment scripts/airflow sets, pointed at the temporary home, stacks and DAGs."""
    env = dict(os.environ)
    env.update(
        OPSFLOW_AIRFLOW_HOME=str(home),
        OPSFLOW_STACKS_DIR=str(stacks_dir),
        # Never the caller's database: this benchmark migrates the one it points at.
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
    )
    out = subprocess.run(
        [str(REPO / "scripts" / "airflow"), "--print-env"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    # scripts/airflow always points Airflow at this checkout's dags/; the copies live here.
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_dir)
    return env


def run_checked(argv: list[str], env: Mapping[str, str], what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(
            argv, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
        raise BenchError(f"{what} exited {proc.returncode}:\n{tail}")
    return proc.stdout


# --------------------------------------------------------------------------------------
# Airflow's figure
# --------------------------------------------------------------------------------------


def parse_timedelta(text: str) -> float:
    """Seconds of ``str(timedelta)`` as ``dags report -o json`` prints it (``0:00:00.155901``)."""
    match = re.fullmatch(r"(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", text.strip())
    if not match:
        raise BenchError(f"unexpected duration {text!r} in dags report")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def airflow_report(airflow_bin: Path, env: Mapping[str, str]) -> dict[str, tuple[float, int]]:
    """File name -> (duration s, DAG count) from ``airflow dags report -o json``."""
    out = run_checked(
        [str(airflow_bin), "dags", "report", "-o", "json"], env, "airflow dags report", 180
    )
    rows: list[dict[str, Any]] | None = None
    for line in out.splitlines():
        if line.startswith("["):
            rows = json.loads(line)
    if rows is None:
        raise BenchError(f"no JSON in airflow dags report output:\n{out[-2000:]}")
    return {
        Path(row["file"]).name: (parse_timedelta(str(row["duration"])), int(row["dag_num"]))
        for row in rows
    }


# --------------------------------------------------------------------------------------
# Warm worker: Airflow imported once, one forked child per file and repetition
# --------------------------------------------------------------------------------------


@dataclass
class Guard:
    """Audit hook state of one forked child; only the DAG file's module exec is watched."""

    project_roots: tuple[str, ...]
    active: bool = False
    events: list[str] = field(default_factory=list)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in FORBIDDEN_EVENTS:
            return
        # Environments (Popen, exec, spawn) are left out: they hold secrets.
        shown = tuple(a for a in args if not isinstance(a, Mapping))
        detail = repr(shown)
        if len(detail) > 120:
            detail = detail[:117] + "..."
        self.events.append(f"{event}{detail} at {self.where(sys._getframe(1))}")

    def where(self, frame: FrameType | None) -> str:
        """The deepest frame in this project's code: the line to fix."""
        innermost = frame
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.project_roots):
                return f"{frame.f_code.co_filename}:{frame.f_lineno}"
            frame = frame.f_back
        return innermost.f_code.co_filename if innermost else "?"


def last_exception(stacktrace: str) -> str:
    """The final exception line of a traceback with its continuation lines, on one line."""
    lines = stacktrace.strip().splitlines()
    start = max((i for i, ln in enumerate(lines) if ln and not ln[0].isspace()), default=0)
    return " ".join(ln.strip() for ln in lines[start:])


def measure_in_child(dag_file: Path, dags_dir: Path) -> dict[str, Any]:
    """Parse one DAG file as the DAG processor's child does, guarding the module exec."""
    from importlib.machinery import SourceFileLoader

    from airflow.dag_processing.dagbag import BundleDagBag

    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "client"  # as _parse_file_entrypoint sets it
    target = os.path.realpath(dag_file)
    guard = Guard(project_roots=(str(REPO / "plugins"), str(dags_dir), str(REPO / "dags")))
    window: dict[str, Any] = {}
    sys.addaudithook(guard.hook)
    original = SourceFileLoader.exec_module

    def exec_module(self: Any, module: ModuleType) -> None:
        if os.path.realpath(self.path) != target:
            original(self, module)
            return
        before = set(sys.modules)
        guard.active = True
        start = time.perf_counter()
        try:
            original(self, module)
        finally:
            window["import_s"] = time.perf_counter() - start
            guard.active = False
            window["new_modules"] = set(sys.modules) - before

    SourceFileLoader.exec_module = exec_module  # type: ignore[method-assign]
    start = time.perf_counter()
    bag = BundleDagBag(
        dag_folder=str(dag_file),
        bundle_path=dags_dir,
        bundle_name=BUNDLE_NAME,
        load_op_links=False,
    )
    parse_s = time.perf_counter() - start
    SourceFileLoader.exec_module = original  # type: ignore[method-assign]

    errors = [f"{path}: {last_exception(text)}" for path, text in bag.import_errors.items()]
    if "import_s" not in window:
        errors.append("Airflow did not import the file (safe-mode heuristic skipped it?)")
    new_modules: set[str] = window.get("new_modules", set())
    heavy = sorted(m for m in new_modules if m.partition(".")[0] in HEAVY_MODULES)
    return {
        "import_s": window.get("import_s"),
        "parse_s": parse_s,
        "dags": sorted(bag.dag_ids),
        "errors": errors,
        "events": guard.events,
        "heavy": sorted({m.partition(".")[0] for m in heavy}),
    }


def fork_measure(dag_file: Path, dags_dir: Path) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report through the pipe, never return into the caller
        os.close(read_fd)
        code = 0
        try:
            payload = json.dumps(measure_in_child(dag_file, dags_dir))
        except BaseException as exc:
            payload = json.dumps({"crash": f"{type(exc).__name__}: {exc}"})
            code = 1
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        return {"crash": "the measuring child died without a result"}
    result: dict[str, Any] = json.loads(data)
    return result


def warm_worker(dags_dir: Path, repeats: int, out: Path) -> None:
    # What the DAG processor's manager has imported before it forks a parser child.
    import airflow.dag_processing.processor  # noqa: F401
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.utils.file import iter_airflow_imports

    files = sorted(dags_dir.glob("*.py"))
    with tempfile.TemporaryDirectory() as empty:  # warm the DagBag machinery itself
        BundleDagBag(dag_folder=empty, bundle_path=Path(empty), bundle_name="warmup")
    results: dict[str, list[dict[str, Any]]] = {f.name: [] for f in files}
    for _ in range(repeats):
        for dag_file in files:  # interleaved, so a burst of load spreads over the files
            # The manager pre-imports the airflow modules a file names (parsing_pre_import_modules).
            for module in iter_airflow_imports(str(dag_file)):
                __import__(module)
            results[dag_file.name].append(fork_measure(dag_file, dags_dir))
    # Heavy modules Airflow already imported cannot be seen as a DAG file's first import.
    preloaded = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    out.write_text(json.dumps({"files": results, "preloaded": preloaded}), encoding="utf-8")


def cold_worker(dag_file: Path, dags_dir: Path, out: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(
        dag_folder=str(dag_file), bundle_path=dags_dir, bundle_name=BUNDLE_NAME, load_op_links=False
    )
    out.write_text(json.dumps({"dags": len(bag.dags), "errors": len(bag.import_errors)}))


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


@dataclass
class FileResult:
    name: str
    dags: list[str] = field(default_factory=list)
    import_s: list[float] = field(default_factory=list)
    parse_s: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)
    airflow_s: float | None = None
    airflow_dags: int | None = None
    problems: list[str] = field(default_factory=list)

    def verdict(self) -> bool:
        return not self.problems


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def judge(result: FileResult, target: float) -> None:
    warm = median(result.parse_s)
    if not result.dags:
        result.problems.append("no DAG built")
    if warm is None or warm >= target:
        result.problems.append(f"warm parse median {fmt(warm)} s >= {target} s")
    if result.airflow_s is None:
        result.problems.append("missing from airflow dags report")
    elif result.airflow_s >= target:
        result.problems.append(f"airflow dags report {fmt(result.airflow_s)} s >= {target} s")
    if result.airflow_dags is not None and result.airflow_dags != len(result.dags):
        result.problems.append(
            f"airflow dags report found {result.airflow_dags} DAGs, warm parse {len(result.dags)}"
        )


def print_table(
    results: list[FileResult], repeats: int, cold_repeats: int, preloaded: list[str], target: float
) -> None:
    headers = (
        "file",
        "dags",
        "warm import s",
        "warm parse s",
        "cold s",
        "airflow s",
        "target s",
        "result",
    )
    rows: list[tuple[str, ...]] = []
    for r in results:
        rows.append(
            (
                r.name,
                str(len(r.dags)),
                fmt(median(r.import_s)),
                fmt(median(r.parse_s)),
                fmt(median(r.cold_s)),
                fmt(r.airflow_s),
                f"{target:g}",
                "PASS" if r.verdict() else "FAIL",
            )
        )

    def total(pick: Callable[[FileResult], float | None]) -> str:
        values = [pick(r) for r in results]
        return "-" if any(v is None for v in values) else fmt(sum(v for v in values if v))

    failed = sum(not r.verdict() for r in results)
    rows.append(
        (
            "TOTAL",
            str(sum(len(r.dags) for r in results)),
            total(lambda r: median(r.import_s)),
            total(lambda r: median(r.parse_s)),
            total(lambda r: median(r.cold_s)),
            total(lambda r: r.airflow_s),
            "",
            f"{len(results) - failed}/{len(results)} PASS",
        )
    )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(headers))
    print(line(tuple("-" * w for w in widths)))
    for row in rows[:-1]:
        print(line(row))
    print(line(tuple("-" * w for w in widths)))
    print(line(rows[-1]))
    print()
    print(
        f"medians: warm over {repeats} forked children per file, cold over {cold_repeats} "
        "fresh interpreter(s) per file; airflow = one `airflow dags report` run."
    )
    print(
        "warm import = exec of the DAG file's module in Airflow's importer (opsflow imported "
        "fresh, as in a DAG-processor child); warm parse = the whole BundleDagBag for the file."
    )
    print(
        "cold = wall time of a fresh interpreter (Airflow import included); not judged: the "
        "DAG processor forks parsers from a process that has Airflow imported."
    )
    print(
        "airflow = `dags report` parses all files in one process: the first file read also "
        "pays the opsflow import."
    )
    print(
        "guard window = the DAG file's module exec only (DagBag setup, validation and bagging "
        f"excluded); watched events: {', '.join(sorted(FORBIDDEN_EVENTS))}; first imports of: "
        f"{', '.join(sorted(HEAVY_MODULES - set(preloaded)))} (not observable, Airflow "
        f"imports them first: {', '.join(preloaded) or 'none'})."
    )
    for r in results:
        for problem in r.problems:
            print(f"FAIL {r.name}: {problem}")
    verdict = "PASS" if not failed else f"FAIL ({failed} file(s))"
    print(f"bench-parse: {verdict}: target {target} s per file, no network/DB/subprocess work.")


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def collect_warm(
    results: dict[str, FileResult], python: Path, env: Mapping[str, str], root: Path, repeats: int
) -> list[str]:
    """Fill in the warm figures; returns the heavy modules the guard cannot see."""
    out = root / "warm.json"
    dags_dir = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    argv = [str(python), str(Path(__file__).resolve()), "--worker", "warm"]
    argv += ["--dags-dir", str(dags_dir), "--repeats", str(repeats), "--out", str(out)]
    run_checked(argv, env, "warm worker", 600)
    data = json.loads(out.read_text(encoding="utf-8"))
    samples: dict[str, list[dict[str, Any]]] = data["files"]
    for name, runs in samples.items():
        result = results[name]
        for run in runs:
            if "crash" in run:
                result.problems.append(f"warm child crashed: {run['crash']}")
                continue
            if run["import_s"] is not None:
                result.import_s.append(run["import_s"])
            result.parse_s.append(run["parse_s"])
            result.dags = run["dags"]
            for problem in (
                [f"import error: {e}" for e in run["errors"]]
                + [f"forbidden at import: {e}" for e in run["events"]]
                + [f"heavy module imported: {m}" for m in run["heavy"]]
            ):
                if problem not in result.problems:
                    result.problems.append(problem)
    preloaded: list[str] = data["preloaded"]
    return preloaded


def collect_cold(
    results: dict[str, FileResult], python: Path, env: Mapping[str, str], root: Path, repeats: int
) -> None:
    dags_dir = Path(env["AIRFLOW__CORE__DAGS_FOLDER"])
    out = root / "cold.json"
    for _ in range(repeats):
        for name, result in results.items():
            argv = [str(python), str(Path(__file__).resolve()), "--worker", "cold"]
            argv += ["--file", str(dags_dir / name), "--dags-dir", str(dags_dir), "--out", str(out)]
            start = time.perf_counter()
            run_checked(argv, env, f"cold parse of {name}", 120)
            result.cold_s.append(time.perf_counter() - start)
            cold = json.loads(out.read_text(encoding="utf-8"))
            if cold["errors"] or not cold["dags"]:
                problem = f"cold parse: {cold['dags']} DAGs, {cold['errors']} import errors"
                if problem not in result.problems:
                    result.problems.append(problem)


def run_benchmark(args: argparse.Namespace) -> int:
    python = Path(sys.executable)
    airflow_bin = python.with_name("airflow")
    if not airflow_bin.exists():
        raise BenchError(f"{airflow_bin} not found; run `make setup`")
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="opsflow-bench-parse-"))
    try:
        names = stack_names(args.stacks)
        stacks_dir, dags_dir = write_fixture(root, names)
        env = airflow_env(root / "airflow-home", stacks_dir, dags_dir)
        log(f"{len(names)} stack files and DAG files in {root}")

        phase = time.perf_counter()
        run_checked([str(airflow_bin), "db", "migrate"], env, "airflow db migrate", 300)
        log(f"airflow db migrate (SQLite) in {time.perf_counter() - phase:.1f} s")

        results = {f"{name}.py": FileResult(f"{name}.py") for name in names}
        phase = time.perf_counter()
        for file_name, (duration, dag_num) in airflow_report(airflow_bin, env).items():
            if file_name in results:
                results[file_name].airflow_s = duration
                results[file_name].airflow_dags = dag_num
        log(f"airflow dags report in {time.perf_counter() - phase:.1f} s")

        phase = time.perf_counter()
        preloaded = collect_warm(results, python, env, root, args.repeats)
        took = time.perf_counter() - phase
        log(f"warm: {args.repeats} x {len(names)} forked parses in {took:.1f} s")

        phase = time.perf_counter()
        collect_cold(results, python, env, root, args.cold_repeats)
        took = time.perf_counter() - phase
        log(f"cold: {args.cold_repeats} x {len(names)} interpreters in {took:.1f} s")

        ordered = [results[f"{name}.py"] for name in names]
        for result in ordered:
            judge(result, args.target)
        print_table(ordered, args.repeats, args.cold_repeats, preloaded, args.target)
        sys.stdout.flush()
        log(f"finished in {time.perf_counter() - started:.0f} s")
        return 0 if all(r.verdict() for r in ordered) else 1
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stacks", type=int, default=10, help="stack copies (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="warm parses per file (default 5)")
    parser.add_argument(
        "--cold-repeats",
        type=int,
        default=1,
        help="fresh interpreters per file (default 1: each costs ~4 s of Airflow import)",
    )
    parser.add_argument(
        "--target", type=float, default=TARGET_S, help=f"seconds per file (default {TARGET_S})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--worker", choices=["warm", "cold"], help=argparse.SUPPRESS)
    parser.add_argument("--dags-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "warm":
        warm_worker(args.dags_dir, args.repeats, args.out)
        return 0
    if args.worker == "cold":
        cold_worker(args.file, args.dags_dir, args.out)
        return 0
    if args.stacks < 1 or args.repeats < 1 or args.cold_repeats < 0:
        parser.error("--stacks and --repeats must be >= 1, --cold-repeats >= 0")
    try:
        return run_benchmark(args)
    except (BenchError, OSError, subprocess.CalledProcessError) as exc:
        log(f"could not run: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
