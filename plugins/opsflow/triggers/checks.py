"""Async health probes, one per check kind, shared by the health gate trigger.

Every probe returns a :class:`CheckResult` and never raises: a failed probe, a timeout or
an unexpected error all become ``ok=False`` with the error's first line, so one broken
check cannot abort a gate round. Client libraries are imported inside the probes because
this module is imported (through the sensors) at DAG-parse time.

A health URL or host that resolves to a link-local address (cloud metadata at
169.254.169.254) is never probed: the stack loader refuses such literals, and the probes
refuse names that resolve there. What a check reports comes from the service probed, so
every detail is bounded and scrubbed of things that look like secrets before it travels
in an event and into task logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import reprlib
import socket
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter

from opsflow.stack.model import (
    ComposeRuntime,
    ContainerCheck,
    GrpcCheck,
    HealthCheck,
    HttpCheck,
    PostgresCheck,
    RedisCheck,
    TcpCheck,
)
from opsflow.stack.safety import LINK_LOCAL_REASON, is_link_local, link_local_problem

CONTAINER_CHECK_TIMEOUT = 15.0
"""Seconds a container check may take (``docker compose ps`` plus ``docker inspect``)."""

_DETAIL_LIMIT = 300
BODY_EXCERPT_LIMIT = 200
"""Characters of a failing response body that are reported (after scrubbing)."""
MAX_BODY_BYTES = 1 << 20
"""Most bytes of a response body read; a JSON check of a larger body fails."""

_CHECK_ADAPTER: TypeAdapter[HealthCheck] = TypeAdapter(HealthCheck)
_CHECKS_ADAPTER: TypeAdapter[list[HealthCheck]] = TypeAdapter(list[HealthCheck])
_CHECK_TYPES = (HttpCheck, TcpCheck, PostgresCheck, RedisCheck, GrpcCheck, ContainerCheck)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one probe; ``detail`` is the error, or short success information."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ComposeContext:
    """What ``docker compose`` needs to find a project; travels to the triggerer as a dict."""

    project: str
    working_dir: str
    files: list[str] = field(default_factory=lambda: ["docker-compose.yml"])
    env_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "working_dir": self.working_dir,
            "files": list(self.files),
            "env_file": self.env_file,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComposeContext:
        unknown = set(data) - {"project", "working_dir", "files", "env_file"}
        if unknown:
            raise ValueError(f"unknown compose context keys: {sorted(unknown)}")
        project = data.get("project")
        working_dir = data.get("working_dir")
        if not isinstance(project, str) or not project:
            raise ValueError(f"compose context needs a project name, got {project!r}")
        if not isinstance(working_dir, str) or not working_dir:
            raise ValueError(f"compose context needs a working_dir, got {working_dir!r}")
        files = data.get("files") or ["docker-compose.yml"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise ValueError(f"compose context files must be a list of strings, got {files!r}")
        env_file = data.get("env_file")
        if env_file is not None and not isinstance(env_file, str):
            raise ValueError(f"compose context env_file must be a string, got {env_file!r}")
        return cls(project=project, working_dir=working_dir, files=files, env_file=env_file)

    @classmethod
    def from_runtime(cls, runtime: ComposeRuntime, working_dir: str | Path) -> ComposeContext:
        """From a stack's compose runtime and its resolved (absolute) working dir."""
        return cls(
            project=runtime.project,
            working_dir=str(working_dir),
            files=list(runtime.files),
            env_file=runtime.env_file,
        )

    def base_argv(self, *, with_files: bool = True) -> list[str]:
        """``docker compose`` bound to the project, as the runtime builds it.

        Without files only the project name is passed: enough for ``ps``, which finds
        containers by label, and it does not fail on files that need unset variables.
        """
        from opsflow.runtimes.compose import compose_base_argv

        if not with_files:
            return ["docker", "compose", "--project-name", self.project]
        return compose_base_argv(self.project, self.working_dir, self.files, self.env_file)


def check_to_data(check: HealthCheck) -> dict[str, Any]:
    """JSON-able form of a check that :func:`check_from_data` reads back.

    Durations become float seconds: pydantic's JSON form of a timedelta (``PT5S``) is not
    accepted back by the stack model's duration parser.
    """
    data = check.model_dump(mode="json")
    for key, value in check.model_dump(mode="python").items():
        if isinstance(value, timedelta):
            data[key] = value.total_seconds()
    return data


def check_from_data(data: Mapping[str, Any] | HealthCheck) -> HealthCheck:
    """Validate one check given as a model or as plain data (as stored in trigger kwargs)."""
    if isinstance(data, _CHECK_TYPES):
        return data
    return _CHECK_ADAPTER.validate_python(data)


def checks_from_data(data: list[Any]) -> list[HealthCheck]:
    return _CHECKS_ADAPTER.validate_python(
        [check_to_data(c) if not isinstance(c, Mapping) else c for c in data]
    )


def check_name(check: HealthCheck) -> str:
    """Stable, human-readable name of a check, used in events and failure messages."""
    if isinstance(check, HttpCheck):
        return f"http {check.method} {check.url}"
    if isinstance(check, TcpCheck):
        return f"tcp {check.host}:{check.port}"
    if isinstance(check, PostgresCheck):
        return f"postgres {check.conn_id}"
    if isinstance(check, RedisCheck):
        return f"redis {check.conn_id}"
    if isinstance(check, GrpcCheck):
        return f"grpc {check.target} {check.service or '(server)'}"
    return f"container {check.service}"


def check_timeout(check: HealthCheck) -> float:
    if isinstance(check, ContainerCheck):
        return CONTAINER_CHECK_TIMEOUT
    return check.timeout.total_seconds()


def first_line(exc: BaseException) -> str:
    """Error's type and first message line, short enough for an event and a log line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    message = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return _clip(message)


def _clip(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """One scrubbed line of at most ``limit`` characters (scrubbed before it is cut, so a
    secret across the cut is still caught)."""
    text = scrub(" ".join(text[: limit * 4].split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Secrets as services print them: URL userinfo, auth schemes, key=value and "key": "value"
# pairs with a secret-sounding key, JWTs, AWS access key ids.
_SENSITIVE_WORDS = "|".join(
    ("password", "passwd", "pwd", "secret", "token", "api[_-]?key", "apikey", "access[_-]?key",
     "private[_-]?key", "credential", "authorization", "session", "cookie", "signature")
)  # fmt: skip
_SENSITIVE_KEY = rf"[\"']?\b[\w.-]*(?:{_SENSITIVE_WORDS})[\w.-]*[\"']?\s*[:=]\s*"
_QUOTED_OR_PLAIN = r"\"[^\"]*\"?|'[^']*'?|[^\s,;&}\]]+"
_SCRUBS = (
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/\s:@]+(?::[^/\s@]*)?|:[^/\s@]*)@"), r"\1***@"),
    (re.compile(r"(?i)\b(bearer|basic|token|digest)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 ***"),
    (re.compile(rf"(?i)({_SENSITIVE_KEY})(?:{_QUOTED_OR_PLAIN})"), r"\1***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
)


def _airflow_redact() -> Any:
    """Airflow's secrets masker (it knows the connections' passwords), when importable."""
    import importlib
    import warnings

    for module in (
        "airflow.sdk._shared.secrets_masker",
        "airflow.sdk.execution_time.secrets_masker",
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the second path is deprecated
                return importlib.import_module(module).redact
        except (ImportError, AttributeError):
            continue
    return None


def scrub(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``***``."""
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    redact = _airflow_redact()
    if redact is not None:
        with contextlib.suppress(Exception):  # the regexes above already ran
            text = str(redact(text))
    return text


def body_excerpt(body: bytes) -> str:
    """At most :data:`BODY_EXCERPT_LIMIT` characters of a response body, scrubbed."""
    return _clip(body[: BODY_EXCERPT_LIMIT * 8].decode("utf-8", "replace"), BODY_EXCERPT_LIMIT)


_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxstring, _VALUE_REPR.maxother, _VALUE_REPR.maxlevel = 60, 60, 2


# --------------------------------------------------------------------------- link-local


async def resolved_refusal(host: str, port: int) -> str | None:
    """Why ``host`` must not be probed: it is, or resolves to, a link-local address.

    A name that does not resolve is left to the probe, which reports that itself.
    """
    problem = link_local_problem(host)
    if problem is not None:
        return f"refused: {problem}"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if is_link_local(address):
            return f"refused: {host} resolves to {address}, which {LINK_LOCAL_REASON}"
    return None


def _url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


_GUARDED_RESOLVER: Any = None


def _guarded_resolver() -> Any:
    """An aiohttp resolver that refuses link-local answers, so a name cannot be re-pointed
    at one between the check above and the connection (DNS rebinding)."""
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


# --------------------------------------------------------------------------- http

_MISSING = object()


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


async def check_http(check: HttpCheck) -> CheckResult:
    """Status in ``expect_status`` and every ``expect_json`` dotted path equal to its value."""
    name = check_name(check)
    refusal = await resolved_refusal(*_url_host_port(check.url))
    if refusal is not None:
        return CheckResult(name, False, refusal)
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=check.timeout.total_seconds())
    connector = aiohttp.TCPConnector(resolver=_guarded_resolver())
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        session.request(check.method, check.url) as response,
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
            return CheckResult(name, False, _clip("; ".join(wrong)))
    return CheckResult(name, True, f"status {response.status}")


# --------------------------------------------------------------------------- tcp


async def check_tcp(check: TcpCheck) -> CheckResult:
    """Connect to the addresses the host resolved to, after refusing link-local ones."""
    name = check_name(check)
    refusal = await resolved_refusal(check.host, check.port)
    if refusal is not None:
        return CheckResult(name, False, refusal)
    infos = await asyncio.get_running_loop().getaddrinfo(
        check.host, check.port, type=socket.SOCK_STREAM
    )
    error: OSError | None = None
    for info in infos:
        try:
            _reader, writer = await asyncio.open_connection(str(info[4][0]), check.port)
            break
        except OSError as exc:
            error = error or exc
    else:
        raise error or OSError(f"{check.host} resolved to no address")
    writer.close()
    # The port accepted the connection, which is all this check asks.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(name, True, "connected")


# --------------------------------------------------------------------------- postgres / redis


async def _connection(conn_id: str) -> Any:
    """The Airflow connection, through the SDK's async path (safe in the triggerer's loop)."""
    from airflow.sdk import BaseHook

    return await BaseHook.aget_connection(conn_id)


async def _extra(connection: Any) -> dict[str, Any]:
    getter = getattr(connection, "aextra_dejson", None)
    if getter is not None:
        extra = await getter()
    else:
        extra = connection.extra_dejson
    return dict(extra or {})


_PG_EXTRA = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "options")


async def check_postgres(check: PostgresCheck) -> CheckResult:
    """``SELECT 1`` with the connection's credentials (they never leave this function)."""
    name = check_name(check)
    import psycopg

    connection = await _connection(check.conn_id)
    extra = await _extra(connection)
    params: dict[str, Any] = {
        "host": connection.host or "127.0.0.1",
        "port": int(connection.port or 5432),
        "user": connection.login or None,
        "password": connection.password or None,
        "dbname": connection.schema or extra.get("dbname") or "postgres",
        "connect_timeout": max(1, int(check.timeout.total_seconds())),
    }
    params.update({key: extra[key] for key in _PG_EXTRA if key in extra})
    params = {key: value for key, value in params.items() if value is not None}
    async with await psycopg.AsyncConnection.connect(**params, autocommit=True) as conn:
        cursor = await conn.execute("SELECT 1")
        row = await cursor.fetchone()
        version = conn.info.server_version
    if not row or row[0] != 1:
        return CheckResult(name, False, f"SELECT 1 returned {row!r}")
    return CheckResult(name, True, f"SELECT 1 ok (server {version})")


async def check_redis(check: RedisCheck) -> CheckResult:
    name = check_name(check)
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    connection = await _connection(check.conn_id)
    extra = await _extra(connection)
    db = extra.get("db")
    if db is None and connection.schema and str(connection.schema).isdigit():
        db = connection.schema
    timeout = check.timeout.total_seconds()
    client = aioredis.Redis(
        host=connection.host or "127.0.0.1",
        port=int(connection.port or 6379),
        username=connection.login or None,
        password=connection.password or None,
        db=int(db or 0),
        ssl=bool(extra.get("ssl", False)),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # The gate retries by rounds; a client retrying a refused password only hides it.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        pong = await client.ping()
    finally:
        await client.aclose()
    if pong is not True:
        return CheckResult(name, False, f"PING answered {pong!r}")
    return CheckResult(name, True, "PONG")


# --------------------------------------------------------------------------- grpc


async def check_grpc(check: GrpcCheck) -> CheckResult:
    name = check_name(check)
    host, _, port = check.target.rpartition(":")
    refusal = await resolved_refusal(host.strip("[]"), int(port))
    if refusal is not None:
        return CheckResult(name, False, refusal)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(check.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=check.service),
                timeout=check.timeout.total_seconds(),
            )
        except grpc.aio.AioRpcError as exc:
            return CheckResult(name, False, _clip(f"{exc.code().name}: {exc.details() or ''}"))
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return CheckResult(name, response.status == health_pb2.HealthCheckResponse.SERVING, status)


# --------------------------------------------------------------------------- container


async def _run(argv: list[str], cwd: str | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd if cwd and Path(cwd).is_dir() else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await process.communicate()
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    code = process.returncode or 0
    return code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")


def parse_compose_ps(output: str) -> list[dict[str, Any]]:
    """``docker compose ps --format json`` prints one object per line (v2.21+) or an array."""
    text = output.strip()
    if not text:
        return []
    if text.startswith("["):
        rows = json.loads(text)
        return [row for row in rows if isinstance(row, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def _last_health_output(container: str) -> str:
    code, out, _err = await _run(
        ["docker", "inspect", "--format", "{{json .State.Health}}", container]
    )
    if code != 0:
        return ""
    try:
        health = json.loads(out)
    except ValueError:
        return ""
    logs = (health or {}).get("Log") or []
    if not logs:
        return ""
    last = logs[-1]
    output = _clip(str(last.get("Output", "")))
    return f"exit {last.get('ExitCode')}: {output}" if output else f"exit {last.get('ExitCode')}"


async def _describe_container(row: Mapping[str, Any]) -> tuple[bool, str]:
    container = str(row.get("Name") or row.get("ID") or "?")
    state = str(row.get("State") or "").lower()
    health = str(row.get("Health") or "").lower()
    if state != "running":
        status = row.get("Status") or state or "unknown state"
        return False, f"{container} not running ({status})"
    if health in ("", "none"):
        return True, f"{container} running (no healthcheck)"
    if health == "healthy":
        return True, f"{container} healthy"
    last = await _last_health_output(container)
    return False, f"{container} {health}" + (f", last check {last}" if last else "")


async def check_container(check: ContainerCheck, compose: ComposeContext | None) -> CheckResult:
    """Compose service healthy, or running when its container has no healthcheck."""
    name = check_name(check)
    if compose is None:
        return CheckResult(name, False, "no compose project given for a container check")
    argv = [*compose.base_argv(with_files=False), "ps", "--all", "--format", "json"]
    code, out, err = await _run(argv, cwd=compose.working_dir)
    if code != 0:
        lines = (err or out).strip().splitlines()
        detail = f"docker compose ps failed ({code}): {lines[0] if lines else ''}"
        return CheckResult(name, False, _clip(detail))
    rows = [row for row in parse_compose_ps(out) if row.get("Service") == check.service]
    if not rows:
        return CheckResult(
            name,
            False,
            f"not running: no container for service {check.service!r} in project "
            f"{compose.project!r}",
        )
    outcomes = [await _describe_container(row) for row in rows]
    failing = [text for ok, text in outcomes if not ok]
    if failing:
        return CheckResult(name, False, _clip("; ".join(failing)))
    return CheckResult(name, True, _clip("; ".join(text for _ok, text in outcomes)))


# --------------------------------------------------------------------------- dispatch


async def run_check(check: HealthCheck, compose: ComposeContext | None = None) -> CheckResult:
    """Run one check under its own timeout; every failure becomes ``ok=False``."""
    name = check_name(check)
    timeout = check_timeout(check)
    probe: Awaitable[CheckResult]
    if isinstance(check, HttpCheck):
        probe = check_http(check)
    elif isinstance(check, TcpCheck):
        probe = check_tcp(check)
    elif isinstance(check, PostgresCheck):
        probe = check_postgres(check)
    elif isinstance(check, RedisCheck):
        probe = check_redis(check)
    elif isinstance(check, GrpcCheck):
        probe = check_grpc(check)
    else:
        probe = check_container(check, compose)
    try:
        return await asyncio.wait_for(probe, timeout=timeout)
    except TimeoutError:
        return CheckResult(name, False, f"timed out after {timeout:g}s")
    except Exception as exc:
        return CheckResult(name, False, first_line(exc))
