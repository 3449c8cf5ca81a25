"""Health probes and the health gate trigger against real in-process servers."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from opsflow.health import (
    CheckResult,
    GrpcCheck,
    HealthCheck,
    HttpCheck,
    PostgresCheck,
    TcpCheck,
    check_from_data,
    check_name,
    check_to_data,
    run_check,
)
from opsflow.health.common import BODY_EXCERPT_LIMIT, scrub
from opsflow.operators import upgrade
from opsflow.runtimes.compose_probe import ComposeContext
from opsflow.runtimes.compose_probe import parse_ps as parse_compose_ps
from opsflow.stack.loader import parse_stack
from opsflow.triggers.health import HealthGateTrigger
from support.servers import GrpcHealthServer, SwitchableHealthServer
from support.services import free_port, service_unavailable

ADAPTER: TypeAdapter[HealthCheck] = TypeAdapter(HealthCheck)


def check(**data: Any) -> HealthCheck:
    return ADAPTER.validate_python(data)


def probe(health_check: HealthCheck, compose: ComposeContext | None = None) -> CheckResult:
    return asyncio.run(run_check(health_check, compose))


def run_trigger(trigger: HealthGateTrigger) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout=60))


def gate(checks: list[HealthCheck], **kwargs: Any) -> HealthGateTrigger:
    settings: dict[str, Any] = {"consecutive": 1, "interval": 0.05, "timeout": 10.0}
    settings.update(kwargs)
    return HealthGateTrigger(checks=[check_to_data(c) for c in checks], **settings)


# --------------------------------------------------------------------------- plain data


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "http", "url": "http://127.0.0.1:1/h", "expect_json": {"a.b": 1}, "timeout": "2s"},
        {"kind": "tcp", "port": 5432, "timeout": 1.5},
        {"kind": "postgres", "conn_id": "pg"},
        {"kind": "redis", "conn_id": "cache", "timeout": "250ms"},
        {"kind": "grpc", "target": "127.0.0.1:50051", "service": "api"},
        {"kind": "container", "service": "web"},
    ],
)
def test_check_data_round_trips_through_json(data: dict[str, Any]) -> None:
    original = check(**data)
    stored = json.loads(json.dumps(check_to_data(original)))
    assert check_from_data(stored) == original


def test_durations_travel_as_seconds() -> None:
    assert check_to_data(check(kind="tcp", port=1, timeout="1500ms"))["timeout"] == 1.5


def test_compose_context_builds_absolute_paths() -> None:
    compose = ComposeContext.from_dict(
        {"project": "shop", "working_dir": "/srv/shop", "files": ["a.yml", "/etc/b.yml"],
         "env_file": ".env"}
    )  # fmt: skip
    assert compose.base_argv() == [
        "docker", "compose", "--project-name", "shop", "--project-directory", "/srv/shop",
        "--file", "/srv/shop/a.yml", "--file", "/etc/b.yml", "--env-file", "/srv/shop/.env",
    ]  # fmt: skip
    assert compose.base_argv(with_files=False) == ["docker", "compose", "--project-name", "shop"]
    assert ComposeContext.from_dict(compose.to_dict()) == compose
    with pytest.raises(ValueError, match="'nope'"):
        ComposeContext.from_dict({"project": "shop", "working_dir": "/x", "nope": 1})


def test_compose_ps_output_in_both_formats() -> None:
    rows = [{"Service": "web", "State": "running"}, {"Service": "db", "State": "exited"}]
    assert parse_compose_ps("\n".join(json.dumps(r) for r in rows)) == rows
    assert parse_compose_ps(json.dumps(rows)) == rows
    assert parse_compose_ps("") == []


# --------------------------------------------------------------------------- http


def test_http_healthy(health_http_server: SwitchableHealthServer) -> None:
    result = probe(
        check(kind="http", url=health_http_server.url,
              expect_json={"status": "healthy", "checks.db": "ok"})
    )  # fmt: skip
    assert result == CheckResult(f"http GET {health_http_server.url}", True, "status 200")


def test_http_503_fails_with_status(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "503"
    result = probe(check(kind="http", url=health_http_server.url))
    assert not result.ok
    assert result.detail.startswith("status 503, expected [200]")


def test_http_wrong_json_field_fails(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "wrong_json"
    result = probe(
        check(kind="http", url=health_http_server.url,
              expect_json={"status": "healthy", "checks.db": "ok", "checks.cache": "ok"})
    )  # fmt: skip
    assert not result.ok
    assert result.detail == (
        "status is 'degraded', expected 'healthy'; checks.cache missing (expected 'ok')"
    )


def test_http_head_and_status_list(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "503"
    result = probe(
        check(kind="http", url=health_http_server.url, method="HEAD", expect_status=[200, 503])
    )
    assert result.ok and result.name.startswith("http HEAD ")


def test_http_times_out(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "slow"
    result = probe(check(kind="http", url=health_http_server.url, timeout="0.5s"))
    assert result == CheckResult(
        f"http GET {health_http_server.url}", False, "timed out after 0.5s"
    )


def test_http_connection_refused_is_a_result() -> None:
    url = f"http://127.0.0.1:{free_port()}/health"
    result = probe(check(kind="http", url=url))
    assert not result.ok
    assert result.detail.startswith("ClientConnectorError: ")
    assert "\n" not in result.detail


@pytest.fixture
def leaky_server() -> Iterator[tuple[str, str]]:
    """An endpoint that fails with a long body full of secrets; yields (url, masked secret).

    The masked secret is registered with Airflow's secrets masker, as a connection's
    password is in the triggerer, and appears in the body where no pattern would catch it.
    """
    masked = f"correct-horse-{secrets.token_hex(6)}"
    from airflow.sdk.log import mask_secret

    mask_secret(masked)
    body = (
        '{"error": "db down", "password": "hunter2", '
        '"dsn": "postgres://app:s3cr3t@db:5432/app", "api_key": "AKIAABCDEFGHIJKLMNOP", '
        f'"note": "{masked}", "header": "Authorization: Bearer abc.def.ghi", '
        '"trace": "' + "x" * 20_000 + '"}'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", masked
    finally:
        server.shutdown()


def test_a_failing_body_is_reported_as_a_short_scrubbed_excerpt(
    leaky_server: tuple[str, str],
) -> None:
    url, masked = leaky_server
    result = probe(check(kind="http", url=url))

    assert not result.ok
    head = "status 500, expected [200]: "
    assert result.detail.startswith(head + '{"error": "db down", "password": ***')
    excerpt = result.detail.removeprefix(head)
    assert len(excerpt) <= BODY_EXCERPT_LIMIT
    for secret in ("hunter2", "s3cr3t", "AKIAABCDEFGHIJKLMNOP", masked, "abc.def.ghi"):
        assert secret not in result.detail, result.detail
    assert "postgres://***@db:5432/app" in result.detail


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2&user=bob", "password=***&user=bob"),
        ('{"db_password": "hunter 2", "ok": 1}', '{"db_password": ***, "ok": 1}'),
        ("token: abc123 status: up", "token: *** status: up"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2ln", "Authorization: *** ***"),
        ("redis://:pa55word@cache:6379/0", "redis://***@cache:6379/0"),
        ("secret_key='x y' author: bob", "secret_key=*** author: bob"),
    ],
)
def test_scrub_replaces_what_looks_like_a_secret(text: str, expected: str) -> None:
    assert scrub(text) == expected


# --------------------------------------------------------------------------- link-local

ISOLATED_PROBES = """
import asyncio, json
from datetime import timedelta
from opsflow.health import GrpcCheck, HttpCheck, TcpCheck, run_check

seconds = timedelta(seconds=2)
checks = [
    HttpCheck(kind="http", url="http://metadata.test/latest/meta-data/", timeout=2),
    TcpCheck(kind="tcp", host="metadata.test", port=80, timeout=2),
    GrpcCheck(kind="grpc", target="metadata.test:50051", timeout=2),
    HttpCheck(kind="http", url="http://metadata6.test:8080/", timeout=2),
    # As if a check reached the triggerer without the loader (built in code).
    HttpCheck.model_construct(kind="http", url="http://169.254.169.254/", method="GET",
                              expect_status=[200], expect_json={}, timeout=seconds),
    TcpCheck.model_construct(kind="tcp", host="169.254.169.254", port=80, timeout=seconds),
    HttpCheck(kind="http", url="http://ordinary.test:1/", timeout=2),
]
print(json.dumps([asyncio.run(run_check(c)).to_dict() for c in checks]))
"""


def run_isolated(script: str, hosts: str, tmp_path: Path) -> Any:
    """Run ``script`` with its own /etc/hosts and no network at all (mount and network
    namespaces), so names resolve through the real resolver and no packet can leave."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        service_unavailable("resolving names in a private /etc/hosts needs root and unshare")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    argv = ["unshare", "--mount", "--net", "sh", "-ec",
            'mount --bind "$1" /etc/hosts; exec "$2" -c "$3"',
            "sh", str(hosts_file), sys.executable, script]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_names_that_resolve_to_link_local_addresses_are_never_probed(tmp_path: Path) -> None:
    hosts = (
        "127.0.0.1 localhost\n169.254.169.254 metadata.test\nfe80::1 metadata6.test\n"
        "127.0.0.1 ordinary.test\n"
    )
    results = run_isolated(ISOLATED_PROBES, hosts, tmp_path)
    details = [r["detail"] for r in results]
    assert all(not r["ok"] for r in results), results
    reason = "which is link-local (169.254.0.0/16 or fe80::/10"
    assert details[0].startswith("refused: metadata.test resolves to 169.254.169.254, " + reason)
    assert details[1].startswith("refused: metadata.test resolves to 169.254.169.254, " + reason)
    assert details[2].startswith("refused: metadata.test resolves to 169.254.169.254, " + reason)
    assert details[3].startswith("refused: metadata6.test resolves to fe80::1, " + reason)
    assert details[4].startswith("refused: 169.254.169.254 is link-local")
    assert details[5].startswith("refused: 169.254.169.254 is link-local")
    # An ordinary name is probed (and fails here: this namespace has no network).
    assert not details[6].startswith("refused"), details[6]


# --------------------------------------------------------------------------- tcp / grpc


def test_tcp_open_and_closed(tcp_listener: int) -> None:
    assert probe(check(kind="tcp", port=tcp_listener)) == CheckResult(
        f"tcp 127.0.0.1:{tcp_listener}", True, "connected"
    )
    closed = probe(check(kind="tcp", port=free_port()))
    assert not closed.ok
    assert closed.detail.startswith("ConnectionRefusedError")


def test_preflight_asks_a_failing_check_again_before_it_refuses(
    tcp_listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port that answers only from the second try on (a busy host's blip) counts as
    healthy; one that never answers is named with its last answer and the tries."""
    monkeypatch.setattr(upgrade, "PREFLIGHT_PAUSE", 0.5)
    late, closed = free_port(), free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    timer = threading.Timer(0.25, lambda: (listener.bind(("127.0.0.1", late)), listener.listen()))
    stack = parse_stack(
        {
            "name": "shop",
            "runtime": {"kind": "compose", "project": "shop", "working_dir": "/srv/shop"},
            "services": [
                {"name": "api", "health": [{"kind": "tcp", "port": tcp_listener}]},
                {"name": "db", "health": [{"kind": "tcp", "port": late}]},
                {"name": "cache", "health": [{"kind": "tcp", "port": closed}]},
            ],
        },
        Path("shop.yaml"),
    )
    timer.start()
    try:
        failing = upgrade.healthy_now(stack, None)
    finally:
        timer.join()
        listener.close()
    assert len(failing) == 1, failing
    assert failing[0].startswith(f"tcp 127.0.0.1:{closed}: ConnectionRefusedError")
    assert failing[0].endswith("(3 tries, 0.5s apart)")


def test_grpc_serving_and_not_serving(grpc_health_server: GrpcHealthServer) -> None:
    target = grpc_health_server.target
    assert probe(check(kind="grpc", target=target)) == CheckResult(
        f"grpc {target} (server)", True, "SERVING"
    )
    grpc_health_server.set("opsflow.Api", serving=False)
    result = probe(check(kind="grpc", target=target, service="opsflow.Api"))
    assert result == CheckResult(f"grpc {target} opsflow.Api", False, "NOT_SERVING")
    unknown = probe(check(kind="grpc", target=target, service="nope"))
    assert not unknown.ok and unknown.detail.startswith("NOT_FOUND")


def test_grpc_unreachable_fails_within_its_timeout() -> None:
    result = probe(check(kind="grpc", target=f"127.0.0.1:{free_port()}", timeout="1s"))
    assert not result.ok
    assert result.detail.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED", "timed out"))


# --------------------------------------------------------------------------- no check raises


def test_missing_connection_is_a_failed_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_OPSFLOW_NO_SUCH_CONN", raising=False)
    result = probe(PostgresCheck(kind="postgres", conn_id="opsflow_no_such_conn"))
    assert not result.ok
    assert "opsflow_no_such_conn" in result.detail


def test_container_check_without_compose_is_a_failed_result() -> None:
    result = probe(check(kind="container", service="web"))
    assert result == CheckResult("container web", False, "no runtime given for a "
                                 "container check")  # fmt: skip


# --------------------------------------------------------------------------- the gate


def test_gate_passes_after_exactly_n_consecutive_rounds(
    health_http_server: SwitchableHealthServer, tcp_listener: int
) -> None:
    checks = [check(kind="http", url=health_http_server.url), check(kind="tcp", port=tcp_listener)]
    [event] = run_trigger(gate(checks, consecutive=3))
    assert event["status"] == "success"
    assert (event["rounds"], event["streak"]) == (3, 3)
    assert health_http_server.hits == 3
    assert [r["ok"] for r in event["results"]] == [True, True]


def test_a_failure_resets_the_streak(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.fail_first = 2
    [event] = run_trigger(gate([check(kind="http", url=health_http_server.url)], consecutive=3))
    assert event["status"] == "success"
    assert event["rounds"] == 5  # two red rounds, then three green ones


def test_flapping_server_never_passes(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "flapping"
    http = check(kind="http", url=health_http_server.url)
    [event] = run_trigger(gate([http], consecutive=2, interval=0.05, timeout=1.5))
    assert event["status"] == "timeout"
    assert event["rounds"] >= 6
    assert [f["name"] for f in event["failing"]] == [check_name(http)]
    assert event["failing"][0]["detail"].startswith("status 503")


def test_short_streak_at_the_deadline_is_explained(
    health_http_server: SwitchableHealthServer,
) -> None:
    health_http_server.fail_first = 1
    http = check(kind="http", url=health_http_server.url)
    [event] = run_trigger(gate([http], consecutive=50, interval=0.1, timeout=0.5))
    assert event["status"] == "timeout"
    assert event["reason"].startswith("all 1 checks passed the last round, but only ")
    assert event["failing"] == [{"name": check_name(http), "detail": "status 503, expected "
                                 "[200]: {\"status\": \"down\"}"}]  # fmt: skip


def test_timeout_lists_every_failing_check(
    health_http_server: SwitchableHealthServer, grpc_health_server: GrpcHealthServer
) -> None:
    grpc_health_server.set("opsflow.Api", serving=False)
    checks = [
        check(kind="http", url=health_http_server.url),
        check(kind="tcp", port=free_port()),
        check(kind="grpc", target=grpc_health_server.target, service="opsflow.Api"),
        check(kind="http", url=f"http://127.0.0.1:{free_port()}/ready"),
        check(kind="grpc", target=grpc_health_server.target),
    ]
    [event] = run_trigger(gate(checks, consecutive=2, timeout=0.5))
    assert event["status"] == "timeout"
    assert event["reason"] == "3 of 5 checks failing"
    failing = {f["name"]: f["detail"] for f in event["failing"]}
    assert set(failing) == {check_name(checks[i]) for i in (1, 2, 3)}
    assert failing[check_name(checks[2])] == "NOT_SERVING"
    assert failing[check_name(checks[1])].startswith("ConnectionRefusedError")
    assert len(event["results"]) == 5
    json.dumps(event)  # events are plain JSON


def test_resumed_trigger_keeps_its_deadline(health_http_server: SwitchableHealthServer) -> None:
    health_http_server.mode = "503"
    started = (datetime.now(UTC) - timedelta(seconds=100)).isoformat()
    trigger = gate(
        [check(kind="http", url=health_http_server.url)], timeout=60.0, started_at=started
    )
    [event] = run_trigger(trigger)
    assert event["status"] == "timeout"
    assert event["rounds"] == 1
    assert event["elapsed"] >= 100


def test_bad_arguments_are_an_error_event() -> None:
    trigger = HealthGateTrigger(
        checks=[{"kind": "tcp", "port": 0}], consecutive=1, interval=1.0, timeout=5.0
    )
    [event] = run_trigger(trigger)
    assert event["status"] == "error"
    assert event["message"].startswith("invalid health gate: ")
    assert "port" in event["message"]


def test_serialize_round_trip() -> None:
    checks = [
        HttpCheck(kind="http", url="http://127.0.0.1:8080/ready", expect_json={"status": "ok"}),
        TcpCheck(kind="tcp", port=5432),
        GrpcCheck(kind="grpc", target="127.0.0.1:50051"),
        check(kind="container", service="web"),
    ]
    compose = ComposeContext(project="shop", working_dir="/srv/shop", env_file=".env")
    trigger = HealthGateTrigger(
        checks=[check_to_data(c) for c in checks],
        consecutive=3,
        interval=5.0,
        timeout=300.0,
        runtime=compose.to_dict(),
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "opsflow.triggers.health.HealthGateTrigger"
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))
    assert isinstance(rebuilt, HealthGateTrigger)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["started_at"] == trigger.started_at
    assert [check_from_data(c) for c in kwargs["checks"]] == checks
    assert ComposeContext.from_dict(kwargs["runtime"]) == compose
