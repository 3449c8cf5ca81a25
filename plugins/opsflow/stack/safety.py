"""Which host paths a stack may touch and which addresses a health check may probe.

A stack file names directories opsflow deletes files in (log roots), writes into (backup
``local_dir``) and copies and writes back (config files, which a rollback restores). A stack
may only name what it owns: its compose working dir, its compose project's named volumes,
and the roots the operator allows in one place, ``$OPSFLOW_ALLOWED_ROOTS``. System
directories are never touched, whatever the allow-list says, except beneath an allowed root.
Symlinks are resolved before any rule is applied, at load time and again right before the
log cleanup engine and the files backup touch a path.

No Airflow and no pydantic imports: the loader (at DAG-parse time), the log cleanup engine
and the files backup share this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from opsflow.errors import OpsflowError

if TYPE_CHECKING:
    from opsflow.stack.model import Stack

ALLOWED_ROOTS_ENV = "OPSFLOW_ALLOWED_ROOTS"
# Where opsflow's own logs and the workers' backup volume live (docker-compose.airflow.yml).
DEFAULT_ALLOWED_ROOTS = ("/var/log/opsflow", "/var/backups/opsflow")

# Never touched, nor anything inside them unless it lies beneath an allowed root. A path
# that contains one of them (``/var`` contains ``/var/lib``) is refused outright.
SYSTEM_DIRS = tuple(
    PurePosixPath(p)
    for p in (
        "/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/root", "/run", "/sbin", "/sys",
        "/usr", "/var/backups", "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/run",
        "/var/spool",
    )
)  # fmt: skip
_ROOT = PurePosixPath("/")
_TOP_LEVEL_LIB = re.compile(r"lib\w*")  # /lib, /lib32, /lib64, /libx32
# Docker's default data root: a named volume's data is ``<this>/<name>/_data``.
DOCKER_VOLUMES_DIR = PurePosixPath("/var/lib/docker/volumes")
NEEDS_WORKING_DIR = "a relative path needs the compose runtime's working dir"


class PathRefused(OpsflowError, ValueError):
    """The operator's allow-list itself is unusable."""


# --------------------------------------------------------------------------- paths


def inside(path: PurePosixPath, base: PurePosixPath) -> bool:
    """``path`` is ``base`` or lies below it (both absolute and normalised)."""
    return path == base or base in path.parents


def resolve(path: str | os.PathLike[str]) -> PurePosixPath:
    """Absolute path with every symlink resolved (missing tails are kept as written)."""
    return PurePosixPath(os.path.realpath(path))


def _system_dir_of(path: PurePosixPath) -> PurePosixPath | None:
    """The system directory ``path`` lies in (or is), if any."""
    for system in SYSTEM_DIRS:
        if inside(path, system):
            return system
    if len(path.parts) > 1 and _TOP_LEVEL_LIB.fullmatch(path.parts[1]):
        return PurePosixPath("/", path.parts[1])
    return None


def _contained_system_dir(path: PurePosixPath) -> PurePosixPath | None:
    """A system directory that ``path`` is or contains (``/var`` contains ``/var/lib``)."""
    if path == _ROOT:
        return _ROOT
    for system in SYSTEM_DIRS:
        if inside(system, path):
            return system
    if len(path.parts) == 2 and _TOP_LEVEL_LIB.fullmatch(path.parts[1]):
        return path
    return None


def system_problem(real: PurePosixPath, allowed: Sequence[PurePosixPath]) -> str | None:
    """Why the resolved path ``real`` is off limits as a system path, or ``None``."""
    contained = _contained_system_dir(real)
    if contained == _ROOT and real == _ROOT:
        return "is the root directory; system directories are never touched"
    if contained is not None:
        what = "is" if contained == real else "contains"
        return f"{what} the system directory {contained}; system directories are never touched"
    system = _system_dir_of(real)
    if system is not None and not any(inside(real, root) for root in allowed):
        return (
            f"lies in the system directory {system}; allow a directory beneath it in "
            f"{ALLOWED_ROOTS_ENV} if it really belongs to the stack"
        )
    return None


def allowed_roots(environ: Mapping[str, str] | None = None) -> tuple[PurePosixPath, ...]:
    """The operator's allow-list: ``$OPSFLOW_ALLOWED_ROOTS`` (colon-separated absolute
    paths; set but empty allows nothing), or :data:`DEFAULT_ALLOWED_ROOTS` when unset.

    Entries are resolved; one that is or contains a system directory (``/``, ``/var``,
    ``/etc``) is refused, since allowing it would undo the rule it is an exception to.
    """
    raw = (os.environ if environ is None else environ).get(ALLOWED_ROOTS_ENV)
    entries = DEFAULT_ALLOWED_ROOTS if raw is None else [e for e in raw.split(":") if e.strip()]
    roots: list[PurePosixPath] = []
    for entry in entries:
        entry = entry.strip()
        given = PurePosixPath(entry)
        if not given.is_absolute() or ".." in given.parts:
            raise PathRefused(
                f"{ALLOWED_ROOTS_ENV}: each entry must be an absolute path without '..' "
                f"(got {entry!r})"
            )
        real = resolve(entry)
        contained = _contained_system_dir(real)
        if contained is not None:
            via = f"resolves to {real}, which " if str(real) != entry.rstrip("/") else ""
            raise PathRefused(
                f"{ALLOWED_ROOTS_ENV}: {via}is or contains the system directory {contained}; "
                f"allow only directories beneath it (got {entry!r})"
            )
        roots.append(real)
    return tuple(roots)


def _volume_data_dir(path: PurePosixPath) -> PurePosixPath | None:
    """``/var/lib/docker/volumes/<name>/_data`` when ``path`` lies in a volume's data."""
    if not inside(path, DOCKER_VOLUMES_DIR):
        return None
    rest = path.parts[len(DOCKER_VOLUMES_DIR.parts) :]
    if len(rest) >= 2 and rest[1] == "_data":
        return DOCKER_VOLUMES_DIR / rest[0] / "_data"
    return None


def run_time_problem(path: str | os.PathLike[str], real: str | None = None) -> str | None:
    """Why ``path`` must not be touched now, or ``None``: the run-time half of the rules.

    ``real`` is where the path really is (e.g. the path of an already opened descriptor);
    by default symlinks are resolved now. The stack's ownership was checked when the stack
    was loaded; this refuses what became a system path since, such as a log root replaced
    by a symlink to ``/``. A named volume's data dir (under Docker's ``/var/lib``) is
    accepted when the path was asked for inside that volume and still lies in it.
    """
    requested = PurePosixPath(os.path.abspath(path))  # noqa: PTH100 - normalises ".."
    resolved = PurePosixPath(real) if real is not None else resolve(path)
    try:
        allowed = list(allowed_roots())
    except PathRefused as exc:
        return str(exc)
    volume = _volume_data_dir(requested)
    if volume is not None and inside(resolved, volume):
        allowed.append(volume)
    problem = system_problem(resolved, allowed)
    if problem is None:
        return None
    if resolved != requested:
        return f"{requested} resolves to {resolved}, which {problem}"
    return f"{requested} {problem}"


def stack_path_problems(stack: Stack, stack_dir: Path) -> list[str]:
    """Every host path of ``stack`` that lies outside what it owns, one line each.

    ``stack_dir`` is the stack file's directory (relative working dirs start there).
    """
    from opsflow.stack.model import ComposeRuntime, KubernetesRuntime

    try:
        allowed = allowed_roots()
    except PathRefused as exc:
        return [str(exc)]
    problems: list[str] = []
    owned: list[PurePosixPath] = list(allowed)
    working: PurePosixPath | None = None
    runtime = stack.runtime
    given = Path(runtime.working_dir)
    working = resolve(given if given.is_absolute() else stack_dir / given)
    problem = system_problem(working, allowed)
    if problem is not None:
        problems.append(_line("runtime.working_dir", runtime.working_dir, working, problem, given))
        working = None
    else:
        owned.insert(0, working)
    owner = _owner_text(stack, working, allowed)

    def check(field: str, raw: str, path: Path) -> None:
        real = resolve(path)
        problem = system_problem(real, allowed)
        if problem is None and not any(inside(real, root) for root in owned):
            problem = f"is outside what the stack owns ({owner})"
        if problem is not None:
            problems.append(_line(field, raw, real, problem, path))

    def under_working(raw: str) -> Path | None:
        if Path(raw).is_absolute():
            return Path(raw)
        return Path(working) / raw if working is not None else None

    if isinstance(runtime, ComposeRuntime) and working is not None:
        for index, name in enumerate(runtime.files):
            check(f"runtime.files[{index}]", name, Path(working) / name)
        if runtime.env_file:
            env_path = under_working(runtime.env_file)
            assert env_path is not None
            check("runtime.env_file", runtime.env_file, env_path)
        for index, item in enumerate(runtime.config_from_examples):
            field = f"runtime.config_from_examples[{index}]"
            check(f"{field}.file", item.file, Path(working) / item.file)
            check(f"{field}.example", item.example, Path(working) / item.example)
    if isinstance(runtime, KubernetesRuntime) and working is not None:
        for index, name in enumerate(runtime.manifests):
            check(f"runtime.manifests[{index}]", name, Path(working) / name)
    if stack.backup.local_dir:
        check("backup.local_dir", stack.backup.local_dir, Path(stack.backup.local_dir))
    for index, listed in enumerate(stack.backup.sources.files):
        field = f"backup.sources.files[{index}]"
        file_path = under_working(listed)
        if file_path is None:
            problems.append(f"{field}: {NEEDS_WORKING_DIR} (got {listed!r})")
        else:
            check(field, listed, file_path)
    for index, root in enumerate(stack.logs.roots):
        if root.path is None:
            continue  # a volume or claim root: the model checked its name and subdir
        field = f"logs.roots[{index}].path"
        base = under_working(root.path)
        if base is None:
            problems.append(f"{field}: {NEEDS_WORKING_DIR} (got {root.path!r})")
        else:
            check(field, root.path, base / root.subdir if root.subdir else base)
    return problems


def _line(field: str, raw: str, real: PurePosixPath, problem: str, given: Path) -> str:
    via = "" if str(real) == os.path.normpath(given) else f"resolves to {real}, which "
    return f"{field}: {via}{problem} (got {raw!r})"


def _owner_text(
    stack: Stack, working: PurePosixPath | None, allowed: Sequence[PurePosixPath]
) -> str:
    from opsflow.stack.model import ComposeRuntime

    parts = []
    if working is not None:
        parts.append(f"its working dir {working}")
    if isinstance(stack.runtime, ComposeRuntime):
        parts.append(f"its volumes {stack.runtime.project}_*")
    listed = ", ".join(str(root) for root in allowed) or "none"
    parts.append(f"the roots of {ALLOWED_ROOTS_ENV}: {listed}")
    return "; ".join(parts)
