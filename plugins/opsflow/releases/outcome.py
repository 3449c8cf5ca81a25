"""How a release run ended, decided from what the runtime reports as running.

The tasks of a run can fail without ever running (a scheduler restarted before the API
server listened), die half-way, or be cleared and run again. Which task states happened
to be recorded therefore says little about the stack; the running containers do. These
plain functions (no Airflow, no Docker) turn the engine's answer and the steps' records
into the decision to roll back and the outcome the ledger and the alert state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

NOT_RUNNING = "not running"
# An alert must fit the notifier's bound with its end intact ("...; healthy", "human
# needed"): each variable part is clipped on its own.
ERROR_CHARS = 280
ROLLBACK_ERROR_CHARS = 80
RUNNING_CHARS = 100


def clip(text: str | None, limit: int) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_middle(text: str | None, limit: int) -> str:
    """Like :func:`clip`, but the middle goes: an error's first words say what failed and
    its last ones why (a tool's final line, a crash-looping container's ``last output:
    ...``), so both ends stay."""
    text = " ".join(str(text or "").split())
    if len(text) <= limit:
        return text
    keep = limit - len(" ... ")
    head = keep * 3 // 5  # what failed, and where, is the longer part
    return f"{text[:head]} ... {text[len(text) - (keep - head) :]}"


class RunningContainer(Protocol):
    @property
    def service(self) -> str: ...

    @property
    def image_id(self) -> str: ...

    @property
    def up(self) -> bool: ...


@dataclass(frozen=True)
class Observation:
    """Which recorded release each versioned service runs now.

    ``services`` maps a service to the versions whose recorded image it runs (several when
    two releases share an image), or to an empty tuple with ``unknown[service]`` saying what
    it runs instead (``not running``, an image no candidate release recorded).
    """

    services: dict[str, tuple[str, ...]]
    unknown: dict[str, str] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()

    @property
    def release(self) -> str | None:
        """The candidate release (in the order given) that every service runs, if any."""
        if not self.services:
            return None
        for version in self.candidates:
            if all(version in versions for versions in self.services.values()):
                return version
        return None

    def describe(self) -> str:
        """``api, worker run 1.1.1`` or ``api runs 1.1.1; worker is not running``."""
        release = self.release
        names = sorted(self.services)
        if release is not None:
            verb = "runs" if len(names) == 1 else "run"
            return f"{', '.join(names)} {verb} {release}"
        parts = []
        for name in names:
            versions = self.services[name]
            if versions:
                parts.append(f"{name} runs {' or '.join(versions)}")
            elif self.unknown.get(name) == NOT_RUNNING:
                parts.append(f"{name} is not running")
            else:
                parts.append(f"{name} runs {self.unknown.get(name, 'an unknown image')}")
        return "; ".join(parts) or "no versioned service"

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "services": {name: list(versions) for name, versions in self.services.items()},
            "unknown": dict(self.unknown),
            "description": self.describe(),
        }


def observe(
    containers: Iterable[RunningContainer],
    services: Sequence[str],
    releases: Sequence[tuple[str, Mapping[str, str]]],
) -> Observation:
    """Match the image id each service's running containers use against the image ids the
    candidate releases recorded (``[(version, {service: image id})]``, preferred first)."""
    running: dict[str, set[str]] = {name: set() for name in services}
    for container in containers:
        if container.service in running and container.up:
            running[container.service].add(container.image_id)
    matched: dict[str, tuple[str, ...]] = {}
    unknown: dict[str, str] = {}
    for name in services:
        ids = running[name]
        if not ids:
            matched[name], unknown[name] = (), NOT_RUNNING
            continue
        versions = tuple(version for version, images in releases if ids == {images.get(name) or ""})
        matched[name] = versions
        if not versions:
            shown = ", ".join(sorted(image[:19] for image in ids))
            unknown[name] = f"an image no release of this run recorded ({shown})"
    return Observation(matched, unknown, tuple(version for version, _ in releases))


@dataclass(frozen=True)
class StepFacts:
    """What the steps of one upgrade reported (absent: the step never reported)."""

    failure: tuple[str, str] | None = None  # first upgrade step that failed or never reported
    verify_ok: bool = False
    rollback: str | None = None  # ok | skipped | failed | None (no report)
    rollback_error: str | None = None
    rollback_verify_ok: bool = False
    rollback_verify_error: str | None = None


@dataclass(frozen=True)
class RollbackDecision:
    needed: bool
    reason: str


def rollback_decision(
    *,
    target: str,
    previous: str | None,
    has_snapshot: bool,
    facts: StepFacts,
    observed: Observation,
    touched: bool,
) -> RollbackDecision:
    """Roll back unless the new release is verified and is what runs, or nothing of it
    ever reached the stack. A step that never reported counts as failed: a gate that never
    ran has not verified anything."""
    if not has_snapshot or previous is None:
        return RollbackDecision(False, "the upgrade stopped before the snapshot: nothing changed")
    if facts.verify_ok and observed.release == target and facts.failure is None:
        return RollbackDecision(False, f"the upgrade succeeded: {observed.describe()}")
    if not touched and observed.release == previous:
        where = f" (stopped at {facts.failure[0]})" if facts.failure else ""
        return RollbackDecision(False, f"nothing of {target} reached the stack{where}")
    if facts.failure is not None:
        task, error = facts.failure
        return RollbackDecision(True, f"{task}: {error}")
    return RollbackDecision(True, f"{target} is not verified as running: {observed.describe()}")


@dataclass(frozen=True)
class Settled:
    """The end of an upgrade as the ledger and the alert state it."""

    outcome: str  # succeeded | failed | rolled-back | rollback-failed
    running: str  # what the runtime reports, e.g. "api, worker run 1.1.0"
    failed_task: str | None = None
    error: str | None = None
    rolled_back_to: str | None = None
    rollback_failed_task: str | None = None
    rollback_error: str | None = None

    def alert(self, stack: str, previous: str | None, target: str) -> str | None:
        """The one-line alert of a failed run; ``None`` when it succeeded."""
        if self.outcome == "succeeded":
            return None
        head = (
            f"upgrade {stack} {previous or '?'} -> {target} failed at {self.failed_task} "
            f"with {clip_middle(self.error or 'no error recorded', ERROR_CHARS)}"
        )
        running = clip(self.running, RUNNING_CHARS)
        if self.outcome == "rolled-back":
            return f"{head}; rolled back to {self.rolled_back_to}; healthy"
        if self.outcome == "failed":
            return f"{head}; the running release was not changed ({running})"
        return (
            f"{head}; rollback failed at {self.rollback_failed_task} with "
            f"{clip(self.rollback_error, ROLLBACK_ERROR_CHARS)}; {running}; human needed"
        )


def settle_upgrade(
    *, target: str, previous: str | None, facts: StepFacts, observed: Observation
) -> Settled:
    """Succeeded only when the new release was verified and still runs; rolled back only
    when the previous release runs again and its gate passed; anything else needs a human,
    and says what runs."""
    running = observed.describe()
    release = observed.release
    if release == target and facts.verify_ok and facts.failure is None:
        return Settled("succeeded", running)
    failed_task, error = facts.failure or ("verify", f"{target} is not what runs ({running})")
    base = {"running": running, "failed_task": failed_task, "error": error}
    if release is not None and release == previous:
        if facts.rollback == "ok" and facts.rollback_verify_ok:
            return Settled("rolled-back", rolled_back_to=previous, **base)
        if facts.rollback == "skipped":
            return Settled("failed", **base)
    if facts.rollback in (None, "skipped"):
        rollback_task = "rollback"
        rollback_error = "it did not run" if facts.rollback is None else "it was skipped"
    elif facts.rollback == "failed":
        rollback_task, rollback_error = "rollback", facts.rollback_error or "failed"
    elif facts.rollback_verify_ok:
        rollback_task = "rollback_verify"
        rollback_error = f"{previous} passed its gate, but that is not what runs now"
    else:
        rollback_task = "rollback_verify"
        rollback_error = facts.rollback_verify_error or "the previous release's gate did not pass"
    if release == target:
        running = f"{running}, not verified"
    return Settled(
        "rollback-failed",
        running=running,
        failed_task=failed_task,
        error=error,
        rollback_failed_task=rollback_task,
        rollback_error=rollback_error,
    )
