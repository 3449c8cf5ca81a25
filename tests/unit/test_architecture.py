"""The layers of ``plugins/opsflow`` point one way, and no module imports itself in a circle.

The graph is built from the source with ``ast``: every ``import`` of an opsflow module, at
module level or inside a function, is an edge. The layer order is the one
``docs/architecture.md`` documents; a test here fails when a lower layer imports a higher
one or an import cycle appears, so the document stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "opsflow"

# Lowest first. A module may import its own layer and any layer below it.
LAYERS: list[set[str]] = [
    {"errors", "paths", "durations", "addresses"},
    {"connections"},
    {"health"},
    {"stack"},
    {"runtimes"},
    {"backup"},
    {"releases", "state"},
    {"logs"},
    {"triggers"},
    {"sensors", "notifiers"},
    {"operators"},
    {"factory"},
]
LAYER_OF = {part: index for index, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every opsflow module ``path`` imports, resolved to a module of the package."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("opsflow")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("opsflow"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports_of(path, name) if target in modules} - {name}
    return edges


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    if part not in LAYER_OF:
        raise AssertionError(f"{module} belongs to no documented layer: add it to LAYERS")
    return LAYER_OF[part]


def test_every_module_belongs_to_a_documented_layer() -> None:
    for module in graph():
        if module != "opsflow":
            layer(module)


def test_no_lower_layer_imports_a_higher_one() -> None:
    wrong = sorted(
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        if module != "opsflow"
        for target in targets
        if layer(target) > layer(module)
    )
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert [" -> ".join(cycle) for cycle in cycles] == []


@pytest.mark.parametrize("name", ["ComposeRuntime", "ComposeProject", "ComposeContext"])
def test_compose_is_named_only_in_runtimes_and_stack(name: str) -> None:
    outside = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if name in path.read_text(encoding="utf-8")
        and path.relative_to(PACKAGE).parts[0] not in ("runtimes", "stack")
    )
    assert outside == []


def test_no_docker_argv_is_built_outside_the_runtimes() -> None:
    outside = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if '["docker"' in path.read_text(encoding="utf-8").replace(" ", "")
        or "'docker'," in path.read_text(encoding="utf-8")
        if path.relative_to(PACKAGE).parts[0] != "runtimes"
    )
    assert outside == []
