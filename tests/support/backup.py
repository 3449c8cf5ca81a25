"""Backup test helpers: the demo's database images, damaged artifacts, manifests, logs.

opsflow.backup is imported inside the helpers: a module being edited there must not stop
every other test from being collected.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from support import REPO_ROOT
from support.services import service_unavailable

if TYPE_CHECKING:
    from datetime import datetime

    from opsflow.backup.context import RunContext
    from opsflow.backup.manifest import Artifact, Manifest, VerificationStatus

# The demo stack's PostgreSQL and Redis images under the tests' own name (TEST_IMAGE_PREFIX),
# never the tags a running demo uses.
DEMO_POSTGRES_IMAGE = "opsflow-test/postgres:15"
DEMO_REDIS_IMAGE = "opsflow-test/redis:7"


class ListLog:
    """A LineLogger keeping every formatted line (to check what reaches the task log)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: Any, /, *args: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))

    def text(self) -> str:
        return "\n".join(self.lines)


def demo_image(tag: str, context: str, timeout: float) -> str:
    """The local image ``tag``, built from docker/<context> when missing (no registry here)."""
    if not shutil.which("docker"):
        service_unavailable("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        service_unavailable("Docker Engine is not running")
    present = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    if present.returncode != 0:
        subprocess.run(
            ["docker", "build", "--network", "host", "-t", tag,
             str(REPO_ROOT / "docker" / context)],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
    return tag


@pytest.fixture(scope="session")
def pg_image() -> str:
    """The demo stack's PostgreSQL image: scratch servers that verify dumps run from it."""
    return demo_image(DEMO_POSTGRES_IMAGE, "postgres", timeout=900)


@pytest.fixture(scope="session")
def redis_image() -> str:
    """The demo stack's Redis image: scratch servers that verify RDB files run from it."""
    return demo_image(DEMO_REDIS_IMAGE, "redis", timeout=600)


def scratch_containers(run: str) -> list[str]:
    """Ids of the scratch containers, running or not, labelled for ``run`` (stack.backup_id)."""
    from opsflow.backup.scratch import SCRATCH_LABEL

    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={SCRATCH_LABEL}={run}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.split()


def flip_byte(data: bytes, index: int | None = None, mask: int = 0xFF) -> bytes:
    """``data`` with one byte XORed with ``mask``: the one at ``index``, else the middle one."""
    changed = bytearray(data)
    changed[len(changed) // 2 if index is None else index] ^= mask
    return bytes(changed)


def retar(artifact: Path, change: str, payload: bytes) -> bytes:
    """The tar inside a .tar.zst artifact, with member ``change``'s content replaced."""
    raw = subprocess.run(["zstd", "-d", "-c", str(artifact)], capture_output=True, check=True)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw.stdout), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            if member.name == change:
                member.size = len(payload)
                dst.addfile(member, io.BytesIO(payload))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def consistent_artifact(ctx: RunContext, path: Path, content: bytes, level: int) -> Artifact:
    """``content`` compressed to ``path`` with a matching manifest entry: damage that only
    reading the content (verify, restore) can find, not the sha256 check."""

    def writer(sink: IO[bytes]) -> None:
        sink.write(content)

    return ctx.pipeline.compress_to_file(path, level=level, writer=writer)


def demo_manifest(
    backup_id: str,
    started: datetime,
    run_id: str,
    artifacts: list[Artifact],
    verification: VerificationStatus | None,
) -> Manifest:
    """A scheduled backup of stack "demo": one postgres source per artifact, named after the
    artifact's first dotted part, each verified with ``verification`` (None: unverified)."""
    from opsflow.backup.manifest import Manifest, SourceBackup, Verification

    stamp = started.isoformat()
    return Manifest(
        backup_id=backup_id,
        stack="demo",
        trigger="scheduled",
        run_id=run_id,
        started_at=stamp,
        ended_at=stamp,
        sources=[
            SourceBackup(
                name=Path(artifact.name).name.split(".")[0],
                kind="postgres",
                artifacts=[artifact],
                started_at=stamp,
                ended_at=stamp,
                verification=Verification(status=verification) if verification else None,
            )
            for artifact in artifacts
        ],
    )
