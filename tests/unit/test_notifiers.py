"""Alert message rendering, route building, and delivery to local receivers."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from opsflow.notifiers import (
    AlertMessage,
    EmailAlert,
    SlackWebhookAlert,
    WebhookAlert,
    failure_callbacks,
    send_alert,
)
from opsflow.notifiers.alerts import safe_error
from opsflow.notifiers.message import ERROR_MAX_CHARS, error_first_line
from opsflow.stack.model import Stack
from support.receivers import HttpCapture, SmtpCapture
from support.services import free_port

STARTED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
LOG_URL = "http://airflow.test:8080/dags/demo__deploy/runs/manual__1/tasks/verify?try_number=2"


def _context(error: object = None, **ti_fields: Any) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="demo__deploy",
        task_id="verify",
        run_id="manual__1",
        try_number=2,
        map_index=-1,
        start_date=STARTED,
        log_url=LOG_URL,
    )
    for key, value in ti_fields.items():
        setattr(ti, key, value)
    return {
        "ti": ti,
        "exception": error if error is not None else RuntimeError("health gate timed out"),
        "logical_date": STARTED,
        "run_id": "manual__1",
    }


def _stack(alerts: list[dict[str, Any]]) -> Stack:
    return Stack.model_validate(
        {
            "name": "demo",
            "runtime": {"kind": "compose", "project": "demo", "working_dir": "."},
            "services": [{"name": "api"}],
            "alerts": alerts,
        }
    )


def _register_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def _logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> str:
    """Everything logged so far: Airflow's structlog writes to the process's stdout."""
    out, err = capfd.readouterr()
    return caplog.text + out + err


# ----------------------------------------------------------------------------- message


def test_message_from_context_collects_fields() -> None:
    message = AlertMessage.from_context(_context(), stack="demo", extra=["rolled back to 1.1.0"])

    assert message.stack == "demo"
    assert (message.dag_id, message.task_id) == ("demo__deploy", "verify")
    assert message.run_id == "manual__1"
    assert message.try_number == 2
    assert message.error == "RuntimeError: health gate timed out"
    assert message.log_url == LOG_URL
    assert message.logical_date == message.start_date == "2025-03-04T05:06:07+00:00"
    assert message.subject == "[opsflow] demo__deploy failed: verify (try 2)"
    body = message.body
    for expected in (
        "stack:        demo",
        "task:         verify",
        "run:          manual__1",
        "try:          2",
        "error:        RuntimeError: health gate timed out",
        f"log:          {LOG_URL}",
        "rolled back to 1.1.0",
    ):
        assert expected in body
    payload = message.to_dict()
    assert payload["event"] == "task_failed"
    assert payload["extra"] == ["rolled back to 1.1.0"]
    assert json.loads(json.dumps(payload)) == payload


def test_stack_name_defaults_to_dag_id_prefix_and_mapped_task_is_labelled() -> None:
    message = AlertMessage.from_context(_context(map_index=3))
    assert message.stack == "demo"
    assert message.subject == "[opsflow] demo__deploy failed: verify[3] (try 2)"


def test_log_url_is_built_from_api_base_url_without_runtime_ti(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.test/")
    context = _context()
    del context["ti"].log_url
    message = AlertMessage.from_context(context)
    assert message.log_url == (
        "https://airflow.example.test/dags/demo__deploy/runs/manual__1/tasks/verify?try_number=2"
    )


def test_error_keeps_only_first_line_and_is_truncated() -> None:
    multi = ValueError("first line of the problem\n  Traceback detail\nmore")
    assert error_first_line(multi) == "ValueError: first line of the problem"
    assert error_first_line(RuntimeError()) == "RuntimeError"
    assert error_first_line("\n\n  plain string error \n x") == "plain string error"
    assert error_first_line(None) == "no exception recorded"

    long_line = error_first_line(RuntimeError("x" * 5000))
    assert len(long_line) == ERROR_MAX_CHARS
    assert long_line.endswith("…")


def test_error_masks_connection_secrets_and_url_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.sdk import BaseHook

    secret = "pg-Secret-7Hq2-unit-test"
    _register_connection(
        monkeypatch, "unit_pg_mask", conn_type="postgres", host="db", password=secret
    )
    BaseHook.get_connection("unit_pg_mask")  # fetching a connection registers its secret

    error = RuntimeError(f"auth failed for {secret} via postgresql://app:hunter2@db:5432/app")
    message = AlertMessage.from_context(_context(error), extra=[f"token was {secret}"])
    assert secret not in message.error
    assert "***" in message.error
    assert "hunter2" not in message.error
    assert "postgresql://***@db:5432/app" in message.error
    assert secret not in message.body
    assert secret not in json.dumps(message.to_dict())
    assert message.extra == ("token was ***",)


def test_masking_happens_before_truncation() -> None:
    from airflow.sdk.log import mask_secret

    secret = "trunc-Secret-Value-0123456789"
    mask_secret(secret)
    # The secret straddles the truncation point: cutting first would leak a prefix.
    error = RuntimeError("a" * (ERROR_MAX_CHARS - 20) + secret)
    line = error_first_line(error)
    assert "trunc-Secret" not in line
    assert line.endswith("…") or line.endswith("***")


def test_slack_payload_escapes_and_names_channel() -> None:
    message = AlertMessage.from_context(_context(RuntimeError("a < b & c > d")))
    payload = message.slack_payload("#ops")
    assert payload["channel"] == "#ops"
    assert payload["text"].startswith("[opsflow] demo__deploy failed: verify (try 2)")
    rendered = json.dumps(payload["blocks"])
    assert "a &lt; b &amp; c &gt; d" in rendered
    assert f"<{LOG_URL}|View task log>" in rendered


def test_safe_error_strips_url_paths_and_credentials() -> None:
    exc = ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: "
        "/services/T0/B0/tok3n (Caused by x) see https://u:pw@hooks.example/services/T0/B0/tok3n"
    )
    text = safe_error(exc)
    assert "tok3n" not in text
    assert "pw@" not in text
    assert "https://***@hooks.example/…" in text


# ----------------------------------------------------------------------------- routes


def test_failure_callbacks_build_one_notifier_per_route() -> None:
    stack = _stack(
        [
            {"kind": "slack", "conn_id": "slack_ops", "channel": "#ops"},
            {"kind": "email", "conn_id": "smtp_ops", "to": ["ops@example.test"]},
            {"kind": "webhook", "conn_id": "hook_ops"},
        ]
    )
    slack, mail, hook = failure_callbacks(stack)
    assert isinstance(slack, SlackWebhookAlert)
    assert (slack.conn_id, slack.channel, slack.stack_name) == ("slack_ops", "#ops", "demo")
    assert isinstance(mail, EmailAlert)
    assert (mail.conn_id, mail.to, mail.stack_name) == ("smtp_ops", ["ops@example.test"], "demo")
    assert isinstance(hook, WebhookAlert)
    assert (hook.conn_id, hook.stack_name) == ("hook_ops", "demo")
    assert [n.route for n in (slack, mail, hook)] == [
        "slack:slack_ops",
        "email:smtp_ops",
        "webhook:hook_ops",
    ]
    assert failure_callbacks(_stack([])) == []


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="list of addresses"):
        EmailAlert("smtp_ops", "ops@example.test")
    with pytest.raises(ValueError, match="connection id"):
        WebhookAlert("")
    with pytest.raises(ValueError, match="timeout"):
        SlackWebhookAlert("slack_ops", timeout=0)


# ----------------------------------------------------------------------------- delivery


def test_failing_route_does_not_block_the_others(
    monkeypatch: pytest.MonkeyPatch,
    http_receiver: HttpCapture,
    smtp_server: SmtpCapture,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    slack_token = "T0DEAD/B0DEAD/closedPortToken123"
    dead_port = free_port()
    _register_connection(
        monkeypatch,
        "unit_slack_dead",
        conn_type="slackwebhook",
        host=f"http://127.0.0.1:{dead_port}",
        password=slack_token,
    )
    _register_connection(
        monkeypatch,
        "unit_smtp_ok",
        conn_type="smtp",
        host=smtp_server.host,
        port=smtp_server.port,
        login=smtp_server.login,
        password=smtp_server.password,
        extra={"disable_ssl": True, "disable_tls": True, "from_email": "opsflow@example.test"},
    )
    _register_connection(
        monkeypatch,
        "unit_hook_ok",
        conn_type="http",
        host=f"{http_receiver.base_url}/alerts",
    )
    stack = _stack(
        [
            {"kind": "slack", "conn_id": "unit_slack_dead"},
            {"kind": "email", "conn_id": "unit_smtp_ok", "to": ["ops@example.test"]},
            {"kind": "webhook", "conn_id": "unit_hook_ok"},
        ]
    )
    caplog.set_level(logging.INFO)

    results = send_alert(stack, _context(), extra_lines=["rolled back to 1.1.0"])

    assert [(r.route, r.delivered) for r in results] == [
        ("slack:unit_slack_dead", False),
        ("email:unit_smtp_ok", True),
        ("webhook:unit_hook_ok", True),
    ]
    [mail] = smtp_server.messages
    text = mail.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert "rolled back to 1.1.0" in text.decode()
    [request] = http_receiver.requests
    assert request["path"] == "/alerts"
    assert json.loads(request["body"])["extra"] == ["rolled back to 1.1.0"]
    logged = _logged(caplog, capfd)
    assert "opsflow alert via slack:unit_slack_dead failed: URLError" in logged
    assert "closedPortToken123" not in logged
    assert smtp_server.password not in logged


def test_notifier_called_as_callback_never_raises(
    monkeypatch: pytest.MonkeyPatch,
    http_receiver: HttpCapture,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    http_receiver.status = 500
    _register_connection(
        monkeypatch,
        "unit_hook_500",
        conn_type="http",
        host="127.0.0.1",
        port=http_receiver.port,
        password="hook-Basic-Auth-Secret",
        login="opsflow",
    )
    notifier = WebhookAlert("unit_hook_500", stack_name="demo")
    caplog.set_level(logging.INFO)

    notifier(_context())  # the way Airflow calls an on_failure_callback

    [request] = http_receiver.requests
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["authorization"].startswith("Basic ")
    logged = _logged(caplog, capfd)
    assert "opsflow alert via webhook:unit_hook_500 failed" in logged
    assert "webhook answered HTTP 500" in logged
    assert "hook-Basic-Auth-Secret" not in logged


def test_slack_route_posts_incoming_webhook_payload(
    monkeypatch: pytest.MonkeyPatch, http_receiver: HttpCapture
) -> None:
    _register_connection(
        monkeypatch,
        "unit_slack_ok",
        conn_type="slackwebhook",
        host=http_receiver.base_url,
        password="T000/B000/slackUnitToken",
    )
    notifier = SlackWebhookAlert("unit_slack_ok", "#ops", stack_name="demo")

    assert notifier.send(AlertMessage.from_context(_context(), stack="demo"))

    [request] = http_receiver.requests
    assert request["method"] == "POST"
    assert request["path"] == "/T000/B000/slackUnitToken"
    body = json.loads(request["body"])
    assert body["channel"] == "#ops"
    assert body["text"].startswith("[opsflow] demo__deploy failed: verify (try 2)")
    assert "RuntimeError: health gate timed out" in json.dumps(body["blocks"])
