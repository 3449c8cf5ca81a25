"""The demo stack file moved to a Compose project, api port and image names of its own, so a
copy (an e2e test's, ``make prod-smoke``'s) runs next to a user's ``make demo`` and never
touches its containers, ports or images. The compose file takes the image names from
``DEMO_IMAGE_PREFIX`` and the ports from ``DEMO_*_PORT``; the caller sets those."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "include" / "demo"
DEMO_STACK = REPO / "include" / "stacks" / "demo.yaml"
DEMO_PREFIX = "opsflow-demo"


def prefixed_image(demo_ref: str, prefix: str) -> str:
    """``opsflow-demo/api`` -> ``<prefix>/api``: a demo image name under another prefix."""
    repository, sep, rest = demo_ref.partition("/")
    assert sep and repository == DEMO_PREFIX, f"not a demo image name: {demo_ref!r}"
    return f"{prefix}/{rest}"


def moved_demo_stack(project: str, image_prefix: str, api_port: int) -> dict[str, Any]:
    """The shipped demo stack as a mapping, moved to ``project``, ``image_prefix`` and the
    api on ``api_port`` (its health checks and its log volume follow)."""
    stack: dict[str, Any] = yaml.safe_load(DEMO_STACK.read_text())
    stack["runtime"]["project"] = project
    stack["runtime"]["working_dir"] = str(DEMO_DIR)
    for service in stack["services"]:
        service["image"] = prefixed_image(service["image"], image_prefix)
        for check in service["health"]:
            if check["kind"] == "http":
                check["url"] = check["url"].replace(":18080/", f":{api_port}/")
            if check["kind"] == "tcp":
                check["port"] = api_port
    for root in stack["logs"]["roots"]:
        if root.get("volume") == f"{DEMO_PREFIX}_applogs":
            root["volume"] = f"{project}_applogs"
    return stack
