"""Stack-level health gate that waits in the triggerer instead of a worker slot.

A gate passes only after ``consecutive`` rounds in a row where every check passed; one
failing check resets the streak, so a flapping service never passes. It fails at the
deadline, or in the first round where the runtime reports conclusive evidence against a
service it watches (``runtimes/evidence.py``: exited, crash-looping, unhealthy by the
runtime's own healthcheck, cannot start). The deadline comes from ``started_at``, so a
trigger rebuilt after a triggerer restart keeps its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from opsflow.health import CheckResult, HealthCheck, checks_from_data, run_check
from opsflow.runtimes.base import Rollout, RuntimeContext
from opsflow.runtimes.evidence import (
    WINDOW_MARGIN,
    Evidence,
    conclusive,
    note_restarts,
    verdicts_in,
)
from opsflow.runtimes.registry import runtime_context

CLASSPATH = "opsflow.triggers.health.HealthGateTrigger"


def _event(payload: dict[str, Any]) -> TriggerEvent:
    return TriggerEvent(payload)  # type: ignore[no-untyped-call]


@dataclass
class Round:
    """What one round of a gate saw."""

    results: list[CheckResult]
    evidence: list[Evidence]
    settled: bool  # the runtime has its verdict on every watched service: healthy


async def gate_round(
    checks: list[HealthCheck],
    runtime: RuntimeContext | None,
    watch: list[str],
    baseline: dict[str, int],
) -> Round:
    """One round: every check, and the runtime's evidence against the watched services
    (``baseline`` learns the restart count of each container it sees first)."""
    probes = asyncio.gather(*(run_check(c, runtime) for c in checks))
    if runtime is None:
        return Round(list(await probes), [], False)
    if not watch:
        results, rollouts = await asyncio.gather(probes, runtime.rollouts())
        return Round([*results, *rollout_results(rollouts)], rollout_evidence(rollouts), False)
    results, states, rollouts = await asyncio.gather(
        probes, runtime.containers(), runtime.rollouts()
    )
    note_restarts(states, baseline)
    evidence = conclusive(states, watch, baseline)
    outputs = await asyncio.gather(*(runtime.last_output(e.container) for e in evidence))
    evidence = [e.with_output(text) for e, text in zip(evidence, outputs, strict=True)]
    return Round(
        [*results, *rollout_results(rollouts)],
        [*evidence, *rollout_evidence(rollouts)],
        verdicts_in(states, watch),
    )


def rollout_results(rollouts: list[Rollout]) -> list[CheckResult]:
    """Each workload's rollout as one more check of the round: a rollout in progress keeps
    the streak at zero, however green the stack's own checks are meanwhile."""
    return [CheckResult(f"rollout {r.kind.lower()}/{r.name}", r.done, r.detail) for r in rollouts]


def rollout_evidence(rollouts: list[Rollout]) -> list[Evidence]:
    """A rollout the runtime itself gave up on (a progress deadline) ends the gate."""
    return [
        Evidence(r.name, f"{r.kind.lower()}/{r.name}", r.failure) for r in rollouts if r.failure
    ]


def failed_event(
    evidence: list[Evidence], results: list[CheckResult], rounds: int, elapsed: float
) -> dict[str, Any]:
    """The event of a gate that ended on conclusive evidence: each piece of evidence, then
    every check that failed in the same round."""
    failing = [{"name": f"service {e.service}", "detail": f"{e.container} {e.detail}"}
               for e in evidence]  # fmt: skip
    failing += [{"name": r.name, "detail": r.detail} for r in results if not r.ok]
    return {
        "status": "failed",
        "reason": "conclusive evidence from the runtime",
        "rounds": rounds,
        "elapsed": elapsed,
        "decided_at": datetime.now(UTC).isoformat(),
        "evidence": [e.to_dict() for e in evidence],
        "failing": failing,
        "results": [r.to_dict() for r in results],
    }


class HealthGateTrigger(BaseTrigger):
    """Fire ``success`` after ``consecutive`` all-green rounds, ``timeout`` at the deadline.

    Events (all plain JSON):

    - ``{"status": "success", "rounds", "streak", "elapsed", "results"}``
    - ``{"status": "failed", "reason", "rounds", "elapsed", "evidence": [{"service",
      "container", "detail"}], "failing", "results"}`` when the runtime reports conclusive
      evidence against a service in ``watch``; ``failing`` starts with that evidence.
    - ``{"status": "timeout", "reason", "rounds", "streak", "consecutive", "elapsed",
      "failing": [{"name", "detail"}], "results"}`` where ``failing`` lists every check that
      failed in the last round, or, when the last round passed but the streak was too short,
      the checks of the most recent failing round.
    - ``{"status": "error", "message"}`` for arguments that cannot be used.

    Every event but ``error`` carries ``decided_at``, the moment the gate decided.
    ``watch`` names the services whose runtime evidence counts (none: checks only);
    ``baseline`` holds the restart counts the gate saw first, by container.
    ``settled_timeout`` is the configured timeout when ``timeout`` was raised to outwait
    the runtime's unhealthy window: once the runtime reports every watched service
    healthy, there is no verdict of its own left to wait for, and the deadline comes
    back to ``settled_timeout`` (or the settling moment plus the gate's rounds and
    :data:`~opsflow.runtimes.evidence.WINDOW_MARGIN`, whichever is later).
    """

    def __init__(
        self,
        *,
        checks: list[dict[str, Any]],
        consecutive: int,
        interval: float,
        timeout: float,
        runtime: dict[str, Any] | None = None,
        started_at: str | None = None,
        watch: list[str] | None = None,
        baseline: dict[str, int] | None = None,
        settled_timeout: float | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.checks = [dict(check) for check in checks]
        self.consecutive = int(consecutive)
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.runtime = dict(runtime) if runtime is not None else None
        self.started_at = started_at or datetime.now(UTC).isoformat()
        self.watch = [str(service) for service in watch or []]
        self.baseline = {str(k): int(v) for k, v in (baseline or {}).items()}
        self.settled_timeout = float(settled_timeout) if settled_timeout is not None else None
        self._limit = self.timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "checks": self.checks,
                "consecutive": self.consecutive,
                "interval": self.interval,
                "timeout": self.timeout,
                "runtime": self.runtime,
                "started_at": self.started_at,
                "watch": self.watch,
                "baseline": self.baseline,
                "settled_timeout": self.settled_timeout,
            },
        )

    def _elapsed_now(self) -> float:
        started = datetime.fromisoformat(self.started_at)
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        return (datetime.now(UTC) - started).total_seconds()

    def _seconds_left(self) -> float:
        return self._limit - self._elapsed_now()

    def _elapsed(self) -> float:
        return round(self._elapsed_now(), 1)

    def _settle(self) -> None:
        """The runtime's verdict is in: no window of its own left to outwait."""
        if self.settled_timeout is None or self._limit < self.timeout:
            return
        grace = self.consecutive * self.interval + WINDOW_MARGIN
        limit = min(self.timeout, max(self.settled_timeout, self._elapsed_now() + grace))
        if limit < self._limit:
            self._limit = limit
            self.log.info(
                "The runtime reports every watched service healthy (%s): the gate's timeout "
                "goes back from %ss to %.0fs",
                ", ".join(self.watch),
                self.timeout,
                limit,
            )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            checks = checks_from_data(self.checks)

            runtime = runtime_context(self.runtime) if self.runtime else None
            if not checks:
                raise ValueError("a health gate needs at least one check")
            if self.consecutive < 1:
                raise ValueError(f"consecutive must be >= 1, got {self.consecutive}")
            if self.interval < 0 or self.timeout <= 0:
                raise ValueError(
                    f"interval must be >= 0 and timeout > 0, got {self.interval}, {self.timeout}"
                )
            self._seconds_left()  # a malformed started_at is an argument error too
        except ValueError as exc:
            yield _event({"status": "error", "message": f"invalid health gate: {exc}"})
            return

        rounds = 0
        streak = 0
        results: list[CheckResult] = []
        recent_failures: list[CheckResult] = []
        baseline = dict(self.baseline)
        while True:
            rounds += 1
            seen = await gate_round(checks, runtime, self.watch, baseline)
            results, evidence = seen.results, seen.evidence
            if seen.settled:
                self._settle()
            if evidence:
                self.log.info(
                    "Health round %s: conclusive evidence, the gate fails now: %s",
                    rounds,
                    "; ".join(e.line for e in evidence),
                )
                yield _event(failed_event(evidence, results, rounds, self._elapsed()))
                return
            failed = [r for r in results if not r.ok]
            if failed:
                streak = 0
                recent_failures = failed
                self.log.info(
                    "Health round %s: %s of %s checks failing: %s",
                    rounds,
                    len(failed),
                    len(results),
                    "; ".join(f"{r.name}: {r.detail}" for r in failed),
                )
            else:
                streak += 1
                self.log.info(
                    "Health round %s: all %s checks passed (%s of %s in a row)",
                    rounds,
                    len(results),
                    streak,
                    self.consecutive,
                )
            if streak >= self.consecutive:
                yield _event(
                    {
                        "status": "success",
                        "rounds": rounds,
                        "streak": streak,
                        "elapsed": self._elapsed(),
                        "decided_at": datetime.now(UTC).isoformat(),
                        "results": [r.to_dict() for r in results],
                    }
                )
                return
            left = self._seconds_left()
            if left > 0:
                await asyncio.sleep(min(self.interval, left))
            # A new round starts only before the deadline.
            if self._seconds_left() <= 0:
                yield _event(self._timeout_event(rounds, streak, results, recent_failures))
                return

    def _timeout_event(
        self,
        rounds: int,
        streak: int,
        results: list[CheckResult],
        recent_failures: list[CheckResult],
    ) -> dict[str, Any]:
        failed = [r for r in results if not r.ok]
        if failed:
            reason = f"{len(failed)} of {len(results)} checks failing"
            failing = failed
        else:
            reason = (
                f"all {len(results)} checks passed the last round, but only {streak} of "
                f"{self.consecutive} consecutive rounds were green"
            )
            failing = recent_failures
        return {
            "status": "timeout",
            "reason": reason,
            "rounds": rounds,
            "streak": streak,
            "consecutive": self.consecutive,
            "elapsed": self._elapsed(),
            "decided_at": datetime.now(UTC).isoformat(),
            "failing": [{"name": r.name, "detail": r.detail} for r in failing],
            "results": [r.to_dict() for r in results],
        }
