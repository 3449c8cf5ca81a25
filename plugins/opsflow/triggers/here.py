"""A trigger's wait, run in the worker itself instead of the triggerer.

A stack placed on its own host (an edge worker serving its queue) is waited on from that
host: the central triggerer cannot reach the host's services, its Docker Engine or its
cluster. The same trigger code decides, so the verdict is the one the triggerer would give.
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.triggers.base import BaseTrigger


class WaitTimedOut(TimeoutError):
    """The wait outlived the deadline a deferral would have had."""


def first_event(trigger: BaseTrigger, timeout: float | None = None) -> dict[str, Any]:
    """The payload of the trigger's first event, computed in this process."""

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise RuntimeError(f"{type(trigger).__name__} ended without an event")

    try:
        return asyncio.run(asyncio.wait_for(first(), timeout))
    except TimeoutError:
        raise WaitTimedOut(
            f"{type(trigger).__name__} gave no event within {timeout}s in the worker"
        ) from None
