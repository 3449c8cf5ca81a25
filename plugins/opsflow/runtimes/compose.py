"""The Docker Compose v2 runtime: every Compose-specific thing the workflows need.

Command building is pure (so dry runs print exactly what a real run executes and tests can
check it); running goes through :class:`~opsflow.runtimes.process.ProcessRunner`. Every
command names the project explicitly so two stacks never touch each other's containers,
and the release version reaches Compose only as an environment variable that the compose
file interpolates into image tags, never as text spliced into a command. Facts about
images and containers come from the Docker Engine API (``runtimes/engine.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsflow.runtimes.base import ContainerState, FetchStep, Runtime, RuntimeFailure
from opsflow.runtimes.compose_probe import ComposeContext, compose_base_argv, parse_ps
from opsflow.runtimes.process import LineLogger, ProcessRunner
from opsflow.stack.loader import resolve_working_dir
from opsflow.stack.model import ComposeRuntime, Stack, check_version
from opsflow.stack.safety import run_time_problem

STEPS = ("fetch", "migrate", "start", "stop", "resume", "down")
CAPTURE_TIMEOUT = 60.0

__all__ = ["ComposeProject", "compose_base_argv", "parse_ps"]


@dataclass
class ComposeProject(Runtime):
    """Where and how to call ``docker compose`` for one stack."""

    stack: Stack
    working_dir: Path

    kind = "compose"

    @classmethod
    def for_stack(cls, stack: Stack, stacks_dir: Path | None = None) -> ComposeProject:
        if not isinstance(stack.runtime, ComposeRuntime):
            raise RuntimeFailure(f"stack {stack.name} does not use the compose runtime")
        return cls(stack, resolve_working_dir(stack, stacks_dir))

    @property
    def runtime(self) -> ComposeRuntime:
        assert isinstance(self.stack.runtime, ComposeRuntime)
        return self.stack.runtime

    @property
    def name(self) -> str:
        return self.runtime.project

    @property
    def fetch_step(self) -> FetchStep:
        return "build" if self.runtime.images == "build" else "pull"

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
        return self.build_argv() if self.fetch_step == "build" else self.pull_argv()

    def migrate_argv(self) -> list[str] | None:
        """A one-off container of the release image; Compose starts (and waits for) its deps."""
        migration = self.stack.migration
        if migration is None:
            return None
        return [*self.base_argv(), "run", "--rm", "--no-TTY", migration.service,
                *migration.command]  # fmt: skip

    def up_argv(self) -> list[str]:
        # --no-build/--pull never: start exactly the images the earlier step produced.
        return [*self.base_argv(), "up", "--detach", "--no-build", "--pull", "never",
                "--remove-orphans"]  # fmt: skip

    def stop_argv(self, services: Sequence[str] = ()) -> list[str]:
        return [*self.base_argv(), "stop", *services]

    def start_argv(self, services: Sequence[str]) -> list[str]:
        """Start stopped containers as they were (no recreate, whatever release they run)."""
        return [*self.base_argv(), "start", *services]

    def down_argv(self, volumes: bool = False) -> list[str]:
        return [*self.base_argv(), "down", "--remove-orphans", *(["--volumes"] if volumes else [])]

    def ps_argv(self) -> list[str]:
        return [*self.base_argv(), "ps", "--all", "--format", "json"]

    def config_argv(self) -> list[str]:
        return [*self.base_argv(), "config", "--format", "json"]

    def describe(self, step: str) -> str:
        variable = self.runtime.version_variable
        return {
            "fetch": f"`docker compose {self.fetch_step}` of the images, tagged "
            f"`{variable}=<version>`",
            "start": "`docker compose up --detach --no-build --pull never` with the release's "
            "image tags",
            "stop": "`docker compose stop` of the services",
            "resume": "`docker compose start` of the services, as they were",
            "down": "`docker compose down --remove-orphans` (volumes kept): every container "
            "of the running release stops and is removed",
        }.get(step, f"`docker compose` {step}")

    def commands(self, step: str, version: str, services: Sequence[str] = ()) -> list[list[str]]:
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        check_version(version)
        argv: list[str] | None
        if step == "fetch":
            argv = self.fetch_argv()
        elif step == "migrate":
            argv = self.migrate_argv()
        elif step == "start":
            argv = self.up_argv()
        elif step == "stop":
            argv = self.stop_argv(services)
        elif step == "down":
            argv = self.down_argv()
        else:
            argv = self.start_argv(services)
        return [argv] if argv else []

    # ------------------------------------------------------------------ running

    def runner(self, version: str, log: LineLogger) -> ProcessRunner:
        return ProcessRunner(log=log, env=self.env(version), cwd=self.working_dir)

    def run_argv(
        self, argv: Sequence[str], version: str, log: LineLogger, *, timeout: float | None = None
    ) -> float:
        """One command with the release's variables, in its own process group (a killed
        task ends it: ``runtimes.process.terminate_started``)."""
        return self.runner(version, log).run(argv, timeout=timeout).seconds

    def down_migrate(self, new_version: str, previous_version: str, log: LineLogger) -> None:
        """Run the stack's down-migration in a one-off container of the new release image
        (only it knows how to undo its own migrations)."""
        migration = self.stack.migration
        if migration is None or not migration.down_command:
            raise RuntimeFailure(f"stack {self.stack.name} declares no down-migration")
        command = [
            part.replace("{previous_version}", check_version(previous_version))
            for part in migration.down_command
        ]
        argv = [*self.base_argv(), "run", "--rm", "--no-TTY", migration.service, *command]
        self.run_argv(argv, new_version, log, timeout=migration.timeout.total_seconds())

    def pullable(self, reference: str, log: LineLogger) -> bool:
        """Whether the registry has ``reference``: the engine that will pull it asks for
        the manifest only (``runtimes.engine.registry_manifest``); nothing is downloaded."""
        from opsflow.runtimes.engine import registry_manifest

        try:
            digest = registry_manifest(reference)
        except LookupError as error:
            log.info("%s is not pullable: %s", reference, error)
            return False
        log.info("%s is in its registry (%s)", reference, digest or "no digest given")
        return True

    def _capture(self, argv: list[str], version: str) -> str:
        completed = subprocess.run(
            argv,
            cwd=self.working_dir,
            env={**os.environ, **self.env(version)},
            capture_output=True,
            text=True,
            timeout=CAPTURE_TIMEOUT,
            check=True,
        )
        return completed.stdout

    # ------------------------------------------------------------------ facts

    def status(self, version: str) -> list[dict[str, Any]]:
        """Containers of the project as ``docker compose ps`` reports them."""
        return parse_ps(self._capture(self.ps_argv(), version))

    def config(self, version: str) -> dict[str, Any]:
        """The fully resolved compose model (healthchecks, images, ports)."""
        parsed: dict[str, Any] = json.loads(self._capture(self.config_argv(), version))
        return parsed

    def images(self, version: str) -> dict[str, str]:
        services = self.config(version).get("services", {})
        # A service with only a build section gets Compose's default name.
        return {
            name: str(spec.get("image") or f"{self.name}-{name}") for name, spec in services.items()
        }

    def image_facts(self, references: Sequence[str]) -> dict[str, dict[str, Any]]:
        from opsflow.runtimes.engine import image_facts

        return image_facts(list(references))

    def tag_image(self, image_id: str, reference: str) -> None:
        from opsflow.runtimes.engine import tag_image

        tag_image(image_id, reference)

    def pin_images(self, images: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Re-tag each reference to the recorded image id where it points elsewhere."""
        lines = []
        facts = self.image_facts(sorted({str(fact["image"]) for fact in images.values()}))
        for service, fact in sorted(images.items()):
            reference, image_id = str(fact["image"]), str(fact["id"])
            if facts[reference]["id"] == image_id:
                continue
            try:
                self.tag_image(image_id, reference)
            except Exception as error:
                raise RuntimeFailure(
                    f"cannot put back image {reference} ({image_id[:19]}) of {service}: {error}"
                ) from error
            lines.append(f"re-tagged {reference} -> {image_id[:19]}")
        return lines

    def missing_build_inputs(self, version: str) -> list[str]:
        services = self.config(version).get("services", {})
        return [
            f"{name}: {spec['build'].get('context')}"
            for name, spec in services.items()
            if spec.get("build") and not Path(str(spec["build"].get("context"))).is_dir()
        ]

    def config_paths(self) -> list[tuple[str, Path]]:
        """Compose files, env file and the stack's listed config paths, by archive name. The
        stack file is opsflow's description of the stack, not its config: a rollback never
        rewrites it."""
        paths = [(f"compose/{name}", self.working_dir / name) for name in self.runtime.files]
        if self.runtime.env_file:
            env = self.runtime.env_file
            # An absolute env file (a replica's, outside the checkout) is named by its path.
            paths.append((f"compose/{env.lstrip('/')}", self.working_dir / env))
        for listed in self.stack.backup.sources.files:
            paths.append((f"config/{listed.lstrip('/')}", self.host_path(listed)))
        return paths

    def host_path(self, listed: str) -> Path:
        return Path(listed) if Path(listed).is_absolute() else self.working_dir / listed

    def clear_interrupted_start(self) -> list[str]:
        from opsflow.runtimes.engine import remove_recreate_leftovers

        return [
            f"removed {name}: left under Compose's temporary name by an interrupted recreate"
            for name in remove_recreate_leftovers(self.name)
        ]

    def prepare_config(self, *, dry_run: bool = False) -> list[str]:
        """Copy each missing ``runtime.config_from_examples`` file from its example, as
        the system's guide has the operator do (``cp config.example.yaml config.yaml``),
        with the example's mode. An existing file is the operator's and is kept as it is
        (a link would make a race lose, not overwrite); a missing example is an error
        naming both paths, and so is a target whose directory now leads into a system
        directory."""
        lines = []
        for index, item in enumerate(self.runtime.config_from_examples):
            where = f"runtime.config_from_examples[{index}]"
            target, example = self.working_dir / item.file, self.working_dir / item.example
            if target.exists() or target.is_symlink():
                lines.append(f"{item.file}: exists, kept as it is")
                continue
            # The file is written where its directory leads; the example is read where
            # it leads, links and all.
            written = str(Path(os.path.realpath(target.parent)) / target.name)
            for key, problem in (
                ("file", run_time_problem(target, written)),
                ("example", run_time_problem(example)),
            ):
                if problem is not None:
                    raise RuntimeFailure(f"{where}.{key}: refused: {problem}")
            if not example.is_file():
                raise RuntimeFailure(
                    f"{where}: {target} is missing and so is its example {example}: "
                    f"nothing to create it from"
                )
            if dry_run:
                lines.append(f"{item.file}: missing, would be created from {item.example}")
                continue
            mode = stat.S_IMODE(example.stat().st_mode)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copyfile(example, tmp)
            try:
                tmp.chmod(mode)
                os.link(tmp, target)  # never replaces a file that appeared meanwhile
            except FileExistsError:
                lines.append(f"{item.file}: appeared meanwhile, kept as it is")
                continue
            finally:
                tmp.unlink(missing_ok=True)
            lines.append(f"{item.file}: created from {item.example} (mode {mode:o})")
        return lines

    def unhealthy_window(self, version: str, services: Sequence[str] | None = None) -> float:
        from opsflow.runtimes.compose_window import compose_unhealthy_window

        return compose_unhealthy_window(self.config(version), services)

    def running(self) -> list[ContainerState]:
        from opsflow.runtimes.engine import project_containers

        return project_containers(self.name)

    def context(self) -> ComposeContext:
        return ComposeContext(
            project=self.name,
            working_dir=str(self.working_dir),
            files=list(self.runtime.files),
            env_file=self.runtime.env_file,
        )

    # ------------------------------------------------------------------ data

    def service_image(self, service: str, version: str) -> str | None:
        return self.images(version).get(service)

    def data_dir(self, service: str, target: str, version: str) -> Path:
        from opsflow.runtimes.engine import volume_mountpoint

        config = self.config(version)
        spec = config.get("services", {}).get(service)
        if spec is None:
            raise RuntimeFailure(f"{self.stack.name}: no compose service {service!r}")
        for mount in spec.get("volumes", []):
            if mount.get("target") != target:
                continue
            if mount.get("type") == "bind":
                return Path(mount["source"])
            volume = config.get("volumes", {}).get(mount.get("source"), {})
            name = volume.get("name") or f"{self.name}_{mount.get('source')}"
            path = volume_mountpoint(name)
            if path:
                return path
        raise RuntimeFailure(f"{self.stack.name}: service {service} has no {target} volume")
