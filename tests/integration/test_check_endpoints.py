"""Checks that name a service's container port instead of a host port, resolved through
the real engine when they run: the host port is one Docker picks, as a moved `.env`
port would be, and the check finds it."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsflow.health import CheckResult, HealthCheck, check_name, run_check
from opsflow.runtimes.compose_probe import ComposeContext
from support.containers import compose_sandbox

pytestmark = pytest.mark.integration

ADAPTER: TypeAdapter[HealthCheck] = TypeAdapter(HealthCheck)
# A one-line HTTP server in the perl that debian:bookworm-slim ships. In the compose file
# its $ are doubled (Compose interpolates them) and so are its braces (the sandbox formats
# the file once more with the image name).
SERVER = (
    "$s=IO::Socket::INET->new(LocalPort=>8080,Listen=>5,ReuseAddr=>1) or die $!;"
    "while($c=$s->accept){while(<$c>){last if /^\\r?\\n$/}"
    'print $c "HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n'
    'Content-Length: 15\\r\\n\\r\\n{\\"status\\":\\"ok\\"}";close $c}'
)
COMPOSE_FILE = """
services:
  web:
    image: {{image}}
    command: ["perl", "-MIO::Socket::INET", "-e", '{server}']
    ports: ["127.0.0.1::8080"]
  quiet:
    image: {{image}}
    command: ["sleep", "3600"]
""".format(
    server=SERVER.replace("'", "''").replace("$", "$$").replace("{", "{{").replace("}", "}}")
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeContext]:
    with compose_sandbox(tmp_path_factory.mktemp("endpoints"), COMPOSE_FILE, "ports") as context:
        subprocess.run([*context.base_argv(), "up", "-d"], check=True, capture_output=True,
                       timeout=120)  # fmt: skip
        yield context


def probe(project: ComposeContext, **data: Any) -> CheckResult:
    async def until_served() -> CheckResult:
        for _ in range(40):  # the server starts within a second or two
            result = await run_check(ADAPTER.validate_python(data), project)
            if result.ok or "not published" in result.detail or "no running" in result.detail:
                return result
            await asyncio.sleep(0.25)
        return result

    return asyncio.run(until_served())


def host_port(project: ComposeContext) -> int:
    out = subprocess.run([*project.base_argv(), "port", "web", "8080"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return int(out.strip().rsplit(":", 1)[1])


def test_http_finds_the_published_port(project: ComposeContext) -> None:
    result = probe(project, kind="http", endpoint={"service": "web", "port": 8080},
                   path="/health", expect_json={"status": "ok"})  # fmt: skip
    assert result.ok, result.detail
    assert result.name == "http GET http://web:8080/health"  # stable, whatever the host port


def test_tcp_finds_the_published_port(project: ComposeContext) -> None:
    result = probe(project, kind="tcp", endpoint={"service": "web", "port": 8080})
    assert result == CheckResult(
        "tcp web:8080", True, f"connected to 127.0.0.1:{host_port(project)}"
    )


def test_a_port_the_service_does_not_publish_fails_with_the_reason(
    project: ComposeContext,
) -> None:
    result = probe(project, kind="tcp", endpoint={"service": "quiet", "port": 8080})
    assert not result.ok
    assert result.detail.startswith("LookupError: quiet:8080 is not published on the host")


def test_a_service_without_a_running_container_fails_with_the_reason(
    project: ComposeContext,
) -> None:
    result = probe(project, kind="http", endpoint={"service": "ghost", "port": 80})
    assert not result.ok
    assert "no running container of 'ghost'" in result.detail


def test_the_name_of_an_endpoint_check_never_depends_on_the_host_port() -> None:
    grpc = ADAPTER.validate_python(
        {"kind": "grpc", "endpoint": {"service": "docreader", "port": 50051}}
    )
    assert check_name(grpc) == "grpc docreader:50051 (server)"
