"""The log cleanup pod in the fake cluster: its container "runs" as a real local Python
process, with the claim's mount path mapped to a host directory that stands for the claim.

The program, its arguments and the engine zip are the ones the product put in the pod's
spec, unchanged but for the mount path and the interpreter: what the fake cannot show is a
real kubelet mounting a real volume as the writers' user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from opsflow.runtimes.kubernetes_logs import MOUNT

FAKE_CLEANUP_IMAGE = "docker.io/library/python:3.12-slim-bookworm"  # the runtime's default


def fake_cleanup_runner(claim_dir: Path) -> Callable[[list[str], dict[str, str]], tuple[int, str]]:
    """A job handler for cleanup pods whose claim is ``claim_dir`` on this host."""

    def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        assert argv[0] == "python3" and argv[3] == MOUNT, argv[:2]
        # Isolated, without site-packages: the engine zip in the spec must be all it needs.
        local = [sys.executable, "-I", "-S", *argv[1:3], str(claim_dir), *argv[4:]]
        done = subprocess.run(
            local, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        return done.returncode, done.stdout + done.stderr

    return run
