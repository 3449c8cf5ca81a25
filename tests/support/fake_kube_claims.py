"""The pods opsflow runs on a stack's claims, in the fake cluster: the container "runs" as a
real local Python process (isolated, without site-packages), with the claim's mount path
mapped to a host directory that stands for the claim, and a receiver's port to a free local
port the fake's port-forward reaches.

The program, its arguments and its environment are the ones the product put in the pod's
spec, unchanged but for the mount path, the port and the interpreter: what the fake cannot
show is a real kubelet mounting a real volume as the writers' user.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from opsflow.runtimes.kubernetes_claim_pods import CLAIM_ENV, MOUNT, ROLE_LABEL
from opsflow.runtimes.kubernetes_restore import PORT, RECEIVER
from opsflow.runtimes.kubernetes_restore import ROLE as RESTORE
from support.fake_kube_api import FakeKubeApi
from support.services import free_port

FAKE_CLAIM_POD_IMAGE = "docker.io/library/python:3.12-slim-bookworm"  # the runtime's default


def fake_claim_pod_runner(
    claims: Mapping[str, Path], api: FakeKubeApi, namespace: str
) -> Callable[[list[str], dict[str, str]], tuple[int, str]]:
    """A job handler for claim pods; ``claims`` maps each claim to its host directory."""

    def run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        assert argv[:2] == ["python3", "-c"] and argv[3] == MOUNT, argv[:2]
        claim = env[CLAIM_ENV]
        args = [str(claims[claim]), *argv[4:]]
        if argv[2] == RECEIVER:
            assert args[-1] == str(PORT)
            args[-1] = str(port := free_port())
            api.route_port(namespace, {ROLE_LABEL: RESTORE}, PORT, "127.0.0.1", port)
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", argv[2], *args],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    return run
