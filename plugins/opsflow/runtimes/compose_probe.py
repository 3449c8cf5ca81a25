"""What the Compose runtime can tell about a service from the triggerer: its containers'
state and Docker's own health verdict.

This is the runtime's half of a container check. It travels to the triggerer as plain data
(:meth:`ComposeContext.to_dict`), so it imports nothing heavy and builds its argv exactly
as the runtime does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsflow.runtimes.base import ContainerState

log = logging.getLogger(__name__)

KIND = "compose"
CONFIG_TIMEOUT = 60.0
_DETAIL_LIMIT = 300


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


@dataclass(frozen=True)
class ComposeContext:
    """What ``docker compose`` needs to find a project; travels to the triggerer as a dict."""

    project: str
    working_dir: str
    files: list[str] = field(default_factory=lambda: ["docker-compose.yml"])
    env_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "project": self.project,
            "working_dir": self.working_dir,
            "files": list(self.files),
            "env_file": self.env_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComposeContext:
        unknown = set(data) - {"kind", "project", "working_dir", "files", "env_file"}
        if unknown:
            raise ValueError(f"unknown compose context keys: {sorted(unknown)}")
        if data.get("kind", KIND) != KIND:
            raise ValueError(f"not a compose context: kind {data.get('kind')!r}")
        project = data.get("project")
        working_dir = data.get("working_dir")
        if not isinstance(project, str) or not project:
            raise ValueError(f"compose context needs a project name, got {project!r}")
        if not isinstance(working_dir, str) or not working_dir:
            raise ValueError(f"compose context needs a working_dir, got {working_dir!r}")
        files = data.get("files") or ["docker-compose.yml"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError(f"compose context files must be a list of strings, got {files!r}")
        env_file = data.get("env_file")
        if env_file is not None and not isinstance(env_file, str):
            raise ValueError(f"compose context env_file must be a string, got {env_file!r}")
        return cls(project=project, working_dir=working_dir, files=files, env_file=env_file)

    def base_argv(self, *, with_files: bool = True) -> list[str]:
        """``docker compose`` bound to the project, as the runtime builds it.

        Without files only the project name is passed: enough for ``ps``, which finds
        containers by label, and it does not fail on files that need unset variables.
        """
        if not with_files:
            return ["docker", "compose", "--project-name", self.project]
        return compose_base_argv(self.project, self.working_dir, self.files, self.env_file)

    def read_config(self, env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """``docker compose config --format json`` of the project, or None (with a warning).

        ``env`` adds variables the compose file interpolates (e.g. the release version).
        """
        argv = [*self.base_argv(), "config", "--format", "json"]
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=CONFIG_TIMEOUT,
                check=False,
                cwd=self.working_dir,
                env={**os.environ, **(env or {})},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("Cannot read the compose config of %s: %s", self.project, exc)
            return None
        if completed.returncode != 0:
            lines = completed.stderr.strip().splitlines()
            log.warning(
                "docker compose config failed for %s (exit %s): %s",
                self.project,
                completed.returncode,
                lines[-1] if lines else "",
            )
            return None
        try:
            config = json.loads(completed.stdout)
        except ValueError as exc:
            log.warning("docker compose config of %s is not JSON: %s", self.project, exc)
            return None
        return config if isinstance(config, dict) else None

    def unhealthy_window(
        self, env: Mapping[str, str] | None = None, services: Collection[str] | None = None
    ) -> float | None:
        """Docker's unhealthy window over ``services``; None when the config is unreadable."""
        from opsflow.runtimes.compose_window import compose_unhealthy_window

        config = self.read_config(env)
        return None if config is None else compose_unhealthy_window(config, services)

    async def rollouts(self) -> list[Any]:
        return []  # Compose has no rollout of its own: containers are replaced in place

    async def containers(self) -> list[ContainerState]:
        """Every long-running container of the project, from ``docker inspect``; empty
        (with a warning) when the engine cannot be asked: no evidence is no verdict."""
        from opsflow.runtimes.engine import PROJECT_LABEL, state_from_inspect

        listing = ["docker", "ps", "--all", "--quiet", "--no-trunc",
                   "--filter", f"label={PROJECT_LABEL}={self.project}"]  # fmt: skip
        code, out, err = await run(listing)
        if code != 0:
            log.warning("Cannot list the containers of %s: %s", self.project, _clip(err))
            return []
        ids = out.split()
        if not ids:
            return []
        # A container removed between the two calls makes inspect exit 1 after printing
        # the others.
        _code, out, err = await run(["docker", "inspect", *ids])
        try:
            infos = json.loads(out or "[]")
        except ValueError:
            log.warning("Cannot inspect the containers of %s: %s", self.project, _clip(err))
            return []
        states = [state_from_inspect(info) for info in infos if isinstance(info, dict)]
        return sorted((s for s in states if s is not None), key=lambda s: (s.service, s.name))

    async def published(self, service: str, port: int) -> tuple[str, int]:
        """Where a running container of ``service`` publishes ``port``/tcp (``docker
        port``); a wildcard binding is reached on the loopback address."""
        from opsflow.runtimes.engine import PROJECT_LABEL, SERVICE_LABEL

        listing = ["docker", "ps", "--quiet", "--filter", f"label={PROJECT_LABEL}={self.project}",
                   "--filter", f"label={SERVICE_LABEL}={service}"]  # fmt: skip
        code, out, err = await run(listing)
        if code != 0:
            raise LookupError(_clip(f"{service}:{port}: docker ps failed ({code}): {err}"))
        running = out.split()
        if not running:
            raise LookupError(f"{service}:{port}: no running container of {service!r} in "
                              f"project {self.project!r}")  # fmt: skip
        code, out, err = await run(["docker", "port", running[0], f"{port}/tcp"])
        bindings = out.split()
        if code != 0 or not bindings:
            raise LookupError(_clip(f"{service}:{port} is not published on the host: "
                                    f"{err.strip() or 'no binding'}"))  # fmt: skip
        host, _, host_port = bindings[0].rpartition(":")
        host = host.strip("[]")
        wildcard = host in ("", "0.0.0.0", "::")  # noqa: S104 - read, not bound
        return ("127.0.0.1" if wildcard else host), int(host_port)

    async def last_output(self, container: str) -> str:
        """The last line a container wrote (the error a crash loop repeats), or ''; it goes
        into alerts, so what looks like a secret is masked."""
        from opsflow.runtimes.process import scrub_secrets

        code, out, err = await run(["docker", "logs", "--tail", "5", container])
        lines = [line for line in (out + "\n" + err).splitlines() if line.strip()]
        return _clip(scrub_secrets(lines[-1])) if code == 0 and lines else ""

    async def probe_service(self, service: str) -> tuple[bool, str]:
        """Healthy, or running when its container has no healthcheck; else why not."""
        argv = [*self.base_argv(with_files=False), "ps", "--all", "--format", "json"]
        code, out, err = await run(argv, cwd=self.working_dir)
        if code != 0:
            lines = (err or out).strip().splitlines()
            return False, _clip(f"docker compose ps failed ({code}): {lines[0] if lines else ''}")
        rows = [row for row in parse_ps(out) if row.get("Service") == service]
        if not rows:
            return False, (
                f"not running: no container for service {service!r} in project {self.project!r}"
            )
        outcomes = [await _describe_container(row) for row in rows]
        failing = [text for ok, text in outcomes if not ok]
        if failing:
            return False, _clip("; ".join(failing))
        return True, _clip("; ".join(text for _ok, text in outcomes))


def compose_base_argv(
    project: str, working_dir: Path | str, files: list[str] | tuple[str, ...], env_file: str | None
) -> list[str]:
    """``docker compose`` bound to one project; relative file names resolve in working_dir."""
    directory = Path(working_dir)
    argv = ["docker", "compose", "--project-name", project]
    argv += ["--project-directory", str(directory)]
    for file in files:
        argv += ["--file", str(directory / file)]
    if env_file:
        argv += ["--env-file", str(directory / env_file)]
    return argv


def parse_ps(output: str) -> list[dict[str, Any]]:
    """``docker compose ps --format json`` prints one object per line (v2.21+) or an array."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
        return [row for row in rows if isinstance(row, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def run(argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
    """Run a short command without blocking the event loop; killed when cancelled."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd if cwd and Path(cwd).is_dir() else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    code = process.returncode or 0
    return code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")


async def _last_health_output(container: str) -> str:
    code, out, _err = await run(
        ["docker", "inspect", "--format", "{{json .State.Health}}", container]
    )
    if code != 0:
        return ""
    try:
        health = json.loads(out)
    except ValueError:
        return ""
    logs = (health or {}).get("Log") or []
    if not logs:
        return ""
    last = logs[-1]
    output = _clip(str(last.get("Output", "")))
    return f"exit {last.get('ExitCode')}: {output}" if output else f"exit {last.get('ExitCode')}"


async def _describe_container(row: Mapping[str, Any]) -> tuple[bool, str]:
    container = str(row.get("Name") or row.get("ID") or "?")
    state = str(row.get("State") or "").lower()
    health = str(row.get("Health") or "").lower()
    if state != "running":
        status = row.get("Status") or state or "unknown state"
        return False, f"{container} not running ({status})"
    if health in ("", "none"):
        return True, f"{container} running (no healthcheck)"
    if health == "healthy":
        return True, f"{container} healthy"
    last = await _last_health_output(container)
    return False, f"{container} {health}" + (f", last check {last}" if last else "")
