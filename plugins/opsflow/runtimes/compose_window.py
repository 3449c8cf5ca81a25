"""How long Docker itself may take to call a Compose service unhealthy, from the resolved
compose config: the window a health gate must outwait before it calls slowness failure.
Plain functions of the config; reading the config is the runtime's (``ComposeProject``
in the worker, :meth:`ComposeContext.read_config` for the generic sensors)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

# Docker's defaults for a healthcheck field that is missing (or 0, which means "inherit").
DOCKER_HEALTH_INTERVAL = 30.0
DOCKER_HEALTH_TIMEOUT = 30.0
DOCKER_HEALTH_RETRIES = 3
DOCKER_HEALTH_START_PERIOD = 0.0


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


def compose_unhealthy_window(
    compose_config_json: Mapping[str, Any], services: Collection[str] | None = None
) -> float:
    """Longest time Docker may take to call a service unhealthy, over ``services`` (all
    when ``None``).

    Per service: ``start_period + (interval + timeout) * retries``, with Docker's defaults
    for missing fields. Services without a (enabled) healthcheck contribute nothing.
    """
    declared = compose_config_json.get("services") or {}
    worst = 0.0
    if not isinstance(declared, Mapping):
        return worst
    for name, service in declared.items():
        if services is not None and name not in services:
            continue
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
