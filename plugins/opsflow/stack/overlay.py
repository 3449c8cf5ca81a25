"""Stack files that ``extends`` another: staging and production of one system, or one
system on another machine, as a few lines over the shipped file.

The merge works on the plain YAML data, before the model sees it, so the merged document is
validated exactly as a single file would be. Rules (docs/stack-file.md, "extends"):

- mappings merge key by key, the overlay's value winning; ``key: null`` removes the key,
  so the model's default applies again;
- ``services`` merge by ``name``: an overlay entry with a base service's name is merged
  into it (its own lists, e.g. ``health``, replace the base's), other entries are added;
- every other list, and every scalar, replaces the base's value;
- the overlay's ``name`` defaults to its file name; a relative ``working_dir`` of the
  base's runtime and variants stays relative to the base file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXTENDS_KEY = "extends"
MAX_CHAIN = 4
"""Most files in one chain of ``extends`` (an overlay of an overlay of ...)."""


class OverlayProblem(ValueError):
    """Why an overlay cannot be merged; the loader names the files around it."""


def base_path(overlay: Mapping[str, Any], path: Path) -> Path | None:
    """The file ``overlay`` (read from ``path``) extends, or None when it extends none."""
    if EXTENDS_KEY not in overlay:
        return None
    target = overlay[EXTENDS_KEY]
    if not isinstance(target, str) or not target.endswith((".yaml", ".yml")):
        raise OverlayProblem(
            f"{EXTENDS_KEY}: must be the path of a stack file (.yaml), relative to this "
            f"file's directory or absolute (got {target!r})"
        )
    resolved = (path.parent / target).resolve()
    if resolved == path.resolve():
        raise OverlayProblem(f"{EXTENDS_KEY}: a stack file cannot extend itself ({target!r})")
    return resolved


def _merge_services(base: list[Any], overlay: list[Any]) -> list[Any]:
    merged = list(base)
    index = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in overlay:
        name = item.get("name") if isinstance(item, dict) else None
        if name is not None and name in index:
            merged[index[name]] = merge(merged[index[name]], item)
        else:
            merged.append(item)
    return merged


def merge(base: Any, overlay: Any, *, top: bool = False) -> Any:
    """``overlay`` over ``base`` by the rules above (neither is changed)."""
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return overlay
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif top and key == "services" and isinstance(value, list):
            merged[key] = _merge_services(base.get(key) or [], value)
        elif key in merged:
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _rebased_runtime(runtime: Any, base_dir: Path) -> Any:
    if not isinstance(runtime, dict):
        return runtime
    # A Kubernetes runtime's working dir defaults to its stack file's directory.
    working = runtime.get("working_dir", "." if runtime.get("kind") == "kubernetes" else None)
    if not isinstance(working, str) or Path(working).is_absolute():
        return runtime
    return {**runtime, "working_dir": str((base_dir / working).resolve())}


def rebase(base: dict[str, Any], base_file: Path, overlay_file: Path) -> dict[str, Any]:
    """``base`` with the relative ``working_dir`` of its runtime and variants made absolute
    when the overlay lives in another directory: a path means what it meant in the file
    that wrote it."""
    if base_file.parent.resolve() == overlay_file.parent.resolve():
        return base
    rebased = dict(base)
    if "runtime" in base:
        rebased["runtime"] = _rebased_runtime(base["runtime"], base_file.parent)
    if isinstance(base.get("variants"), list):
        rebased["variants"] = [_rebased_runtime(v, base_file.parent) for v in base["variants"]]
    return rebased


def apply(base: dict[str, Any], base_file: Path, overlay: dict[str, Any], path: Path) -> Any:
    """The merged document of ``overlay`` (from ``path``) over ``base`` (from ``base_file``)."""
    own = {k: v for k, v in overlay.items() if k != EXTENDS_KEY}
    own.setdefault("name", path.stem)
    inherited = {k: v for k, v in rebase(base, base_file, path).items() if k != EXTENDS_KEY}
    return merge(inherited, own, top=True)
