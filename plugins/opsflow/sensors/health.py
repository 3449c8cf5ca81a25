"""Deferrable health sensors: the stack-level gate and thin one-check variants.

``execute()`` defers at once to :class:`~opsflow.triggers.health.HealthGateTrigger`, so
waiting for a stack to become healthy holds no worker slot. The gate's timeout is raised
to cover the slowest Compose healthcheck's unhealthy window: a gate that gives up before
Docker itself would call a container unhealthy reports failures that are only slowness.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pydantic import ValidationError

from opsflow.stack.model import ContainerCheck, HealthCheck, HealthGate, parse_duration
from opsflow.triggers.checks import ComposeContext, check_from_data, check_name, check_to_data

log = logging.getLogger(__name__)

# Docker's defaults for a healthcheck field that is missing (or 0, which means "inherit").
DOCKER_HEALTH_INTERVAL = 30.0
DOCKER_HEALTH_TIMEOUT = 30.0
DOCKER_HEALTH_RETRIES = 3
DOCKER_HEALTH_START_PERIOD = 0.0

DEFAULT_TIMEOUT_MARGIN = 30.0
"""Seconds added on top of the Compose unhealthy window and the gate's own rounds."""
DEFER_GRACE = 120.0
"""The deferral outlives the gate so the trigger's timeout event, with details, comes first."""
COMPOSE_CONFIG_TIMEOUT = 60.0
GATE_LINE_LIMIT = 400

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(value: Any, default: float) -> float:
    """Seconds of a Compose duration (``1m30s``, ``500ms``; a bare number is seconds).

    Missing, zero or unreadable values give ``default``, as Docker does for 0.
    """
    if value is None or isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else default
    text = str(value).strip()
    parts = _GO_DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        try:
            seconds = float(text)
        except ValueError:
            return default
        return seconds if seconds > 0 else default
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in parts)
    return seconds if seconds > 0 else default


def _healthcheck_disabled(healthcheck: Mapping[str, Any]) -> bool:
    test = healthcheck.get("test")
    return bool(healthcheck.get("disable")) or test == ["NONE"] or test == "NONE"


def compose_unhealthy_window(compose_config_json: Mapping[str, Any]) -> float:
    """Longest time Docker may take to call a service unhealthy, over all services.

    Per service: ``start_period + (interval + timeout) * retries``, with Docker's defaults
    for missing fields. Services without a (enabled) healthcheck contribute nothing.
    """
    services = compose_config_json.get("services") or {}
    worst = 0.0
    if not isinstance(services, Mapping):
        return worst
    for service in services.values():
        healthcheck = service.get("healthcheck") if isinstance(service, Mapping) else None
        if not isinstance(healthcheck, Mapping) or _healthcheck_disabled(healthcheck):
            continue
        interval = parse_go_duration(healthcheck.get("interval"), DOCKER_HEALTH_INTERVAL)
        timeout = parse_go_duration(healthcheck.get("timeout"), DOCKER_HEALTH_TIMEOUT)
        start = parse_go_duration(healthcheck.get("start_period"), DOCKER_HEALTH_START_PERIOD)
        retries = healthcheck.get("retries")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries <= 0:
            retries = DOCKER_HEALTH_RETRIES
        worst = max(worst, start + (interval + timeout) * retries)
    return worst


def read_compose_config(
    compose: ComposeContext, env: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """``docker compose config --format json`` of the project, or None (with a warning).

    ``env`` adds variables the compose file interpolates (e.g. the release version).
    """
    argv = [*compose.base_argv(), "config", "--format", "json"]
    try:
        completed = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=COMPOSE_CONFIG_TIMEOUT,
            check=False,
            cwd=compose.working_dir,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("Cannot read the compose config of %s: %s", compose.project, exc)
        return None
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines()
        log.warning(
            "docker compose config failed for %s (exit %s): %s",
            compose.project,
            completed.returncode,
            lines[-1] if lines else "",
        )
        return None
    try:
        config = json.loads(completed.stdout)
    except ValueError as exc:
        log.warning("docker compose config of %s is not JSON: %s", compose.project, exc)
        return None
    return config if isinstance(config, dict) else None


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
    if failing and not any(not r.get("ok", True) for r in event.get("results") or []):
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
    """Wait until every check passes ``consecutive`` rounds in a row, in the triggerer.

    :param checks: health checks (stack-model objects or their plain-data form).
    :param consecutive: all-green rounds in a row needed to pass; a failure resets the count.
    :param interval: seconds (or timedelta) between rounds.
    :param timeout: seconds (or timedelta) before the gate fails; raised to cover the Compose
        unhealthy window when ``compose`` is given.
    :param compose: the Compose project, needed by container checks and for the window.
    :param timeout_margin: seconds added to the window-derived timeout.
    """

    # Checks and the compose context come from stack files: they are data and reach the
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
        compose: ComposeContext | Mapping[str, Any] | None = None,
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
        if isinstance(checks, (str, bytes, Mapping)) or not isinstance(checks, Sequence):
            raise ValueError(f"checks must be a list of health checks, got {checks!r}")
        if not checks:
            raise ValueError("checks must name at least one health check, got []")
        self.checks: list[dict[str, Any]] = [
            check_to_data(c) if not isinstance(c, Mapping) else dict(c) for c in checks
        ]
        if isinstance(compose, ComposeContext):
            self.compose: dict[str, Any] | None = compose.to_dict()
        elif compose is None or isinstance(compose, Mapping):
            self.compose = dict(compose) if compose is not None else None
        else:
            raise ValueError(f"compose must be a ComposeContext or a mapping, got {compose!r}")
        self._validated()

    @classmethod
    def for_gate(
        cls,
        gate: HealthGate,
        *,
        checks: Sequence[HealthCheck | Mapping[str, Any]],
        compose: ComposeContext | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> HealthGateSensor:
        """A gate sensor configured from a stack's ``health_gate`` section."""
        return cls(
            checks=checks,
            consecutive=gate.consecutive,
            interval=gate.interval,
            timeout=gate.timeout,
            compose=compose,
            **kwargs,
        )

    def _validated(self) -> tuple[list[HealthCheck], ComposeContext | None]:
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
        compose = None
        if self.compose is not None:
            compose = ComposeContext.from_dict(self.compose)
        for index, check in enumerate(checks):
            if isinstance(check, ContainerCheck) and compose is None:
                raise ValueError(
                    f"checks[{index}] ({check_name(check)}) is a container check and needs "
                    f"compose=ComposeContext(...), got compose=None"
                )
        return checks, compose

    def compose_env(self) -> dict[str, str]:
        """Variables the compose file needs to resolve; none by default."""
        return {}

    def effective_timeout(self, compose: ComposeContext | None) -> float:
        """The configured timeout, raised past the Compose unhealthy window when needed."""
        configured = float(self.timeout)
        if compose is None:
            return configured
        config = read_compose_config(compose, self.compose_env())
        if config is None:
            self.log.warning(
                "Keeping the configured health gate timeout of %ss: no compose config", configured
            )
            return configured
        window = compose_unhealthy_window(config)
        needed = window + self.consecutive * self.interval + self.timeout_margin
        if needed > configured:
            self.log.info(
                "Raising the health gate timeout from %ss to %ss: the slowest compose "
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

    def execute(self, context: Context) -> None:
        from opsflow.triggers.health import HealthGateTrigger

        try:
            checks, compose = self._validated()
        except ValueError as exc:
            raise AirflowException(str(exc)) from None
        timeout = self.effective_timeout(compose)
        self.log.info(
            "Deferring health gate: %s checks, %s consecutive rounds every %ss, timeout %ss",
            len(checks),
            self.consecutive,
            self.interval,
            timeout,
        )
        self.defer(
            trigger=HealthGateTrigger(
                checks=[check_to_data(c) for c in checks],
                consecutive=self.consecutive,
                interval=self.interval,
                timeout=timeout,
                compose=compose.to_dict() if compose else None,
            ),
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
        if status == "timeout":
            raise AirflowFailException(format_gate_failure(event))
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


class ComposeHealthSensor(HealthGateSensor):
    """The Compose service's container is healthy (or running, without a healthcheck)."""

    def __init__(
        self,
        *,
        service: str,
        compose: ComposeContext | Mapping[str, Any],
        consecutive: int = 1,
        **kwargs: Any,
    ) -> None:
        check = {"kind": "container", "service": service}
        super().__init__(checks=[check], consecutive=consecutive, compose=compose, **kwargs)
