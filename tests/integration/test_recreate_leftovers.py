"""A start after an interrupted ``compose up`` against the real Docker Engine.

Compose recreates a container by renaming the old one to ``<12 hex>_<name>``, creating the
new one, starting it and removing the old one; killed in between, it leaves the renamed one,
and the next ``up`` fails with a name conflict. The containers here are made the way Compose
labels them (project ``opsflow-leftovers-<worker>``) from the local base image, and removed
in ``finally`` whatever the outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from opsflow.runtimes.engine import remove_recreate_leftovers
from support.services import service_unavailable

PROJECT = f"opsflow-leftovers-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
IMAGE = "debian:bookworm-slim"

pytestmark = pytest.mark.integration


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def create(name: str, *, project: str = PROJECT, running: bool = False) -> str:
    labels = [f"com.docker.compose.project={project}", "com.docker.compose.service=api"]
    argv = ["create", "--name", name, *(a for label in labels for a in ("--label", label))]
    container = docker(*argv, IMAGE, "sleep", "infinity")
    if running:
        docker("start", container)
    return container


@pytest.fixture
def names() -> Iterator[list[str]]:
    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "info"], capture_output=True).returncode
    ):
        service_unavailable("Docker Engine is not running")
    made: list[str] = []
    try:
        yield made
    finally:
        for name in made:
            subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


def exists(name: str) -> bool:
    return subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0


def test_only_the_stopped_leftovers_of_the_project_are_removed(names: list[str]) -> None:
    prefix = uuid.uuid4().hex[:12]
    current = f"{PROJECT}-api-1"
    leftover = f"{prefix}_{current}"
    running = f"{uuid.uuid4().hex[:12]}_{PROJECT}-worker-1"
    other = f"{prefix}_opsflow-someone-else-api-1"
    names += [current, leftover, running, other]
    create(current, running=True)
    create(leftover)
    create(running, running=True)  # not stopped: not Compose's leftover, left alone
    create(other, project="opsflow-someone-else")

    assert remove_recreate_leftovers(PROJECT) == [leftover]
    assert not exists(leftover)
    assert all(exists(name) for name in (current, running, other))
    assert remove_recreate_leftovers(PROJECT) == []  # a second start finds nothing
