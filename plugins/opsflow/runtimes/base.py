"""The runtime seam: what the workflows need from whatever runs a stack.

Compose is one runtime (``runtimes/compose.py``); another is one new module that
implements :class:`Runtime` and a :class:`RuntimeContext`, registered in
``runtimes/registry.py``. Nothing outside ``runtimes/`` knows which
runtime a stack uses: the workflows ask these questions and get plain answers.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from opsflow.connections import Endpoint
from opsflow.errors import OpsflowError

if TYPE_CHECKING:
    from opsflow.runtimes.process import LineLogger
    from opsflow.stack.model import Stack

FetchStep = Literal["build", "pull"]


class RuntimeFailure(OpsflowError):
    """A runtime cannot do what was asked (wrong kind, missing service, failed command)."""


class RuntimeContext(Protocol):
    """The part of a runtime that travels to the triggerer, as plain data, for the probes
    only the runtime can answer (container health today, rollout status tomorrow)."""

    def to_dict(self) -> dict[str, Any]: ...

    async def probe_service(self, service: str) -> tuple[bool, str]: ...

    async def published(self, service: str, port: int) -> tuple[str, int]:
        """Host address and port where ``service`` publishes its container ``port`` now;
        raises ``LookupError`` saying why when it does not."""
        ...

    async def containers(self) -> list[ContainerState]:
        """Every long-running container of the stack as the runtime reports it now: what
        the gate reads its conclusive evidence from (``runtimes/evidence.py``)."""
        ...

    async def last_output(self, container: str) -> str:
        """The last line a container (or pod) wrote: what a crash says about itself."""
        ...

    def unhealthy_window(
        self, env: Mapping[str, str] | None = None, services: Collection[str] | None = None
    ) -> float | None:
        """Seconds the runtime may take to call one of ``services`` unhealthy; None when
        it cannot tell."""
        ...

    async def rollouts(self) -> list[Rollout]:
        """Where each workload's rollout stands (Kubernetes Deployments); a runtime without
        rollouts of its own (Compose) reports none."""
        ...


@dataclass(frozen=True)
class ContainerState:
    """One container (or pod) of a service as the runtime reports it now."""

    service: str
    name: str
    image_id: str
    state: str  # created | running | restarting | exited | paused | dead
    health: str | None  # healthy | unhealthy | starting, or None without a healthcheck
    restarts: int
    container_id: str = ""
    exit_code: int | None = None
    error: str = ""  # why the runtime could not start it (missing binary, wrong platform)
    oom_killed: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    last_check: str = ""  # the last healthcheck's exit code and output

    @property
    def up(self) -> bool:
        return self.state in ("running", "restarting")

    def touched_since(self, moment: datetime) -> bool:
        """Created or (re)started at or after ``moment``: something restarted it since."""
        return any(t is not None and t >= moment for t in (self.created_at, self.started_at))


@dataclass(frozen=True)
class Rollout:
    """Where one workload's rollout stands (a Kubernetes Deployment): done, in progress,
    or failed for good."""

    kind: str
    name: str
    done: bool
    detail: str
    failure: str | None = None

    @property
    def line(self) -> str:
        return f"{self.kind.lower()}/{self.name}: {self.failure or self.detail}"


class Runtime(ABC):
    """One stack on one runtime: its releases, what runs, its data and its probes.

    Commands are argv lists; ``commands()`` returns exactly what an action would run, so a
    dry run prints what a real run executes.
    """

    kind: str

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @property
    @abstractmethod
    def name(self) -> str:
        """The runtime's own name for the stack (Compose project, namespace)."""

    @property
    @abstractmethod
    def fetch_step(self) -> FetchStep:
        """How a release's images are obtained: built here or pulled."""

    @abstractmethod
    def describe(self, step: str) -> str:
        """One Markdown sentence saying what ``step`` does on this runtime (DAG docs)."""

    # ------------------------------------------------------------------ release facts

    @abstractmethod
    def images(self, version: str) -> dict[str, str]:
        """Image reference of every service for ``version``."""

    @abstractmethod
    def image_facts(self, references: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Id, digests and creation time of each image; ``None`` id when it is absent."""

    @abstractmethod
    def missing_build_inputs(self, version: str) -> list[str]:
        """What a build of ``version`` would need and cannot find (empty: buildable)."""

    @abstractmethod
    def pullable(self, reference: str, log: LineLogger) -> bool:
        """Whether a registry has ``reference`` (nothing is downloaded)."""

    @abstractmethod
    def config_paths(self) -> list[tuple[str, Path]]:
        """The config files that make up a release, by archive name."""

    def host_path(self, listed: str) -> Path:
        """Where a path the stack file names lies on the host: absolute as written; a
        relative one needs a runtime that works in a directory (compose's working dir)."""
        if Path(listed).is_absolute():
            return Path(listed)
        raise RuntimeFailure(
            f"stack {self.stack.name}: {listed!r} is relative, and the {self.kind} runtime "
            "has no working dir to resolve it in"
        )

    @contextlib.contextmanager
    def reach(self, service: str | None, endpoint: Endpoint) -> Iterator[Endpoint]:
        """Where a backup or restore reaches the database ``service`` runs, for the block:
        the connection's own address by default (Compose publishes it on this host)."""
        yield endpoint

    def out_of_reach(self, work: str) -> str | None:
        """Why housekeeping ``work`` ("container_logs", "images") cannot act on this
        runtime from here, for the run summary; None when it can (Compose on this host)."""
        return None

    def clean_claim(
        self,
        claim: str,
        subdir: str,
        rule: Mapping[str, Any],
        *,
        dry_run: bool,
        log: LineLogger,
    ) -> dict[str, Any]:
        """Run the log cleanup engine with ``rule`` (a ``CleanupRule``'s fields) on a log
        root on volume claim ``claim``; the engine's report. Only a runtime with volume
        claims (Kubernetes) has any."""
        raise RuntimeFailure(f"the {self.kind} runtime has no volume claims")

    @contextlib.contextmanager
    def data_dir_to_write(
        self, service: str, target: str, version: str, log: LineLogger
    ) -> Iterator[Path]:
        """A directory to write files for the directory mounted at ``target`` in
        ``service`` into (a restore's): by default that host directory itself."""
        yield self.data_dir(service, target, version)

    def applied(self, version: str) -> dict[str, bytes]:
        """What ``start`` sends for ``version`` beyond the config files, by archive name
        (Kubernetes: the rendered objects), for the ledger's config store. Nothing by
        default: Compose applies its files as they are."""
        return {}

    def clear_interrupted_start(self) -> list[str]:
        """Remove what an interrupted start left that would make the next one fail; lines
        saying what was removed. Nothing by default."""
        return []

    def begin_wait(self, step: str, version: str, log: LineLogger) -> dict[str, Any] | None:
        """Start ``step`` when, once started, it only waits (a Kubernetes migration Job):
        the arguments of :class:`~opsflow.triggers.job.JobTrigger` to wait on it in the
        triggerer, without a worker slot. None: the step runs in the task (``run``)."""
        return None

    def end_wait(self, event: Mapping[str, Any], log: LineLogger) -> None:
        """Finish a step after the event of its wait (logs, cleanup); raises
        :class:`RuntimeFailure` when it failed."""
        raise RuntimeFailure(f"the {self.kind} runtime starts no step that waits")

    def prepare_config(self, *, dry_run: bool = False) -> list[str]:
        """Create the config files a release needs before it starts and that the stack
        makes from examples; lines saying what was (or, dry, would be) done. Nothing by
        default: a runtime without such files has nothing to prepare."""
        return []

    @abstractmethod
    def unhealthy_window(self, version: str, services: Sequence[str] | None = None) -> float:
        """Seconds after which the runtime itself would call one of ``services`` (all
        when ``None``) unhealthy; 0 when it has no verdict of its own."""

    # ------------------------------------------------------------------ what runs now

    @abstractmethod
    def running(self) -> list[ContainerState]:
        """Every long-running container of the stack, in any state."""

    @abstractmethod
    def context(self) -> RuntimeContext:
        """What the triggerer's probes need to ask the runtime."""

    # ------------------------------------------------------------------ actions

    @abstractmethod
    def commands(self, step: str, version: str, services: Sequence[str] = ()) -> list[list[str]]:
        """The argv of ``step`` (fetch, migrate, start, stop, resume, down) for ``version``;
        empty when the step has nothing to do (no migration declared)."""

    @abstractmethod
    def env(self, version: str) -> dict[str, str]:
        """The variables the commands of ``version`` run with (logs and dry runs show them)."""

    @abstractmethod
    def run_argv(
        self, argv: Sequence[str], version: str, log: LineLogger, *, timeout: float | None = None
    ) -> float:
        """Run one command that :meth:`commands` produced; returns its seconds."""

    def run(
        self,
        step: str,
        version: str,
        log: LineLogger,
        *,
        services: Sequence[str] = (),
        timeout: float | None = None,
    ) -> float:
        """Run ``step``, one command of :meth:`commands` after the other; returns its
        seconds. Raises on failure with the command's cause."""
        seconds = 0.0
        for argv in self.commands(step, version, services):
            seconds += self.run_argv(argv, version, log, timeout=timeout)
        return seconds

    @abstractmethod
    def pin_images(self, images: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Make each service's image reference mean its recorded image id again
        (``{service: {"image": ref, "id": id}}``); lines saying what changed."""

    @abstractmethod
    def down_migrate(self, new_version: str, previous_version: str, log: LineLogger) -> None:
        """Run the stack's down-migration from the new release's image."""

    # ------------------------------------------------------------------ data

    @abstractmethod
    def service_image(self, service: str, version: str) -> str | None:
        """The image a service runs in ``version`` (scratch servers use it)."""

    @abstractmethod
    def data_dir(self, service: str, target: str, version: str) -> Path:
        """Host path of the directory mounted at ``target`` in ``service``."""

    def running_services(self, services: Sequence[str]) -> list[str]:
        """Those of ``services`` that run now (a restore stops only those)."""
        up = {state.service for state in self.running() if state.state == "running"}
        return [service for service in services if service in up]
