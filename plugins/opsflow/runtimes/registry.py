"""Which runtime operates a stack, and which probe context came back from the triggerer.

The one place that knows every runtime: a new runtime is registered here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opsflow.runtimes.base import Runtime, RuntimeContext, RuntimeFailure
from opsflow.stack.model import Stack


def runtime_for(stack: Stack, stacks_dir: Path | None = None) -> Runtime:
    """The runtime that operates ``stack``."""
    kind = stack.runtime.kind
    if kind == "compose":
        from opsflow.runtimes.compose import ComposeProject

        return ComposeProject.for_stack(stack, stacks_dir)
    if kind == "kubernetes":
        from opsflow.runtimes.kubernetes import KubernetesCluster

        return KubernetesCluster.for_stack(stack, stacks_dir)
    raise RuntimeFailure(f"stack {stack.name}: no runtime operates kind {kind!r}")


def runtime_context(data: Mapping[str, Any]) -> RuntimeContext:
    """A probe context back from its plain-data form (in the triggerer)."""
    kind = data.get("kind", "compose")
    if kind == "compose":
        from opsflow.runtimes.compose_probe import ComposeContext

        return ComposeContext.from_dict(data)
    if kind == "kubernetes":
        from opsflow.runtimes.kubernetes_probe import KubernetesContext

        return KubernetesContext.from_dict(data)
    raise ValueError(f"unknown runtime kind in a probe context: {kind!r}")
