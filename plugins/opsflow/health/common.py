"""What every health-check kind shares: the result, the model base, and the rules for what
a check may report and which addresses it may probe.

What a check reports comes from the service probed, so every detail is bounded and
scrubbed of things that look like secrets before it travels in an event and into task
logs. A host that is, or resolves to, a link-local address (cloud metadata at
169.254.169.254) is never probed: the models refuse such literals, and the probes refuse
names that resolve there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from opsflow.addresses import LINK_LOCAL_REASON, is_link_local, link_local_problem

DETAIL_LIMIT = 300
BODY_EXCERPT_LIMIT = 200
"""Characters of a failing response body that are reported (after scrubbing)."""


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one probe; ``detail`` is the error, or short success information."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckModel(BaseModel):
    """Base of every check model: unknown keys are errors, checks are immutable, and
    ``kind`` (a ``Literal`` in each subclass) tells them apart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


class ServiceProbe(Protocol):
    """What the checks need from the runtime that runs the stack: its own verdict on one
    service, and where a service's port is published (``runtimes.base.RuntimeContext`` is
    one)."""

    async def probe_service(self, service: str) -> tuple[bool, str]: ...

    async def published(self, service: str, port: int) -> tuple[str, int]:
        """Host address and port where ``service`` publishes its container ``port``;
        raises with the reason when it does not."""
        ...


class Endpoint(BaseModel):
    """A service's container port, found on the host through the runtime when the check
    runs: the check stays right when an operator moves the published port (in ``.env``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = Field(min_length=1, max_length=128)
    port: int = Field(ge=1, le=65535)

    def __str__(self) -> str:
        return f"{self.service}:{self.port}"


async def endpoint_address(endpoint: Endpoint, runtime: ServiceProbe | None) -> tuple[str, int]:
    """Where ``endpoint`` answers on this host now, as the runtime publishes it."""
    if runtime is None:
        raise LookupError(f"{endpoint}: finding a published port needs the stack's runtime")
    return await runtime.published(endpoint.service, endpoint.port)


def one_address(direct: object, endpoint: Endpoint | None, names: str) -> None:
    """Model rule: a check names its address one way, directly or as an endpoint."""
    if (direct is None) == (endpoint is None):
        raise ValueError(f"give either {names} or endpoint ({{service, port}}), not both")


M = TypeVar("M", bound=CheckModel)


def own_timeout(check: Any) -> float:
    """Seconds a check may take: its own ``timeout`` field."""
    timeout: timedelta = check.timeout
    return timeout.total_seconds()


@dataclass(frozen=True)
class CheckKind(Generic[M]):
    """One kind of check as the registry knows it: its model, how it is named in events
    and messages, how long it may take, and its probe.

    The probe may raise: the registry's ``run_check`` turns every error and timeout into a
    failed result. Client libraries are imported inside the probe, since the models are
    imported at DAG-parse time.
    """

    model: type[M]
    name: Callable[[M], str]
    probe: Callable[[M, ServiceProbe | None], Awaitable[CheckResult]]
    timeout: Callable[[M], float] = own_timeout

    @property
    def kind(self) -> str:
        """The ``kind`` value of the model's ``Literal``."""
        values: tuple[Any, ...] = getattr(
            self.model.model_fields["kind"].annotation, "__args__", ()
        )
        if len(values) != 1 or not isinstance(values[0], str):
            raise TypeError(f"{self.model.__name__}.kind must be a Literal of one string")
        return str(values[0])


# --------------------------------------------------------------------------- details


def first_line(exc: BaseException) -> str:
    """Error's type and first message line, short enough for an event and a log line."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    message = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return clip(message)


def clip(text: str, limit: int = DETAIL_LIMIT) -> str:
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
    return clip(body[: BODY_EXCERPT_LIMIT * 8].decode("utf-8", "replace"), BODY_EXCERPT_LIMIT)


# --------------------------------------------------------------------------- link-local


def probe_host(host: str) -> str:
    """Model validator: refuse a literal link-local host when the check is written."""
    problem = link_local_problem(host)
    if problem is not None:
        raise ValueError(problem)
    return host


async def resolved_refusal(host: str, port: int) -> str | None:
    """Why ``host`` must not be probed now: it is, or resolves to, a link-local address.

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
