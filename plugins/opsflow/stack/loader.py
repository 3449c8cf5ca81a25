"""Read stack files into :class:`~opsflow.stack.model.Stack` with errors a person can act on.

A bad file raises :class:`StackFileError` naming the file, each field path and the bad
value; callers decide whether that breaks one DAG file (DAG parsing) or a whole command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from opsflow.stack.model import AirflowMaintenance, Stack

STACKS_DIR_ENV = "OPSFLOW_STACKS_DIR"
MAINTENANCE_FILE_ENV = "OPSFLOW_AIRFLOW_MAINTENANCE"
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys, which plain YAML resolves silently."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> tuple[int | str, ...]:
    """Drop what pydantic adds to a location that is not a key of the file.

    Discriminated unions add the tag (``services[0].health[0].tcp.port``) and wrapped
    validators a ``function-...`` element; walking the data tells a tag from a real key.
    """
    kept: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        kept.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(kept)


def _describe(error: Any, data: Any) -> str:
    loc = _clean_loc(tuple(error["loc"]), data)
    message = error["msg"]
    value = error.get("input")
    if error["type"] == "stack_rule":
        # A cross-field rule names its own path and value (see model.stack_rule_error).
        ctx = error["ctx"]
        loc = (*loc, *([ctx["path"]] if ctx["path"] else []))
        value = ctx["value"]
    message = message.removeprefix("Value error, ")
    # No "(got ...)" when it adds nothing: a missing key, a message that already quotes
    # the value, or a rule about a whole mapping (the message says what is wrong with it).
    redundant = (
        error["type"] == "missing"
        or (isinstance(value, str) and repr(value) in message)
        or (error["type"] == "value_error" and isinstance(value, dict))
    )
    shown = "" if redundant else f" (got {value!r})"
    if len(shown) > 200:
        shown = shown[:197] + "...)"
    return f"{_field_path(loc)}: {message}{shown}"


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: Path) -> M:
    if data is None:
        raise StackFileError(path, ["(top level): the file is empty"])
    if not isinstance(data, dict):
        raise StackFileError(path, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StackFileError(path, [_describe(e, data) for e in exc.errors()]) from None


def parse_stack(data: Any, path: Path) -> Stack:
    """Validate already-loaded YAML data; ``path`` is for messages and the name check."""
    stack = _validate(Stack, data, path)
    if stack.name != path.stem:
        raise StackFileError(
            path, [f"name: must equal the file name {path.stem!r} (got {stack.name!r})"]
        )
    return stack


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise StackFileError(path, [f"not valid YAML: {exc}"]) from None


def load_stack_file(path: Path) -> Stack:
    return parse_stack(_read_yaml(path), path)


def maintenance_path() -> Path:
    """``$OPSFLOW_AIRFLOW_MAINTENANCE`` or ``include/airflow-maintenance.yaml``."""
    configured = os.environ.get(MAINTENANCE_FILE_ENV)
    return Path(configured) if configured else _REPO_ROOT / "include" / "airflow-maintenance.yaml"


def load_airflow_maintenance(path: Path | None = None) -> AirflowMaintenance:
    """Settings of Airflow's own housekeeping; defaults when the file does not exist."""
    path = path or maintenance_path()
    if not path.exists():
        return AirflowMaintenance()
    return _validate(AirflowMaintenance, _read_yaml(path), path)


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
