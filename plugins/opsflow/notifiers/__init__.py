"""Failure alerts of a stack's DAGs, routed to Slack, email or a JSON webhook."""

from opsflow.notifiers.alerts import (
    AlertDeliveryError,
    EmailAlert,
    OpsflowAlertNotifier,
    SlackWebhookAlert,
    WebhookAlert,
)
from opsflow.notifiers.message import AlertMessage
from opsflow.notifiers.routes import DeliveryResult, failure_callbacks, notifier_for, send_alert

__all__ = [
    "AlertDeliveryError",
    "AlertMessage",
    "DeliveryResult",
    "EmailAlert",
    "OpsflowAlertNotifier",
    "SlackWebhookAlert",
    "WebhookAlert",
    "failure_callbacks",
    "notifier_for",
    "send_alert",
]
