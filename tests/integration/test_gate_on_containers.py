"""The health gate against real containers: conclusive evidence ends it within one round,
evidence that can still turn good keeps it waiting until its deadline.

Every service runs on the real Docker Engine in a throwaway Compose project of its own
name; the gate is the trigger the triggerer runs (``HealthGateTrigger``), watching the
service under test as a release gate watches what its release restarted.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsflow.runtimes.compose_probe import ComposeContext
from opsflow.runtimes.evidence import conclusive, touched_services
from opsflow.triggers.health import HealthGateTrigger
from support.containers import compose_sandbox
from support.servers import GrpcHealthServer, SwitchableHealthServer
from support.services import free_port

pytestmark = pytest.mark.integration

# An ELF header for aarch64 (e_machine 0xb7): what an image built for another platform
# hands the kernel on this one.
FOREIGN_ELF = bytes.fromhex("7f454c460201010000000000000000000200b700010000000000000000000000")

COMPOSE_FILE = """
services:
  crashloop:
    image: {image}
    command: ["sh", "-c", "echo 'fatal: cannot load settings (password=hunter2)' >&2; exit 3"]
    restart: unless-stopped
  exits:
    image: {image}
    command: ["sh", "-c", "exit 4"]
    restart: "no"
  crashes_later:
    image: {image}
    command: ["sh", "-c", "sleep 2; exit 5"]
    restart: unless-stopped
  unhealthy:
    image: {image}
    command: ["sleep", "3600"]
    healthcheck: {{test: ["CMD-SHELL", "echo db down; exit 1"], interval: 1s, timeout: 2s,
                  retries: 2}}
  missing_binary:
    image: {image}
    command: ["/opsflow-no-such-binary"]
  foreign_platform:
    image: {image}
    entrypoint: ["/foreign"]
    volumes: ["./foreign:/foreign:ro"]
    restart: unless-stopped
  starting:
    image: {image}
    command: ["sleep", "3600"]
    healthcheck: {{test: ["CMD", "false"], interval: 1s, timeout: 2s, retries: 2,
                  start_period: 5m}}
  slow_but_healthy:
    image: {image}
    command: ["sh", "-c", "sleep 4; touch /tmp/ready; exec sleep 3600"]
    healthcheck: {{test: ["CMD", "test", "-f", "/tmp/ready"], interval: 1s, timeout: 2s,
                  retries: 2, start_period: 1m}}
  finished:
    image: {image}
    command: ["true"]
    restart: "no"
  good:
    image: {image}
    command: ["sleep", "3600"]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeContext]:
    workdir = tmp_path_factory.mktemp("evidence")
    foreign = workdir / "foreign"
    foreign.write_bytes(FOREIGN_ELF + bytes(48))
    foreign.chmod(0o755)
    with compose_sandbox(workdir, COMPOSE_FILE, "evidence") as context:
        yield context


def up(project: ComposeContext, service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*project.base_argv(), "up", "-d", "--no-deps", service],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def gate(project: ComposeContext, *, watch: list[str], timeout: float, checks: Any = None,
         interval: float = 1.0, consecutive: int = 2,
         settled_timeout: float | None = None) -> tuple[dict[str, Any], float]:  # fmt: skip
    """Run the gate trigger to its first event; the event and the seconds it took."""
    trigger = HealthGateTrigger(
        checks=checks or [{"kind": "container", "service": s} for s in watch],
        consecutive=consecutive, interval=interval, timeout=timeout, runtime=project.to_dict(),
        watch=watch, settled_timeout=settled_timeout,
    )  # fmt: skip

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("the gate ended without an event")

    started = time.monotonic()
    event = asyncio.run(asyncio.wait_for(first(), timeout=timeout + 60))
    return event, time.monotonic() - started


def evidence_of(event: dict[str, Any]) -> str:
    assert event["status"] == "failed", event
    [found] = event["evidence"]
    return str(found["detail"])


# --------------------------------------------------------------------------- conclusive


def test_a_crash_loop_ends_the_gate_in_its_first_rounds(project: ComposeContext) -> None:
    assert up(project, "crashloop").returncode == 0
    time.sleep(1)
    event, seconds = gate(project, watch=["crashloop"], timeout=60)
    detail = evidence_of(event)
    # Caught while Docker waits to restart it (the exit code is known then) or just after a
    # restart (the count grew): both are the crash loop.
    assert "crash loop" in detail, detail
    assert "with code 3" in detail or "restarted" in detail, detail
    assert "last output: fatal: cannot load settings (password=***" in detail
    assert "hunter2" not in json.dumps(event)  # alerts and XCom never carry it
    assert event["rounds"] <= 2 and seconds < 5, (event["rounds"], seconds)


def test_restarts_that_grow_during_the_gate_are_a_crash_loop(project: ComposeContext) -> None:
    assert up(project, "crashes_later").returncode == 0
    # Running (no healthcheck) and green until it exits: only a long streak outlasts that.
    event, seconds = gate(project, watch=["crashes_later"], timeout=60, interval=0.5,
                          consecutive=20)  # fmt: skip
    detail = evidence_of(event)
    assert "crash loop" in detail and ("restarted" in detail or "code 5" in detail), detail
    assert seconds < 8, seconds  # exits after 2 s; seen within about one round of that


def test_an_exited_container_ends_the_gate(project: ComposeContext) -> None:
    assert up(project, "exits").returncode == 0
    time.sleep(1)
    event, seconds = gate(project, watch=["exits"], timeout=60)
    assert evidence_of(event) == "exited with code 4"
    assert event["rounds"] == 1 and seconds < 3


def test_the_runtimes_unhealthy_verdict_ends_the_gate(project: ComposeContext) -> None:
    assert up(project, "unhealthy").returncode == 0
    event, seconds = gate(project, watch=["unhealthy"], timeout=60)
    detail = evidence_of(event)
    assert detail.startswith("is unhealthy by the runtime's own healthcheck"), detail
    assert "db down" in detail
    assert seconds < 10, seconds  # Docker's verdict after 2 failed checks 1 s apart


def test_an_image_that_cannot_start_ends_the_gate(project: ComposeContext) -> None:
    started = up(project, "missing_binary")
    assert started.returncode != 0  # compose up itself fails; the container stays created
    event, seconds = gate(project, watch=["missing_binary"], timeout=60)
    detail = evidence_of(event)
    assert detail.startswith("cannot start: ") and "/opsflow-no-such-binary" in detail, detail
    assert event["rounds"] == 1 and seconds < 3


def test_a_binary_for_another_platform_ends_the_gate(project: ComposeContext) -> None:
    assert up(project, "foreign_platform").returncode == 0
    time.sleep(1)
    event, seconds = gate(project, watch=["foreign_platform"], timeout=60)
    detail = evidence_of(event)
    assert "exec format error" in detail and "crash loop" in detail, detail
    assert seconds < 5


# --------------------------------------------------------------------------- inconclusive


def test_a_container_in_its_start_period_keeps_the_gate_waiting(project: ComposeContext) -> None:
    assert up(project, "starting").returncode == 0
    event, seconds = gate(project, watch=["starting"], timeout=4)
    assert event["status"] == "timeout", event
    assert event["rounds"] >= 2 and seconds >= 4
    assert "starting" in event["failing"][0]["detail"]


def test_a_slow_but_healthy_release_passes(project: ComposeContext) -> None:
    assert up(project, "slow_but_healthy").returncode == 0
    event, seconds = gate(project, watch=["slow_but_healthy"], timeout=60)
    assert event["status"] == "success", event
    assert seconds >= 3  # it was starting for 4 s, and that was no verdict


def test_a_finished_one_shot_service_is_no_evidence(project: ComposeContext) -> None:
    assert up(project, "finished").returncode == 0
    time.sleep(1)
    states = asyncio.run(project.containers())
    [finished] = [s for s in states if s.service == "finished"]
    assert (finished.state, finished.exit_code) == ("exited", 0)
    assert conclusive(states, {"finished"}, {}) == []


def test_checks_that_can_still_turn_good_keep_the_gate_waiting(
    project: ComposeContext,
    health_http_server: SwitchableHealthServer,
    grpc_health_server: GrpcHealthServer,
) -> None:
    """503, NOT_SERVING and a refused connection next to a healthy watched container."""
    assert up(project, "good").returncode == 0
    health_http_server.mode = "503"
    grpc_health_server.set("opsflow.Api", serving=False)
    checks = [
        {"kind": "http", "url": health_http_server.url, "timeout": 2.0},
        {"kind": "grpc", "target": grpc_health_server.target, "service": "opsflow.Api",
         "timeout": 2.0},
        {"kind": "tcp", "host": "127.0.0.1", "port": free_port(), "timeout": 1.0},
        {"kind": "container", "service": "good"},
    ]  # fmt: skip
    event, seconds = gate(project, watch=["good"], timeout=4, checks=checks)
    assert event["status"] == "timeout", event
    assert event["reason"] == "3 of 4 checks failing"
    assert event["rounds"] >= 3 and seconds >= 4
    details = [f["detail"] for f in event["failing"]]
    assert details[0].startswith("status 503") and details[1] == "NOT_SERVING", details


def test_once_the_runtime_calls_everything_healthy_its_window_is_not_waited_out(
    project: ComposeContext, health_http_server: SwitchableHealthServer
) -> None:
    """The timeout was raised to 60 s for the runtime's window; the watched container runs
    healthy from the first round, so the gate ends at the configured 3 s or, later, the
    settling moment + 2 rounds + the 10 s margin, not at 60 s."""
    assert up(project, "good").returncode == 0
    health_http_server.mode = "503"
    checks = [{"kind": "http", "url": health_http_server.url, "timeout": 2.0}]
    event, seconds = gate(project, watch=["good"], timeout=60, checks=checks,
                          settled_timeout=3)  # fmt: skip
    assert event["status"] == "timeout", event
    assert 11 <= seconds < 25, seconds


def test_a_service_still_starting_keeps_the_raised_timeout(project: ComposeContext) -> None:
    assert up(project, "starting").returncode == 0
    event, seconds = gate(project, watch=["starting"], timeout=6, settled_timeout=1)
    assert event["status"] == "timeout", event
    assert seconds >= 6


def test_a_crashed_service_the_gate_does_not_watch_is_no_verdict(project: ComposeContext) -> None:
    assert up(project, "exits").returncode == 0
    assert up(project, "good").returncode == 0
    checks = [{"kind": "container", "service": s} for s in ("good", "exits")]
    event, _seconds = gate(project, watch=["good"], timeout=3, checks=checks)
    assert event["status"] == "timeout", event  # its failing check waits, as before


# --------------------------------------------------------------------------- what changed


def test_touched_services_are_what_was_started_since(project: ComposeContext) -> None:
    assert up(project, "good").returncode == 0
    time.sleep(1.1)
    since = datetime.now(UTC) - timedelta(milliseconds=100)
    subprocess.run([*project.base_argv(), "restart", "-t", "0", "starting"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    touched = touched_services(asyncio.run(project.containers()), since)
    assert "starting" in touched and "good" not in touched, touched
