"""Airflow notifiers that deliver an :class:`AlertMessage` to one alert route each.

A notifier never raises out of ``notify``: the failure callback of a task must not fail
itself, and one dead route (Slack down, SMTP refused) must not keep the others from
being tried. Delivery errors are logged as one line whose text went through the secrets
masker and had URL paths and credentials cut, because webhook tokens live in URL paths.
Provider hooks (and the HTTP clients under them) are imported inside methods so that DAG
files importing this module stay cheap to parse.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from airflow.sdk import BaseNotifier

from opsflow.errors import OpsflowError
from opsflow.notifiers.message import AlertMessage, redact_text, truncate

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

DEFAULT_TIMEOUT = 10.0
_URL = re.compile(r"(?P<origin>[A-Za-z][A-Za-z0-9+.-]*://(?:[^/\s@]+@)?[^/\s?#'\"]+)[^\s'\"]*")
_USERINFO = re.compile(r"://[^/\s@]+@")
# requests/urllib3 name the request path without its origin: "... with url: /services/T/B/x".
_BARE_PATH = re.compile(r"(?P<lead>\burl: )/\S*")


class AlertDeliveryError(OpsflowError, RuntimeError):
    """A route could not deliver; the message is already safe to log."""


def _scrub(text: str) -> str:
    text = redact_text(text)
    text = _URL.sub(lambda m: _USERINFO.sub("://***@", m.group("origin")) + "/…", text)
    return _BARE_PATH.sub(r"\g<lead>/…", text)


def safe_error(exc: BaseException) -> str:
    """One log-safe line describing ``exc``: masked, URLs reduced to their origin."""
    line = " ".join(_scrub(str(exc)).split())
    name = type(exc).__name__
    return truncate(f"{name}: {line}" if line else name, 400)


class _ScrubFilter(logging.Filter):
    """Rewrites records of HTTP clients that print request URLs (and so webhook tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrub(record.getMessage())
        record.args = ()
        return True


# Handed to slack_sdk and HttpHook, which log request URLs when they retry or debug.
_client_log = logging.getLogger("opsflow.notifiers.http_client")
_client_log.addFilter(_ScrubFilter())


class OpsflowAlertNotifier(BaseNotifier):
    """Shared behaviour of the opsflow routes: build the message, deliver, log, never raise."""

    kind: ClassVar[str] = "alert"

    def __init__(
        self,
        conn_id: str,
        *,
        stack_name: str | None = None,
        extra_lines: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        if not conn_id:
            raise ValueError(f"{type(self).__name__} needs a connection id, got {conn_id!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.conn_id = conn_id
        self.stack_name = stack_name
        self.extra_lines = tuple(extra_lines)
        self.timeout = timeout

    @property
    def route(self) -> str:
        """Names the route in logs without revealing where it points."""
        return f"{self.kind}:{self.conn_id}"

    def deliver(self, message: AlertMessage) -> None:
        """Send ``message``; raise on any failure (``send`` turns that into a log line)."""
        raise NotImplementedError

    def send(self, message: AlertMessage) -> bool:
        """Deliver and report success; errors are logged, never raised."""
        try:
            self.deliver(message)
        except Exception as exc:
            self.log.error("opsflow alert via %s failed: %s", self.route, safe_error(exc))
            return False
        self.log.info("opsflow alert sent via %s: %s", self.route, message.subject)
        return True

    def notify(self, context: Context) -> None:
        try:
            message = AlertMessage.from_context(
                context, stack=self.stack_name, extra=self.extra_lines
            )
        except Exception as exc:
            self.log.error(
                "opsflow alert via %s: cannot read the failure: %s", self.route, safe_error(exc)
            )
            return
        self.send(message)


class SlackWebhookAlert(OpsflowAlertNotifier):
    """Slack incoming webhook through the slack provider's ``SlackWebhookHook``.

    Connection (type ``slackwebhook``): ``password`` is the webhook token path
    (``T000/B000/XXXX``) or the whole webhook URL; ``host`` the base URL
    (default ``https://hooks.slack.com/services``). The hook requires HTTP 200.
    """

    kind = "slack"
    template_fields: Sequence[str] = ("conn_id", "channel")

    def __init__(
        self,
        conn_id: str,
        channel: str | None = None,
        *,
        stack_name: str | None = None,
        extra_lines: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(conn_id, stack_name=stack_name, extra_lines=extra_lines, timeout=timeout)
        self.channel = channel

    def deliver(self, message: AlertMessage) -> None:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        hook = SlackWebhookHook(
            slack_webhook_conn_id=self.conn_id,
            timeout=max(1, round(self.timeout)),
            logger=_client_log,
        )
        with warnings.catch_warnings():
            # "channel" only works on legacy webhooks; the hook warns about that every time.
            warnings.simplefilter("ignore", UserWarning)
            hook.send_dict(message.slack_payload(self.channel))


class EmailAlert(OpsflowAlertNotifier):
    """Plain-text email through the smtp provider's ``SmtpHook``.

    Connection (type ``smtp``): host, port, login, password; extras as the provider reads
    them (``from_email``, ``disable_ssl``, ``disable_tls``, ``timeout``, ``retry_limit``).
    """

    kind = "email"
    template_fields: Sequence[str] = ("conn_id", "to")

    def __init__(
        self,
        conn_id: str,
        to: Sequence[str],
        *,
        from_email: str | None = None,
        stack_name: str | None = None,
        extra_lines: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(conn_id, stack_name=stack_name, extra_lines=extra_lines, timeout=timeout)
        if isinstance(to, str) or not to:
            raise ValueError(f"EmailAlert needs a non-empty list of addresses, got {to!r}")
        self.to = list(to)
        self.from_email = from_email

    def deliver(self, message: AlertMessage) -> None:
        from email.message import EmailMessage
        from email.utils import formatdate, make_msgid

        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            # The hook builds HTML-only MIME bodies; reuse its connect/TLS/login handling
            # (all connection extras honoured) and send a plain-text message on its client.
            client: Any = getattr(hook, "_smtp_client", None)
            if client is None:
                raise AlertDeliveryError("the SMTP hook opened no client")
            if client.sock is not None:
                # Connecting is bounded by the connection's "timeout" extra; this bounds sending.
                client.sock.settimeout(self.timeout)
            mail = EmailMessage()
            mail["Subject"] = message.subject
            mail["From"] = self.from_email or hook.from_email or "opsflow@localhost"
            mail["To"] = ", ".join(self.to)
            mail["Date"] = formatdate(localtime=True)
            mail["Message-ID"] = make_msgid(domain="opsflow")
            mail["X-Opsflow-Stack"] = message.stack
            mail.set_content(message.body)
            client.send_message(mail, to_addrs=self.to)


class WebhookAlert(OpsflowAlertNotifier):
    """JSON POST of :meth:`AlertMessage.to_dict` through the http provider's ``HttpHook``.

    Connection (type ``http``): ``host`` (a bare host with ``schema``/``port``, or a full
    URL including a path), optional login/password (basic auth); unknown extras are sent
    as headers, as ``HttpHook`` does. Anything but a 2xx answer is a failure.
    """

    kind = "webhook"
    template_fields: Sequence[str] = ("conn_id", "endpoint")

    def __init__(
        self,
        conn_id: str,
        endpoint: str | None = None,
        *,
        stack_name: str | None = None,
        extra_lines: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(conn_id, stack_name=stack_name, extra_lines=extra_lines, timeout=timeout)
        self.endpoint = endpoint

    def deliver(self, message: AlertMessage) -> None:
        from airflow.providers.http.hooks.http import HttpHook

        hook = HttpHook(method="POST", http_conn_id=self.conn_id)
        # The hook logs the request path on connection errors; the path may carry a token.
        hook._log = cast("Any", _client_log)
        response = hook.run(
            endpoint=self.endpoint,
            json=message.to_dict(),
            headers={"Content-Type": "application/json", "User-Agent": "opsflow-alerts"},
            # Our own status check: the hook's logs the response body, which we do not control.
            extra_options={"timeout": self.timeout, "check_response": False},
        )
        status = int(response.status_code)
        if not 200 <= status < 300:
            raise AlertDeliveryError(f"webhook answered HTTP {status}")
