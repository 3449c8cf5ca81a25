"""Throwaway servers for restore verification, started as labelled containers.

Every scratch container carries the label ``io.opsflow.scratch=<stack>.<backup id>`` so the
always-run cleanup task of the run can remove whatever a failed or killed task left
behind, without knowing container ids. Ports bind to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from opsflow.backup.manifest import BackupError
from opsflow.runtimes.engine import docker_url

SCRATCH_LABEL = "io.opsflow.scratch"


def scratch_label(stack: str, backup_id: str) -> str:
    return f"{stack}.{backup_id}"


def _client() -> Any:
    from airflow.providers.docker.hooks.docker import DockerHook

    return DockerHook(docker_conn_id=None, base_url=docker_url()).api_client


@dataclass
class ScratchContainer:
    id: str
    name: str
    host: str
    port: int
    password: str = field(default="", repr=False)

    def logs(self, lines: int = 30) -> str:
        raw: bytes = _client().logs(self.id, tail=lines)
        return raw.decode(errors="replace")

    def exit_code(self) -> int | None:
        """``None`` while the container runs; its exit code once it stopped."""
        state = _client().inspect_container(self.id)["State"]
        return None if state.get("Running") else int(state.get("ExitCode", -1))

    def remove(self) -> None:
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            _client().remove_container(self.id, force=True, v=True)


def start_scratch(
    image: str,
    *,
    label: str,
    role: str,
    container_port: int,
    environment: dict[str, str] | None = None,
    command: list[str] | None = None,
    tmpfs: dict[str, str] | None = None,
    binds: dict[str, dict[str, str]] | None = None,
    user: str | None = None,
) -> ScratchContainer:
    """Start ``image`` detached with its port published on 127.0.0.1 at a free port."""
    from docker.errors import APIError, ImageNotFound

    client = _client()
    name = f"opsflow-scratch-{role}-{secrets.token_hex(4)}"
    host_config = client.create_host_config(
        port_bindings={container_port: ("127.0.0.1", None)},
        tmpfs=tmpfs or {},
        binds=binds or {},
        shm_size="256m",
    )
    try:
        created = client.create_container(
            image,
            name=name,
            command=command,
            environment=environment or {},
            labels={SCRATCH_LABEL: label, f"{SCRATCH_LABEL}.role": role},
            ports=[container_port],
            host_config=host_config,
            user=user or "",
        )
        client.start(created["Id"])
    except ImageNotFound:
        raise BackupError(f"scratch {role} server: image {image!r} is not on this host") from None
    except APIError as err:
        raise BackupError(f"scratch {role} server from {image!r}: {err.explanation}") from None
    port = None
    deadline = time.monotonic() + 10
    while port is None and time.monotonic() < deadline:
        bindings = client.inspect_container(created["Id"])["NetworkSettings"]["Ports"]
        published = (bindings or {}).get(f"{container_port}/tcp") or []
        port = int(published[0]["HostPort"]) if published else None
        if port is None:
            time.sleep(0.1)
    if port is None:
        client.remove_container(created["Id"], force=True, v=True)
        raise BackupError(f"scratch {role} server from {image!r}: no published port")
    return ScratchContainer(id=created["Id"], name=name, host="127.0.0.1", port=port)


def remove_scratch(label: str) -> list[str]:
    """Remove every scratch container of one backup run; returns the names removed."""
    from docker.errors import NotFound

    client = _client()
    removed = []
    for container in client.containers(all=True, filters={"label": f"{SCRATCH_LABEL}={label}"}):
        try:
            client.remove_container(container["Id"], force=True, v=True)
        except NotFound:
            continue
        removed.append(container["Names"][0].lstrip("/"))
    return removed
