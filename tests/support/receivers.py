"""Real SMTP and HTTP servers on 127.0.0.1 that keep what alerts send them."""

from __future__ import annotations

import email
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

from support.services import free_port

T = TypeVar("T")


def wait_for_items(items: list[T], count: int, timeout: float) -> list[T]:
    """Wait until a list filled by a server thread holds ``count`` items (or time is up)."""
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return items


@dataclass
class SmtpCapture:
    """A real SMTP server on 127.0.0.1 that keeps what it receives."""

    host: str
    port: int
    login: str
    password: str
    messages: list[Message] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        return wait_for_items(self.messages, count, timeout)


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """aiosmtpd with AUTH (no TLS) accepting only ``capture.login``/``capture.password``."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    capture = SmtpCapture(
        host="127.0.0.1", port=free_port(), login="alerts", password="smtp-Pa55-0f-opsflow"
    )

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content or envelope.content
            capture.envelopes.append(
                {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)}
            )
            capture.messages.append(email.message_from_bytes(content))
            return "250 Message accepted for delivery"

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = login == capture.login and auth_data.password.decode() == capture.password
        if ok:
            capture.logins.append(login)
        return AuthResult(success=ok)

    controller = Controller(
        Handler(),
        hostname=capture.host,
        port=capture.port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield capture
    finally:
        controller.stop()


@dataclass
class HttpCapture:
    """A real HTTP server on 127.0.0.1 recording every request; answers ``status``."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    reply: bytes = b"ok"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def json_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.requests]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_for_items(self.requests, count, timeout)


@pytest.fixture
def http_receiver() -> Iterator[HttpCapture]:
    """``http.server`` in a thread, capturing method, path, headers and body of requests."""
    capture = HttpCapture(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            capture.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode("utf-8", "replace"),
                }
            )
            self.send_response(capture.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(capture.reply)))
            self.end_headers()
            self.wfile.write(capture.reply)

        do_POST = _record
        do_GET = _record
        do_PUT = _record

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    capture.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def smtp_connection(smtp: SmtpCapture) -> dict[str, str]:
    """``smtp_default`` pointing at the capture: the email route of every stack that has one."""
    return {
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(
            {
                "conn_type": "smtp",
                "host": smtp.host,
                "port": smtp.port,
                "login": smtp.login,
                "password": smtp.password,
                "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 0},
            }
        ),
    }


def alert_connections(smtp: SmtpCapture, receiver: HttpCapture) -> dict[str, str]:
    """Environment giving the demo stack's alert routes real endpoints."""
    return {
        "AIRFLOW_CONN_DEMO_ALERT_WEBHOOK": json.dumps(
            {"conn_type": "http", "host": f"{receiver.base_url}/alerts"}
        ),
        **smtp_connection(smtp),
    }
