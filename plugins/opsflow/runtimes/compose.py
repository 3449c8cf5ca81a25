"""The Docker Compose v2 runtime: the exact argv of every step of a release.

Command building is pure (so dry runs print exactly what a real run executes and tests can
check it); running goes through :class:`~opsflow.runtimes.process.ProcessRunner`. Every
command names the project explicitly so two stacks never touch each other's containers,
and the release version reaches Compose only as an environment variable that the compose
file interpolates into image tags, never as text spliced into a command.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsflow.runtimes.process import LineLogger, ProcessRunner
from opsflow.stack.loader import resolve_working_dir
from opsflow.stack.model import VERSION_PATTERN, ComposeRuntime, Stack

_VERSION = re.compile(VERSION_PATTERN)


def check_version(version: str) -> str:
    """Refuse anything but letters, digits, ``.``, ``_``, ``-`` (the trigger form's rule)."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"invalid version {version!r}: use letters, digits, '.', '_' and '-' only")
    return version


def compose_base_argv(
    project: str, working_dir: Path | str, files: Sequence[str], env_file: str | None
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


@dataclass(frozen=True)
class ComposeProject:
    """Where and how to call ``docker compose`` for one stack."""

    stack: Stack
    working_dir: Path

    @classmethod
    def for_stack(cls, stack: Stack, stacks_dir: Path | None = None) -> ComposeProject:
        return cls(stack, resolve_working_dir(stack, stacks_dir))

    @property
    def runtime(self) -> ComposeRuntime:
        assert isinstance(self.stack.runtime, ComposeRuntime)
        return self.stack.runtime

    @property
    def name(self) -> str:
        return self.runtime.project

    # ------------------------------------------------------------------ argv builders

    def base_argv(self) -> list[str]:
        return compose_base_argv(
            self.name, self.working_dir, self.runtime.files, self.runtime.env_file
        )

    def env(self, version: str) -> dict[str, str]:
        """Variables the compose file interpolates: the release version pins image tags."""
        return {self.runtime.version_variable: check_version(version)}

    def build_argv(self) -> list[str]:
        return [*self.base_argv(), "build"]

    def pull_argv(self) -> list[str]:
        return [*self.base_argv(), "pull", "--quiet"]

    def fetch_argv(self) -> list[str]:
        """Build or pull, as the stack file says its images are obtained."""
        return self.build_argv() if self.runtime.images == "build" else self.pull_argv()

    def migrate_argv(self) -> list[str] | None:
        """A one-off container of the release image; Compose starts (and waits for) its deps."""
        migration = self.stack.migration
        if migration is None:
            return None
        return [
            *self.base_argv(),
            "run",
            "--rm",
            "--no-TTY",
            migration.service,
            *migration.command,
        ]

    def up_argv(self) -> list[str]:
        # --no-build/--pull never: start exactly the images the earlier step produced.
        return [
            *self.base_argv(),
            "up",
            "--detach",
            "--no-build",
            "--pull",
            "never",
            "--remove-orphans",
        ]

    def stop_argv(self, services: list[str] | None = None) -> list[str]:
        return [*self.base_argv(), "stop", *(services or [])]

    def start_argv(self, services: list[str]) -> list[str]:
        """Start stopped containers as they were (no recreate, whatever release they run)."""
        return [*self.base_argv(), "start", *services]

    def down_argv(self, volumes: bool = False) -> list[str]:
        return [*self.base_argv(), "down", "--remove-orphans", *(["--volumes"] if volumes else [])]

    def ps_argv(self) -> list[str]:
        return [*self.base_argv(), "ps", "--all", "--format", "json"]

    def config_argv(self) -> list[str]:
        return [*self.base_argv(), "config", "--format", "json"]

    # ------------------------------------------------------------------ running

    def runner(self, version: str, log: LineLogger) -> ProcessRunner:
        return ProcessRunner(log=log, env=self.env(version), cwd=self.working_dir)

    def _capture(self, argv: list[str], version: str) -> str:
        import os

        completed = subprocess.run(
            argv,
            cwd=self.working_dir,
            env={**os.environ, **self.env(version)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return completed.stdout

    def status(self, version: str) -> list[dict[str, Any]]:
        """Containers of the project as ``docker compose ps`` reports them."""
        return parse_ps(self._capture(self.ps_argv(), version))

    def config(self, version: str) -> dict[str, Any]:
        """The fully resolved compose model (healthchecks, images, ports)."""
        parsed: dict[str, Any] = json.loads(self._capture(self.config_argv(), version))
        return parsed

    def images(self, version: str) -> dict[str, str]:
        """Image reference of every service, as the compose file resolves it for ``version``."""
        services = self.config(version).get("services", {})
        # A service with only a build section gets Compose's default name.
        return {
            name: str(spec.get("image") or f"{self.name}-{name}") for name, spec in services.items()
        }


def parse_ps(output: str) -> list[dict[str, Any]]:
    """``ps --format json`` prints one JSON object per line (v2.21+) or one array (older)."""
    output = output.strip()
    if not output:
        return []
    if output.startswith("["):
        rows: list[dict[str, Any]] = json.loads(output)
        return rows
    return [json.loads(line) for line in output.splitlines() if line.strip()]
