"""Durations as people write them in stack files and sensor arguments (``30s``, ``5m``).

The lowest layer: the stack model, the health checks and the sensors all read durations
with the one parser here, so ``"250ms"`` means the same wherever it is written.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> timedelta:
    """Accept ``30``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"`` or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"not a duration (use e.g. 30s, 5m, 2h, 7d): {value!r}")


def positive(value: timedelta) -> timedelta:
    """Refuse zero and negative durations: a zero timeout fails at once, a zero interval
    spins; neither is ever meant."""
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 (use e.g. 30s, 5m)")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(positive)]
"""A positive duration field of a pydantic model, written as :func:`parse_duration` reads."""
