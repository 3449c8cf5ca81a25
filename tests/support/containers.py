"""Small throwaway Compose projects on the real engine, for tests of what the runtime
reports about containers."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opsflow.runtimes.compose_probe import ComposeContext
from support.services import service_unavailable


def small_image() -> str:
    """``debian:bookworm-slim`` if present, else a busybox image built here from scratch."""
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode
    ):
        service_unavailable("Docker Engine is not reachable")
    image = "debian:bookworm-slim"
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return image
    busybox = shutil.which("busybox")
    if busybox is None:
        service_unavailable("neither debian:bookworm-slim nor busybox-static is available")
    assert busybox
    image = "opsflow-test-busybox:latest"
    context = Path(os.environ.get("TMPDIR", "/tmp")) / f"opsflow-busybox-{uuid.uuid4().hex[:8]}"
    context.mkdir()
    try:
        shutil.copy(busybox, context / "busybox")
        (context / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        )
        subprocess.run(["docker", "build", "-q", "-t", image, str(context)], check=True,
                       capture_output=True, timeout=120)  # fmt: skip
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return image


@contextmanager
def compose_sandbox(workdir: Path, compose_file: str, name: str) -> Iterator[ComposeContext]:
    """A Compose project of its own name (``opsflow-<name>-<random>``) whose services use
    :func:`small_image` as ``{image}``; created empty, taken down with its volumes after."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        service_unavailable("Docker Compose v2 is not installed")
    (workdir / "compose.yml").write_text(compose_file.format(image=small_image()))
    context = ComposeContext(
        project=f"opsflow-{name}-{uuid.uuid4().hex[:8]}",
        working_dir=str(workdir),
        files=["compose.yml"],
    )
    try:
        yield context
    finally:
        subprocess.run([*context.base_argv(), "down", "-v", "-t", "0"], capture_output=True,
                       timeout=120, check=False)  # fmt: skip
