"""``http``: a status in ``expect_status`` and, optionally, fields of a JSON body."""

from __future__ import annotations

import ipaddress
import json
import reprlib
import socket
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from opsflow.addresses import LINK_LOCAL_REASON, is_link_local
from opsflow.durations import Duration
from opsflow.health.common import (
    CheckKind,
    CheckModel,
    CheckResult,
    Endpoint,
    ServiceProbe,
    body_excerpt,
    clip,
    endpoint_address,
    one_address,
    probe_host,
    resolved_refusal,
)

MAX_BODY_BYTES = 1 << 20
"""Most bytes of a response body read; a JSON check of a larger body fails."""


class HttpCheck(CheckModel):
    """``url``, or ``scheme://<where endpoint is published><path>`` found at check time."""

    kind: Literal["http"]
    url: str | None = Field(default=None, pattern=r"^https?://")
    endpoint: Endpoint | None = None
    path: str | None = Field(default=None, pattern=r"^/")  # with endpoint; "/" when unset
    scheme: Literal["http", "https"] | None = None  # with endpoint; "http" when unset
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    # Dotted JSON path -> expected value, e.g. {"status": "healthy"}.
    expect_json: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration = timedelta(seconds=5)

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_address(self) -> HttpCheck:
        one_address(self.url, self.endpoint, "url")
        if self.url is not None and (self.path is not None or self.scheme is not None):
            raise ValueError("path and scheme go with endpoint; a url carries its own")
        return self

    @field_validator("url")
    @classmethod
    def _url_host(cls, url: str | None) -> str | None:
        if url is None:
            return url
        try:
            host = urlsplit(url).hostname
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from None
        if not host:
            raise ValueError("the URL names no host")
        probe_host(host)
        return url


def http_name(check: HttpCheck) -> str:
    where = check.url or f"{check.scheme or 'http'}://{check.endpoint}{check.path or '/'}"
    return f"http {check.method} {where}"


def _url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


_GUARDED_RESOLVER: Any = None


def _guarded_resolver() -> Any:
    """An aiohttp resolver that refuses link-local answers, so a name cannot be re-pointed
    at one between the refusal check and the connection (DNS rebinding)."""
    global _GUARDED_RESOLVER
    if _GUARDED_RESOLVER is None:
        import aiohttp

        class GuardedResolver(aiohttp.ThreadedResolver):
            async def resolve(
                self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
            ) -> list[Any]:
                found = await super().resolve(host, port, family)
                for entry in found:
                    address = ipaddress.ip_address(str(entry["host"]).split("%", 1)[0])
                    if is_link_local(address):
                        raise OSError(f"{host} resolves to {address}, which {LINK_LOCAL_REASON}")
                return list(found)

        _GUARDED_RESOLVER = GuardedResolver
    return _GUARDED_RESOLVER()


_MISSING = object()
_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxstring, _VALUE_REPR.maxother, _VALUE_REPR.maxlevel = 60, 60, 2


def _json_path(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


async def check_http(check: HttpCheck, runtime: ServiceProbe | None = None) -> CheckResult:
    """Status in ``expect_status`` and every ``expect_json`` dotted path equal to its value."""
    name = http_name(check)
    url = check.url or ""
    if check.endpoint is not None:
        host, port = await endpoint_address(check.endpoint, runtime)
        address = f"[{host}]" if ":" in host else host
        url = f"{check.scheme or 'http'}://{address}:{port}{check.path or '/'}"
    refusal = await resolved_refusal(*_url_host_port(url))
    if refusal is not None:
        return CheckResult(name, False, refusal)
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=check.timeout.total_seconds())
    connector = aiohttp.TCPConnector(resolver=_guarded_resolver())
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        session.request(check.method, url) as response,
    ):
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BODY_BYTES:
            chunk = await response.content.read(MAX_BODY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
    if response.status not in check.expect_status:
        snippet = body_excerpt(body)
        detail = f"status {response.status}, expected {check.expect_status}"
        return CheckResult(name, False, f"{detail}: {snippet}" if snippet else detail)
    if check.expect_json and size > MAX_BODY_BYTES:
        return CheckResult(
            name, False, f"status {response.status} but the body is over {MAX_BODY_BYTES} bytes"
        )
    if check.expect_json:
        try:
            document = json.loads(body)
        except ValueError as exc:
            return CheckResult(name, False, f"status {response.status} but body is not JSON: {exc}")
        wrong = []
        for path, expected in check.expect_json.items():
            actual = _json_path(document, path)
            if actual is _MISSING:
                wrong.append(f"{path} missing (expected {expected!r})")
            elif actual != expected:
                wrong.append(f"{path} is {_VALUE_REPR.repr(actual)}, expected {expected!r}")
        if wrong:
            return CheckResult(name, False, clip("; ".join(wrong)))
    return CheckResult(name, True, f"status {response.status}")


KIND = CheckKind(HttpCheck, name=http_name, probe=check_http)
