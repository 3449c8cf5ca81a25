"""Deferrable health sensors: the stack-level gate and thin one-check variants.

``execute()`` runs the first rounds in the worker and, unless they already decide, defers
to :class:`~opsflow.triggers.health.HealthGateTrigger`, so waiting for a stack to become
healthy holds no worker slot. Conclusive evidence from the runtime against a watched
service (exited, crash-looping, unhealthy, cannot start) fails the gate in the round that
sees it. Otherwise the gate waits, its timeout raised to cover the runtime's own unhealthy
window of the watched services: a gate that gives up before Docker itself would call a
container unhealthy reports failures that are only slowness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pydantic import ValidationError

from opsflow.durations import parse_duration
from opsflow.health import (
    ContainerCheck,
    HealthCheck,
    check_from_data,
    check_name,
    check_to_data,
)
from opsflow.runtimes.evidence import WINDOW_MARGIN
from opsflow.stack.model import HealthGate

if TYPE_CHECKING:
    from opsflow.runtimes.base import RuntimeContext

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MARGIN = WINDOW_MARGIN
DEFER_GRACE = 120.0
"""The deferral outlives the gate so the trigger's timeout event, with details, comes first."""
GATE_LINE_LIMIT = 400
INLINE_ROUNDS_MAX_SECONDS = 30.0
"""The longest a gate's first rounds may hold the worker before it defers."""


def format_gate_failure(event: Mapping[str, Any]) -> str:
    """One summary line, then one line per failing check with its last error."""
    elapsed = float(event.get("elapsed") or 0)
    reason = event.get("reason") or "timed out"
    failing = event.get("failing") or []
    head = f"health gate failed after {elapsed:.0f}s ({reason})"
    if failing:
        # The first line becomes the alert: it names the failing check and its last error.
        more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
        head += f": {failing[0].get('name')}: {failing[0].get('detail')}{more}"
    if len(head) > GATE_LINE_LIMIT:
        head = head[: GATE_LINE_LIMIT - 3] + "..."
    lines = [head]
    results = event.get("results") or []
    if event.get("status") == "timeout" and failing and all(r.get("ok", True) for r in results):
        lines.append("  most recent failures:")
    lines += [f"  - {item.get('name')}: {item.get('detail')}" for item in failing]
    return "\n".join(lines)


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError:
        raise ValueError(
            f"{name} must be seconds, a timedelta or a duration like 30s or 5m, got {value!r}"
        ) from None
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return seconds


class HealthGateSensor(BaseSensorOperator):
    """Wait until every check passes ``consecutive`` rounds in a row.

    The first rounds run in the worker: a stack that is healthy already passes without a
    trip through the triggerer. At the first failing round (or when the rounds would hold
    the worker too long) the gate defers and waits in the triggerer, holding no slot; a
    stack placed on its own host waits in its worker instead (``wait_in_worker``).

    :param checks: health checks (stack-model objects or their plain-data form).
    :param consecutive: all-green rounds in a row needed to pass; a failure resets the count.
    :param interval: seconds (or timedelta) between rounds.
    :param timeout: seconds (or timedelta) before the gate fails; raised to cover the
        runtime's own unhealthy window when the runtime knows one.
    :param runtime: the runtime's probe context (what container checks ask), or its dict.
    :param timeout_margin: seconds added to the window-derived timeout.

    The services whose runtime evidence ends the gate at once are those its container
    checks name (:meth:`watched_services`; a release gate watches what the release
    restarted).
    """

    # Checks and the runtime context come from stack files: they are data and reach the
    # trigger exactly as written, so they are never rendered as templates.
    template_fields: Sequence[str] = ()
    ui_color = "#d6f5e3"

    def __init__(
        self,
        *,
        checks: Sequence[HealthCheck | Mapping[str, Any]],
        consecutive: int = 3,
        interval: timedelta | float | str = 5.0,
        timeout: timedelta | float | str = 300.0,
        runtime: RuntimeContext | Mapping[str, Any] | None = None,
        timeout_margin: float = DEFAULT_TIMEOUT_MARGIN,
        **kwargs: Any,
    ) -> None:
        if isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 1:
            raise ValueError(f"consecutive must be an integer >= 1, got {consecutive!r}")
        gate_timeout = _seconds("timeout", timeout, allow_zero=False)
        super().__init__(timeout=gate_timeout, **kwargs)
        self.consecutive = consecutive
        self.interval = _seconds("interval", interval, allow_zero=True)
        self.timeout_margin = _seconds("timeout_margin", timeout_margin, allow_zero=True)
        self.watch: list[str] | None = None
        # True for a stack placed on its own host: its gate never moves to the triggerer.
        self.wait_in_worker = False
        if isinstance(checks, (str, bytes, Mapping)) or not isinstance(checks, Sequence):
            raise ValueError(f"checks must be a list of health checks, got {checks!r}")
        if not checks:
            raise ValueError("checks must name at least one health check, got []")
        self.checks: list[dict[str, Any]] = [
            check_to_data(c) if not isinstance(c, Mapping) else dict(c) for c in checks
        ]
        if runtime is None or isinstance(runtime, Mapping):
            self.runtime: dict[str, Any] | None = dict(runtime) if runtime is not None else None
        elif hasattr(runtime, "to_dict"):
            self.runtime = runtime.to_dict()
        else:
            raise ValueError(f"runtime must be a runtime context or a mapping, got {runtime!r}")
        self._validated()

    @classmethod
    def for_gate(
        cls,
        gate: HealthGate,
        *,
        checks: Sequence[HealthCheck | Mapping[str, Any]],
        runtime: RuntimeContext | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> HealthGateSensor:
        """A gate sensor configured from a stack's ``health_gate`` section."""
        return cls(
            checks=checks,
            consecutive=gate.consecutive,
            interval=gate.interval,
            timeout=gate.timeout,
            runtime=runtime,
            **kwargs,
        )

    def _validated(self) -> tuple[list[HealthCheck], RuntimeContext | None]:
        from opsflow.runtimes.registry import runtime_context

        checks: list[HealthCheck] = []
        for index, data in enumerate(self.checks):
            try:
                checks.append(check_from_data(data))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(check)'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise ValueError(
                    f"checks[{index}] is not a valid check ({problems}): {data!r}"
                ) from None
        runtime = runtime_context(self.runtime) if self.runtime is not None else None
        for index, check in enumerate(checks):
            if runtime is None and isinstance(check, ContainerCheck):
                raise ValueError(
                    f"checks[{index}] ({check_name(check)}) is a container check and needs "
                    "the stack's runtime context, got runtime=None"
                )
            if runtime is None and getattr(check, "endpoint", None) is not None:
                raise ValueError(
                    f"checks[{index}] ({check_name(check)}) names a service endpoint and "
                    "needs the stack's runtime context to find its port, got runtime=None"
                )
        return checks, runtime

    def watched_services(
        self, context: Context, checks: list[HealthCheck], runtime: RuntimeContext
    ) -> list[str] | None:
        """Services whose conclusive runtime evidence fails the gate, and whose unhealthy
        window the timeout covers; None: no evidence, the window of every service."""
        services = [c.service for c in checks if isinstance(c, ContainerCheck)]
        return list(dict.fromkeys(services)) or None

    def unhealthy_window(self, runtime: RuntimeContext | None) -> float | None:
        """Seconds after which the runtime itself would call a watched service (every
        service, when none is watched) unhealthy; None when it cannot tell (the configured
        timeout is kept)."""
        if runtime is None:
            return None
        return runtime.unhealthy_window(services=self.watch)

    def effective_timeout(self, runtime: RuntimeContext | None) -> float:
        """The configured timeout, raised past the runtime's unhealthy window when needed."""
        configured = float(self.timeout)
        if runtime is None:
            return configured
        window = self.unhealthy_window(runtime)
        if window is None:
            self.log.warning(
                "Keeping the configured health gate timeout of %ss: the runtime did not say "
                "how long it takes to call a service unhealthy",
                configured,
            )
            return configured
        needed = window + self.consecutive * self.interval + self.timeout_margin
        if needed > configured:
            self.log.info(
                "Raising the health gate timeout from %ss to %ss: the slowest runtime "
                "healthcheck may take %ss to report unhealthy (+ %s rounds of %ss + %ss margin)",
                configured,
                needed,
                window,
                self.consecutive,
                self.interval,
                self.timeout_margin,
            )
            return needed
        return configured

    def _inline_rounds(
        self, checks: list[HealthCheck], runtime: RuntimeContext | None, baseline: dict[str, int]
    ) -> dict[str, Any] | None:
        """Rounds in the worker while they pass; the success or failed event, or None to
        defer. ``baseline`` keeps the restart counts seen, for the trigger."""
        from opsflow.triggers.health import failed_event, gate_round

        started = time.monotonic()
        results: list[Any] = []
        # Rounds that would hold the worker too long: one round only, for the evidence.
        one_round = (self.consecutive - 1) * self.interval > INLINE_ROUNDS_MAX_SECONDS
        for number in range(1, self.consecutive + 1):
            if number > 1:
                time.sleep(self.interval)
            seen = asyncio.run(gate_round(checks, runtime, self.watch or [], baseline))
            results, evidence = seen.results, seen.evidence
            if evidence:
                elapsed = round(time.monotonic() - started, 1)
                return failed_event(evidence, results, number, elapsed)
            if one_round:
                return None
            failing = [r for r in results if not r.ok]
            if failing:
                self.log.info(
                    "Health round %s in the worker: %s of %s checks failing (%s); waiting on",
                    number,
                    len(failing),
                    len(results),
                    "; ".join(f"{r.name}: {r.detail}" for r in failing),
                )
                return None
            self.log.info(
                "Health round %s in the worker: all %s checks passed (%s of %s in a row)",
                number,
                len(results),
                number,
                self.consecutive,
            )
        return {
            "status": "success",
            "rounds": self.consecutive,
            "streak": self.consecutive,
            "elapsed": round(time.monotonic() - started, 1),
            "decided_at": datetime.now(UTC).isoformat(),
            "results": [r.to_dict() for r in results],
        }

    def execute(self, context: Context) -> Any:
        from opsflow.triggers.health import HealthGateTrigger
        from opsflow.triggers.here import WaitTimedOut, first_event

        try:
            checks, runtime = self._validated()
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        started = datetime.now(UTC).isoformat()
        self.watch = self.watched_services(context, checks, runtime) if runtime else None
        if self.watch:
            self.log.info(
                "Watching %s: the runtime's verdict on them (exited, crash loop, unhealthy, "
                "cannot start) ends the gate at once",
                ", ".join(self.watch),
            )
        timeout = self.effective_timeout(runtime)
        baseline: dict[str, int] = {}
        decided = self._inline_rounds(checks, runtime, baseline)
        if decided is not None:
            return self.execute_complete(context, decided)
        self.log.info(
            "%s health gate: %s checks, %s consecutive rounds every %ss, timeout %ss",
            "Waiting in the worker for the" if self.wait_in_worker else "Deferring",
            len(checks),
            self.consecutive,
            self.interval,
            timeout,
        )
        trigger = HealthGateTrigger(
            checks=[check_to_data(c) for c in checks],
            consecutive=self.consecutive,
            interval=self.interval,
            timeout=timeout,
            runtime=runtime.to_dict() if runtime else None,
            started_at=started,
            watch=self.watch,
            baseline=baseline,
            settled_timeout=float(self.timeout) if timeout > self.timeout else None,
        )
        if self.wait_in_worker:
            try:
                event = first_event(trigger, timeout + DEFER_GRACE)
            except WaitTimedOut as late:
                raise AirflowFailException(str(late)) from None
            return self.execute_complete(context, event)
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout + DEFER_GRACE),
        )

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return a JSON summary on success; raise with every failing check otherwise."""
        if not event:
            raise AirflowException("health gate ended without an event")
        status = event.get("status")
        if status == "success":
            results = event.get("results") or []
            self.log.info(
                "Health gate passed after %s rounds (%ss): %s",
                event.get("rounds"),
                event.get("elapsed"),
                "; ".join(f"{r.get('name')}: {r.get('detail')}" for r in results),
            )
            return {
                "status": "success",
                "rounds": event.get("rounds"),
                "elapsed": event.get("elapsed"),
                "checks": results,
            }
        # A gate that ran and failed is a verdict: never retried (a retry would only wait out
        # the timeout again). Failures before the gate ran are retried by Airflow.
        if status in ("timeout", "failed"):
            message = format_gate_failure(event)
            self.log.error("Health gate decided at %s: %s", event.get("decided_at"), message)
            raise AirflowFailException(message)
        raise AirflowFailException(str(event.get("message") or f"health gate event: {event!r}"))


class HttpHealthSensor(HealthGateSensor):
    """One HTTP check: status in ``expect_status`` and ``expect_json`` paths equal."""

    def __init__(
        self,
        *,
        url: str,
        method: str = "GET",
        expect_status: int | Sequence[int] = 200,
        expect_json: Mapping[str, Any] | None = None,
        check_timeout: timedelta | float | str = 5.0,
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {
            "kind": "http",
            "url": url,
            "method": method,
            "expect_status": [expect_status]
            if isinstance(expect_status, int)
            else list(expect_status),
            "expect_json": dict(expect_json or {}),
            "timeout": _seconds("check_timeout", check_timeout, allow_zero=False),
        }
        super().__init__(checks=[check], consecutive=consecutive, **kwargs)


class TcpPortSensor(HealthGateSensor):
    """One TCP connect to ``host:port``."""

    def __init__(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        check_timeout: timedelta | float | str = 3.0,
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {
            "kind": "tcp",
            "host": host,
            "port": port,
            "timeout": _seconds("check_timeout", check_timeout, allow_zero=False),
        }
        super().__init__(checks=[check], consecutive=consecutive, **kwargs)


class PostgresReadySensor(HealthGateSensor):
    """``SELECT 1`` through the Airflow connection ``conn_id``."""

    def __init__(
        self,
        *,
        conn_id: str,
        check_timeout: timedelta | float | str = 5.0,
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {
            "kind": "postgres",
            "conn_id": conn_id,
            "timeout": _seconds("check_timeout", check_timeout, allow_zero=False),
        }
        super().__init__(checks=[check], consecutive=consecutive, **kwargs)


class RedisPingSensor(HealthGateSensor):
    """Redis ``PING`` through the Airflow connection ``conn_id``."""

    def __init__(
        self,
        *,
        conn_id: str,
        check_timeout: timedelta | float | str = 3.0,
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {
            "kind": "redis",
            "conn_id": conn_id,
            "timeout": _seconds("check_timeout", check_timeout, allow_zero=False),
        }
        super().__init__(checks=[check], consecutive=consecutive, **kwargs)


class GrpcHealthSensor(HealthGateSensor):
    """``grpc.health.v1.Health/Check`` of ``service`` (empty: the whole server) at ``target``."""

    def __init__(
        self,
        *,
        target: str,
        service: str = "",
        check_timeout: timedelta | float | str = 5.0,
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {
            "kind": "grpc",
            "target": target,
            "service": service,
            "timeout": _seconds("check_timeout", check_timeout, allow_zero=False),
        }
        super().__init__(checks=[check], consecutive=consecutive, **kwargs)


class ServiceHealthSensor(HealthGateSensor):
    """The runtime's own verdict on a service: healthy (or running, without a healthcheck)."""

    def __init__(
        self,
        *,
        service: str,
        runtime: RuntimeContext | Mapping[str, Any],
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {"kind": "container", "service": service}
        super().__init__(checks=[check], consecutive=consecutive, runtime=runtime, **kwargs)
