"""Pieces every opsflow DAG of a stack shares: defaults, alerts, docs, the health gate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

from opsflow.notifiers.routes import Alerted, failure_callbacks
from opsflow.operators.verify import StackGateSensor
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import Stack

START_DATE = (2026, 1, 1)


# Release workflows retry every task: Airflow retries only what failed before it ran or
# died on the way (a verdict raises AirflowFailException), and every step is idempotent.
RELEASE_RETRIES = 2
RELEASE_RETRY_DELAY = timedelta(seconds=10)


def dag_defaults(stack: Stack, workflow: str, *, retries: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``DAG(...)`` that are the same for every workflow of a stack.

    Templates render as strings, never as native objects: native rendering turns ``''``
    into ``None`` and ``1.10`` into ``1.1``. Only the run's own params are templated.
    A placed stack's tasks all go to its host's queue (its edge worker).
    """
    placed = (
        {"queue": stack.placement.queue, "executor": stack.placement.executor}
        if stack.placement
        else {}
    )
    return {
        "start_date": pendulum.datetime(*START_DATE, tz=stack.timezone),
        "catchup": False,
        "tags": sorted({"opsflow", f"stack:{stack.name}", workflow, *stack.tags}),
        "owner_links": {},
        "render_template_as_native_obj": False,
        "default_args": {
            "owner": stack.owner,
            "retries": retries,
            "retry_delay": RELEASE_RETRY_DELAY if retries else timedelta(seconds=30),
            "on_failure_callback": failure_callbacks(stack),
            **placed,
        },
    }


def describe_alerts(stack: Alerted) -> str:
    if not stack.alerts:
        return "no route configured (add `alerts:` to the stack file)"
    return ", ".join(f"{route.kind} (`{route.conn_id}`)" for route in stack.alerts)


def render_doc(template: str, stack: Stack, **fields: Any) -> str:
    gate = stack.health_gate
    values = {
        "stack": stack.name,
        "description": stack.description or "",
        "runtime": stack.runtime.kind,
        "check_count": len(stack.checks),
        "consecutive": gate.consecutive,
        "interval": int(gate.interval.total_seconds()),
        "timeout": int(gate.timeout.total_seconds()),
        "alerts": describe_alerts(stack),
        **fields,
    }
    return template.format(**values).strip()


def gate_sensor(
    stack: Stack, *, task_id: str, version: str, dry_run: str, **kwargs: Any
) -> StackGateSensor:
    """The stack-level health gate over every check of every service."""
    return StackGateSensor(
        task_id=task_id,
        stack_name=stack.name,
        version=version,
        dry_run=dry_run,
        checks=list(stack.checks),
        gate=stack.health_gate,
        runtime=runtime_for(stack).context(),
        **kwargs,
    )
