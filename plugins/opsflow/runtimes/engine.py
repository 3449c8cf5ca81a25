"""Docker Engine API access through the docker provider's hook.

The Compose CLI is the right tool to act on a project; asking the engine what an image *is*
(its id and digests, which a later rollback needs) is a structured query, so it goes to
the API instead of parsing CLI output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from opsflow.runtimes.base import ContainerState
from opsflow.runtimes.process import scrub_secrets

DEFAULT_DOCKER_URL = "unix://var/run/docker.sock"


def docker_url() -> str:
    return os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_URL)


def image_facts(references: list[str]) -> dict[str, dict[str, Any]]:
    """Id, repo digests and creation time of each local image; ``None`` id if it is absent."""
    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.errors import ImageNotFound

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    facts: dict[str, dict[str, Any]] = {}
    for reference in references:
        try:
            image = client.inspect_image(reference)
        except ImageNotFound:
            facts[reference] = {"id": None}
            continue
        facts[reference] = {
            "id": image["Id"],
            "digests": image.get("RepoDigests") or [],
            "created": image.get("Created"),
        }
    return facts


def volume_mountpoint(name: str) -> Path | None:
    """Host path of a named volume's data, or ``None`` when the volume does not exist."""
    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.errors import NotFound

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    try:
        return Path(client.inspect_volume(name)["Mountpoint"])
    except NotFound:
        return None


def split_reference(reference: str) -> tuple[str, str]:
    """``registry:5000/repo:tag`` -> (``registry:5000/repo``, ``tag``); no tag means latest."""
    repository, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, "latest"
    return repository, tag


def registry_manifest(reference: str) -> str | None:
    """The digest a registry holds for ``reference`` (``None`` when it names none), asked
    through the engine, which downloads nothing; ``LookupError`` with the engine's reason
    when the registry does not have it or cannot be reached.

    The engine is what pulls, so its own registry settings decide, as they will for the
    pull: a plain-HTTP registry it trusts (127.0.0.0/8 by default, ``insecure-registries``)
    is reachable here too, where ``docker manifest inspect`` would insist on TLS.
    """
    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.errors import APIError

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    try:
        found = client.inspect_distribution(reference)
    except APIError as error:
        raise LookupError(scrub_secrets(str(error.explanation or error))) from None
    return str((found.get("Descriptor") or {}).get("digest") or "") or None


def tag_image(image_id: str, reference: str) -> None:
    """Point ``reference`` at the image ``image_id`` (which must exist locally)."""
    from airflow.providers.docker.hooks.docker import DockerHook

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    repository, tag = split_reference(reference)
    if not client.tag(image_id, repository, tag, force=True):
        raise RuntimeError(f"docker refused to tag {image_id} as {reference}")


PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"


def project_containers(project: str) -> list[ContainerState]:
    """Every long-running container of a Compose project (one-off ``run`` containers of a
    migration are left out), in any state: what really runs, whatever the tasks reported."""
    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.errors import NotFound

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    rows = client.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    found = []
    for row in rows:
        try:
            info = client.inspect_container(row["Id"])
        except NotFound:
            continue  # removed between the listing and the inspect
        state = state_from_inspect(info)
        if state is not None:
            found.append(state)
    return sorted(found, key=lambda c: (c.service, c.name))


def remove_recreate_leftovers(project: str) -> list[str]:
    """Remove the stopped containers an interrupted ``compose up`` left under Compose's
    temporary name (``<12 hex>_<project>-<service>-<n>``: renamed before their replacement
    was created, removed after it started); the next ``up`` refuses with a name conflict
    while they exist. A running one, or one the engine will not remove, is left alone."""
    import re

    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.errors import APIError, NotFound

    client = DockerHook(docker_conn_id=None, base_url=docker_url()).api_client
    leftover = re.compile(rf"^/?[0-9a-f]{{12}}_{re.escape(project)}-")
    removed = []
    for row in client.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        name = str((row.get("Names") or [""])[0]).lstrip("/")
        if not leftover.match(name) or row.get("State") == "running":
            continue
        try:
            client.remove_container(row["Id"])
        except (APIError, NotFound):
            continue
        removed.append(name)
    return removed


def _moment(value: Any) -> datetime | None:
    """A Docker timestamp; Docker's zero time (never started) is ``None``."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def state_from_inspect(info: Mapping[str, Any]) -> ContainerState | None:
    """A Compose container from ``docker inspect`` (the API's or the CLI's: the same
    JSON); ``None`` for one-off ``run`` containers, which are not the stack's services."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    if str(labels.get(ONEOFF_LABEL, "")).lower() == "true":
        return None
    state = info.get("State") or {}
    health = state.get("Health") or {}
    checks = health.get("Log") or []
    last_check = ""
    if checks:
        output = scrub_secrets(" ".join(str(checks[-1].get("Output", "")).split()))
        last_check = f"exit {checks[-1].get('ExitCode')}" + (f": {output}" if output else "")
    exit_code = state.get("ExitCode")
    return ContainerState(
        service=str(labels.get(SERVICE_LABEL, "")),
        name=str(info.get("Name", "")).lstrip("/"),
        image_id=str(info.get("Image", "")),
        state=str(state.get("Status", "")),
        health=health.get("Status"),
        restarts=int(info.get("RestartCount") or 0),
        container_id=str(info.get("Id", "")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=scrub_secrets(str(state.get("Error") or "")),
        oom_killed=bool(state.get("OOMKilled")),
        created_at=_moment(info.get("Created")),
        started_at=_moment(state.get("StartedAt")),
        last_check=last_check,
    )
