"""What the runtime reports that ends a health gate at once: evidence no amount of waiting
turns good.

A gate that waits out its timeout on a container that has already exited only delays the
rollback. These rules read the runtime's own facts (``ContainerState``) for the services a
gate watches (those the release created or restarted); everything else a check sees (a
503, ``NOT_SERVING``, a refused connection during a start period) can still turn good and
keeps the gate waiting. Plain functions, so every rule is tested without a gate around it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from datetime import datetime

from opsflow.runtimes.base import ContainerState

WINDOW_MARGIN = 10.0
"""Seconds a gate adds on top of the runtime's unhealthy window and its own rounds: slack
for Docker's checks running late. Docker's verdict itself ends the gate at once."""


@dataclass(frozen=True)
class Evidence:
    """One conclusive fact about one container of a watched service."""

    service: str
    container: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def with_output(self, output: str) -> Evidence:
        """The same evidence with the container's last output line, when it wrote one."""
        if not output:
            return self
        return Evidence(self.service, self.container, f"{self.detail}; last output: {output}")

    @property
    def line(self) -> str:
        return f"service {self.service}: {self.container} {self.detail}"


def touched_services(states: Iterable[ContainerState], since: datetime) -> list[str]:
    """Services with a container created or (re)started at or after ``since``: what a
    release changed or restarted, as the runtime saw it happen."""
    return sorted({s.service for s in states if s.service and s.touched_since(since)})


def _key(state: ContainerState) -> str:
    return state.container_id or state.name


def note_restarts(states: Iterable[ContainerState], baseline: MutableMapping[str, int]) -> None:
    """Remember the restart count of every container seen for the first time."""
    for state in states:
        baseline.setdefault(_key(state), state.restarts)


def _exit(state: ContainerState) -> str:
    code = "" if state.exit_code is None else f" with code {state.exit_code}"
    return f"exited{code}" + (" (killed: out of memory)" if state.oom_killed else "")


def judge(state: ContainerState, restarts_before: int) -> str | None:
    """Why this container's state is conclusive, or None while it can still turn good."""
    if state.error and state.state in ("created", "exited", "dead"):
        return f"cannot start: {' '.join(state.error.split())}"
    if state.state == "dead":
        return "is dead (the runtime could not stop or remove it cleanly)"
    if state.state == "restarting":
        return f"{_exit(state)} and is restarting (restart {state.restarts}): a crash loop"
    if state.state == "exited" and state.exit_code != 0:
        return _exit(state)
    if state.restarts > restarts_before:
        grown = state.restarts - restarts_before
        times = "once" if grown == 1 else f"{grown} times"
        return f"restarted {times} during the gate (crash loop)"
    if state.health == "unhealthy":
        last = f", last check {state.last_check}" if state.last_check else ""
        return f"is unhealthy by the runtime's own healthcheck after its retries{last}"
    # created (not started yet), starting, healthy, paused, or exited 0: a one-shot
    # service that completed. None of these is a verdict.
    return None


def conclusive(
    states: Iterable[ContainerState], watch: Collection[str], baseline: Mapping[str, int]
) -> list[Evidence]:
    """Conclusive evidence against the watched services; empty when the gate must wait."""
    found = []
    for state in states:
        if state.service not in watch:
            continue
        detail = judge(state, baseline.get(_key(state), state.restarts))
        if detail is not None:
            found.append(Evidence(state.service, state.name, detail))
    return found


def verdicts_in(states: Iterable[ContainerState], watch: Collection[str]) -> bool:
    """Whether the runtime has settled on every watched service: each has a container and
    all of them run healthy, or run without a healthcheck of their own. From then on its
    unhealthy window is nothing left to wait for."""
    seen: set[str] = set()
    for state in states:
        if state.service not in watch:
            continue
        if state.state != "running" or state.health not in (None, "healthy"):
            return False
        seen.add(state.service)
    return seen == set(watch)
