"""Read stack files into :class:`~opsflow.stack.model.Stack` with errors a person can act on.

A bad file raises :class:`StackFileError` naming the file, each field path and the bad
value; callers decide whether that breaks one DAG file (DAG parsing) or a whole command.

Files are read at DAG-parse time, so a hostile or broken file must fail fast and small: the
size, the nesting depth and the number of values after YAML aliases are expanded are
limited before any Python object is built (a "billion laughs" file is a few hundred bytes
of aliases), and every message is bounded in length.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from opsflow.errors import OpsflowError
from opsflow.stack import overlay
from opsflow.stack.model import AirflowMaintenance, Stack
from opsflow.stack.safety import stack_path_problems

STACKS_DIR_ENV = "OPSFLOW_STACKS_DIR"
MAINTENANCE_FILE_ENV = "OPSFLOW_AIRFLOW_MAINTENANCE"
_REPO_ROOT = Path(__file__).resolve().parents[3]

MAX_FILE_BYTES = 1 << 20
"""Largest stack file read (1 MiB; the shipped ones are under 10 kB)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists, counted through aliases."""
MAX_NODES = 20_000
"""Most YAML values (scalars, lists, mappings), also once every alias is expanded (the
shipped files have under 700)."""
MAX_PROBLEMS = 20
"""Problems listed in one error; the rest are counted."""
MAX_PROBLEM_CHARS = 400
"""Longest problem line; longer ones are cut."""


def _clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StackFileError(OpsflowError, ValueError):
    """A stack file that cannot be used; the message lists every problem found.

    At most :data:`MAX_PROBLEMS` lines of at most :data:`MAX_PROBLEM_CHARS` characters each
    are kept, so a file with a million bad values still gives a readable import error.
    """

    def __init__(
        self, path: Path, problems: list[str], unlisted: int = 0, bases: tuple[Path, ...] = ()
    ) -> None:
        self.path = path
        self.bases = bases
        kept = [_clip(p) for p in problems[:MAX_PROBLEMS]]
        unlisted += max(0, len(problems) - MAX_PROBLEMS)
        if unlisted:
            kept.append(f"... and {unlisted} more problems")
        self.problems = kept
        lines = "\n".join(f"  - {p}" for p in kept)
        chain = " -> ".join(_clip(str(base), 1000) for base in bases)
        extends = f" (extends {chain})" if bases else ""
        super().__init__(f"invalid stack file {_clip(str(path), 1000)}{extends}:\n{lines}")


def stacks_dir() -> Path:
    """``$OPSFLOW_STACKS_DIR`` or ``include/stacks`` of this checkout."""
    configured = os.environ.get(STACKS_DIR_ENV)
    return Path(configured) if configured else _REPO_ROOT / "include" / "stacks"


def stack_path(name: str, directory: Path | None = None) -> Path:
    return (directory or stacks_dir()) / f"{name}.yaml"


class _LimitExceeded(yaml.YAMLError):
    """The document is too deep or expands to too many values; ``mark`` says where."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark

    def __str__(self) -> str:
        where = f" (line {self.mark.line + 1}, column {self.mark.column + 1})" if self.mark else ""
        return f"{self.message}{where}"


class _LimitedComposer(yaml.composer.Composer):
    """Composer that stops at :data:`MAX_DEPTH` levels (it recurses per level) and at
    :data:`MAX_NODES` values, so neither a deep nor a huge file is composed to the end."""

    _depth = 0
    _nodes = 0
    check_event: Callable[..., bool]  # from the parser it is mixed with
    peek_event: Callable[[], Any]

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _LimitExceeded(f"more than {MAX_NODES} values", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitExceeded(
                    f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


class _UniqueKeyConstructor(yaml.constructor.SafeConstructor):
    """Safe constructor that refuses duplicate keys, which plain YAML resolves silently."""

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


class _PythonLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _LimitedComposer,
    _UniqueKeyConstructor,
    yaml.resolver.Resolver,
):
    """The pure-Python safe loader with the limits and the duplicate-key check."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _LimitedComposer.__init__(self)
        _UniqueKeyConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


def _make_loader() -> Any:
    """The loader class: libyaml's parser for the events when PyYAML has it (about five
    times faster), composed and constructed in Python all the same (libyaml's own composer
    recurses in C without a depth limit)."""
    try:
        from yaml.cyaml import CParser  # type: ignore[attr-defined]
    except ImportError:
        return _PythonLoader

    class _CLoader(_LimitedComposer, CParser, _UniqueKeyConstructor, yaml.resolver.Resolver):  # type: ignore[misc, valid-type]
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _LimitedComposer.__init__(self)
            _UniqueKeyConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    return _CLoader


_StackLoader = _make_loader()


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_NODES` values or
    :data:`MAX_DEPTH` levels, or that contains itself, before anything is constructed.

    The composed graph shares the node of an anchor between its aliases, so this walk
    memoises each node's expanded size and height and costs one visit per distinct node.
    """
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        known = sizes.get(key)
        if known is None:
            if key in active:
                raise _LimitExceeded("an alias refers to a value that contains it", node.start_mark)
            if depth > MAX_DEPTH:
                raise _LimitExceeded(
                    f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                    node.start_mark,
                )
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            active.add(key)
            size, height = 1, 1
            for child in children:
                child_size, child_height = visit(child, depth + 1)
                size += child_size
                height = max(height, child_height + 1)
                if size > MAX_NODES:
                    raise _LimitExceeded(
                        f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
                        node.start_mark,
                    )
            active.discard(key)
            known = sizes[key] = (size, height)
        if depth + known[1] - 1 > MAX_DEPTH:
            raise _LimitExceeded(
                f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                node.start_mark,
            )
        return known

    total, _height = visit(root, 1)
    if total > MAX_NODES:
        raise _LimitExceeded(f"more than {MAX_NODES} values", root.start_mark)


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


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 4, 8, 8, 8
_REPR.maxdict, _REPR.maxstring, _REPR.maxother = 8, 300, 300


def _short_repr(value: Any) -> str:
    """``repr`` whose cost and length are bounded (values may share aliased structure)."""
    return _REPR.repr(value)


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
    message = _clip(message, 300)
    redundant = (
        error["type"] == "missing"
        or (isinstance(value, str) and len(value) < 1000 and repr(value) in message)
        or (error["type"] == "value_error" and isinstance(value, dict))
    )
    shown = "" if redundant else f" (got {_short_repr(value)})"
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
        errors = exc.errors(include_url=False)
        problems = [_describe(e, data) for e in errors[:MAX_PROBLEMS]]
        raise StackFileError(path, problems, len(errors) - len(problems)) from None


def parse_stack(data: Any, path: Path) -> Stack:
    """Validate already-loaded YAML data; ``path`` is for messages and the name check."""
    stack = _validate(Stack, data, path)
    if stack.name != path.stem:
        raise StackFileError(
            path, [f"name: must equal the file name {path.stem!r} (got {stack.name!r})"]
        )
    problems = stack_path_problems(stack, path.parent)
    if problems:
        raise StackFileError(path, problems)
    return stack


def _read_text(path: Path) -> str:
    """The file as text: at most :data:`MAX_FILE_BYTES`, UTF-8 (an error names the offset)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise StackFileError(
                path, [f"(top level): the file is {size} bytes, over the {MAX_FILE_BYTES} limit"]
            )
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise StackFileError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise StackFileError(
            path, [f"(top level): the file is over the {MAX_FILE_BYTES} bytes limit"]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise StackFileError(
            path,
            [
                f"(top level): not UTF-8: byte 0x{data[exc.start]:02x} at byte offset "
                f"{exc.start} (line {line}) is {exc.reason}"
            ],
        ) from None


def _read_yaml(path: Path) -> Any:
    return _parse_yaml(_read_text(path), path)


def _parse_yaml(text: str, path: Path) -> Any:
    loader = _StackLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _LimitExceeded as exc:
        raise StackFileError(path, [f"(top level): {exc}"]) from None
    except yaml.YAMLError as exc:
        raise StackFileError(path, [f"not valid YAML: {exc}"]) from None
    except RecursionError:
        raise StackFileError(path, ["(top level): nested too deeply"]) from None
    finally:
        loader.dispose()


def _read_document(path: Path, chain: tuple[Path, ...] = ()) -> tuple[Any, tuple[Path, ...]]:
    """The file's YAML data, merged over the files it ``extends``; and those files."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        return data, ()
    try:
        base_file = overlay.base_path(data, path)
    except overlay.OverlayProblem as exc:
        raise StackFileError(path, [str(exc)]) from None
    if base_file is None:
        return data, ()
    chain = (*chain, path.resolve())
    if base_file in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_file))
        raise StackFileError(path, [f"extends: the files extend each other: {cycle}"])
    if len(chain) >= overlay.MAX_CHAIN:
        raise StackFileError(
            path, [f"extends: more than {overlay.MAX_CHAIN} files in one chain of extends"]
        )
    try:
        base, bases = _read_document(base_file, chain)
    except StackFileError as exc:
        problems = [f"extends {exc.path}: {problem}" for problem in exc.problems]
        raise StackFileError(path, problems, bases=exc.bases) from None
    if not isinstance(base, dict):
        raise StackFileError(path, [f"extends {base_file}: the file is not a mapping"])
    return overlay.apply(base, base_file, data, path), (base_file, *bases)


def load_stack_file(path: Path) -> Stack:
    data, bases = _read_document(path)
    try:
        return parse_stack(data, path)
    except StackFileError as exc:
        if not bases:
            raise
        raise StackFileError(path, exc.problems, bases=bases) from None


def stack_source(path: Path) -> bytes:
    """What a run keeps of the stack file: its bytes, or for an overlay the merged
    document, so the files it extends cannot change under a running run either."""
    data, bases = _read_document(path)
    if not bases:
        return path.read_bytes()
    header = f"# {path.name} merged over {', '.join(str(b) for b in bases)}\n"
    return (header + yaml.safe_dump(data, sort_keys=False)).encode("utf-8")


def parse_stack_text(text: str, path: Path) -> Stack:
    """A stack file's content read elsewhere (a run's snapshot), judged as the file at
    ``path``: its name, messages and relative paths are those of ``path``."""
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise StackFileError(path, [f"(top level): larger than {MAX_FILE_BYTES} bytes"])
    return parse_stack(_parse_yaml(text, path), path)


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
    """The runtime's working dir (compose project dir, manifests dir), relative paths taken
    from the stack file's directory."""
    working = Path(stack.runtime.working_dir)
    if not working.is_absolute():
        working = (directory or stacks_dir()) / working
    return working.resolve()
