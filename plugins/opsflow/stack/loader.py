"""Read stack files into :class:`~opsflow.stack.model.Stack` with errors a person can act on.

A bad file raises :class:`StackFileError` naming the file, each field path and the bad
value; callers decide whether that breaks one DAG file (DAG parsing) or a whole command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from opsflow.stack.model import Stack

STACKS_DIR_ENV = "OPSFLOW_STACKS_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[3]


class StackFileError(ValueError):
    """A stack file that cannot be used; the message lists every problem found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack file {path}:\n{lines}")


def stacks_dir() -> Path:
    """``$OPSFLOW_STACKS_DIR`` or ``include/stacks`` of this checkout."""
    configured = os.environ.get(STACKS_DIR_ENV)
    return Path(configured) if configured else _REPO_ROOT / "include" / "stacks"


def stack_path(name: str, directory: Path | None = None) -> Path:
    return (directory or stacks_dir()) / f"{name}.yaml"


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: Any) -> str:
    # Discriminated unions add the tag as a path element (e.g. "http"); it is not a key.
    loc = tuple(
        part
        for part in error["loc"]
        if not (isinstance(part, str) and part.startswith("function-"))
    )
    message = error["msg"]
    value = error.get("input")
    shown = "" if error["type"] == "missing" else f" (got {value!r})"
    if len(shown) > 200:
        shown = shown[:197] + "...)"
    return f"{_field_path(loc)}: {message}{shown}"


def parse_stack(data: Any, path: Path) -> Stack:
    """Validate already-loaded YAML data; ``path`` is for messages and the name check."""
    if not isinstance(data, dict):
        raise StackFileError(path, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        stack = Stack.model_validate(data)
    except ValidationError as exc:
        raise StackFileError(path, [_describe(e) for e in exc.errors()]) from None
    if stack.name != path.stem:
        raise StackFileError(
            path, [f"name: must equal the file name {path.stem!r} (got {stack.name!r})"]
        )
    return stack


def load_stack_file(path: Path) -> Stack:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StackFileError(path, [f"not valid YAML: {exc}"]) from None
    return parse_stack(data, path)


def load_stack(name: str, directory: Path | None = None) -> Stack:
    return load_stack_file(stack_path(name, directory))


def stack_names(directory: Path | None = None) -> list[str]:
    """Names of the stack files present, valid or not."""
    return sorted(p.stem for p in (directory or stacks_dir()).glob("*.yaml"))


def resolve_working_dir(stack: Stack, directory: Path | None = None) -> Path:
    """The compose working dir, relative paths taken from the stack file's directory."""
    from opsflow.stack.model import ComposeRuntime

    if not isinstance(stack.runtime, ComposeRuntime):
        raise TypeError(f"stack {stack.name} does not use the compose runtime")
    working = Path(stack.runtime.working_dir)
    if not working.is_absolute():
        working = (directory or stacks_dir()) / working
    return working.resolve()
