"""Turn a stack's ``alerts:`` routes into notifiers, and send ad-hoc alerts through them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opsflow.notifiers.alerts import (
    EmailAlert,
    OpsflowAlertNotifier,
    SlackWebhookAlert,
    WebhookAlert,
)
from opsflow.notifiers.message import AlertMessage
from opsflow.stack.model import AlertRoute, EmailRoute, SlackRoute, Stack, WebhookRoute


def notifier_for(
    route: AlertRoute, *, stack_name: str, extra_lines: Sequence[str] = ()
) -> OpsflowAlertNotifier:
    """The notifier delivering to one route of a stack file."""
    if isinstance(route, SlackRoute):
        return SlackWebhookAlert(
            route.conn_id, route.channel, stack_name=stack_name, extra_lines=extra_lines
        )
    if isinstance(route, EmailRoute):
        return EmailAlert(route.conn_id, route.to, stack_name=stack_name, extra_lines=extra_lines)
    if isinstance(route, WebhookRoute):
        return WebhookAlert(route.conn_id, stack_name=stack_name, extra_lines=extra_lines)
    raise TypeError(f"unknown alert route: {route!r}")


class Alerted(Protocol):
    """Anything with a name and alert routes: a stack, or Airflow's own maintenance."""

    @property
    def name(self) -> str: ...

    @property
    def alerts(self) -> Sequence[AlertRoute]: ...


def failure_callbacks(stack: Alerted) -> list[OpsflowAlertNotifier]:
    """One notifier per route, for ``default_args["on_failure_callback"]`` of every task.

    Airflow runs each callback of the list on its own, and none of ours raises, so a
    dead route never hides the failure from the others. A stack without routes gets an
    empty list (no callback at all).
    """
    return [notifier_for(route, stack_name=stack.name) for route in stack.alerts]


@dataclass(frozen=True)
class DeliveryResult:
    route: str
    delivered: bool


def send_alert(
    stack: Stack,
    context: Mapping[str, Any],
    *,
    extra_lines: Sequence[str] = (),
) -> list[DeliveryResult]:
    """Send a failure alert built from ``context`` to every route of ``stack``, now.

    For code that must say more than the plain failure (e.g. "rolled back to 1.1.0");
    like the callbacks it never raises, and reports per route what was delivered.
    """
    message = AlertMessage.from_context(context, stack=stack.name, extra=extra_lines)
    results = []
    for notifier in failure_callbacks(stack):
        results.append(DeliveryResult(notifier.route, notifier.send(message)))
    return results
