"""Health sensors: argument checks, deferral, outcome handling and the Compose window."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from opsflow.health import TcpCheck, check_from_data
from opsflow.runtimes.compose_probe import ComposeContext
from opsflow.runtimes.compose_window import compose_unhealthy_window, parse_go_duration
from opsflow.sensors.health import (
    DEFER_GRACE,
    GrpcHealthSensor,
    HealthGateSensor,
    HttpHealthSensor,
    PostgresReadySensor,
    RedisPingSensor,
    ServiceHealthSensor,
    TcpPortSensor,
    format_gate_failure,
)
from opsflow.stack.model import HealthGate
from opsflow.triggers.health import HealthGateTrigger

TCP = {"kind": "tcp", "port": 5432}


@contextlib.contextmanager
def socket_closed() -> Iterator[int]:
    """A local port nothing listens on (bound, never listening, so nobody else takes it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def deferral(sensor: HealthGateSensor) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as caught:
        sensor.execute({})  # type: ignore[arg-type]
    return caught.value


# --------------------------------------------------------------------------- compose window


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("500ms", 0.5), ("1h0m0s", 3600.0), ("1.5s", 1.5), ("10", 10.0),
     (7, 7.0), ("0s", 30.0), (None, 30.0), ("soon", 30.0)],
)  # fmt: skip
def test_go_durations(text: Any, seconds: float) -> None:
    assert parse_go_duration(text, default=30.0) == seconds


def test_unhealthy_window_uses_docker_defaults_and_the_slowest_service() -> None:
    config = {
        "services": {
            "defaults": {"healthcheck": {"test": ["CMD", "true"]}},  # 0 + (30 + 30) * 3
            "tuned": {
                "healthcheck": {"test": ["CMD", "true"], "interval": "2s", "timeout": "1s",
                                "retries": 5, "start_period": "1m"}
            },  # 60 + 3 * 5 = 75
            "disabled": {"healthcheck": {"disable": True}},
            "none": {"healthcheck": {"test": ["NONE"]}},
            "plain": {"image": "x"},
        }
    }  # fmt: skip
    assert compose_unhealthy_window(config) == 180.0
    del config["services"]["defaults"]
    assert compose_unhealthy_window(config) == 75.0
    assert compose_unhealthy_window({"services": {"plain": {"image": "x"}}}) == 0.0
    assert compose_unhealthy_window({}) == 0.0


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"checks": []}, "at least one health check, got []"),
        ({"checks": TCP}, "must be a list of health checks, got {'kind': 'tcp'"),
        ({"checks": [{"kind": "tcp", "port": 70000}]}, "checks[0] is not a valid check (tcp.port"),
        ({"checks": [{"kind": "ftp"}]}, "checks[0] is not a valid check"),
        ({"checks": [TCP], "consecutive": 0}, "consecutive must be an integer >= 1, got 0"),
        ({"checks": [TCP], "consecutive": True}, "got True"),
        ({"checks": [TCP], "interval": "soon"}, "interval must be seconds, a timedelta or a "
                                                "duration like 30s or 5m, got 'soon'"),
        ({"checks": [TCP], "timeout": 0}, "timeout must be > 0 seconds, got 0"),
        ({"checks": [TCP], "runtime": "shop"}, "runtime must be a runtime context or a mapping"),
        ({"checks": [{"kind": "container", "service": "web"}]},
         "checks[0] (container web) is a container check and needs the stack's runtime"),
        ({"checks": [TCP], "runtime": {"project": "shop"}}, "needs a working_dir, got None"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        HealthGateSensor(task_id="gate", **kwargs)
    assert message in str(caught.value)


def test_durations_accept_strings_and_timedeltas() -> None:
    sensor = HealthGateSensor(
        task_id="gate", checks=[TCP], interval="2s", timeout=timedelta(minutes=2)
    )
    assert (sensor.interval, sensor.timeout) == (2.0, 120.0)


def test_checks_are_validated_when_the_sensor_is_built() -> None:
    # Checks are data from a stack file, never templates: nothing is left to check later.
    assert HealthGateSensor.template_fields == ()
    with pytest.raises(ValueError, match=r"checks\[0\] is not a valid check"):
        HealthGateSensor(task_id="gate", checks=[{"kind": "http", "url": "{{ params.url }}"}])


# --------------------------------------------------------------------------- deferral


def test_execute_defers_to_the_gate_trigger() -> None:
    sensor = HealthGateSensor(
        task_id="gate",
        checks=[TcpCheck(kind="tcp", port=5432), {"kind": "http", "url": "http://127.0.0.1:1/"}],
        consecutive=4,
        interval=timedelta(seconds=2),
        timeout=90,
    )
    deferred = deferral(sensor)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout == timedelta(seconds=90 + DEFER_GRACE)
    trigger = deferred.trigger
    assert isinstance(trigger, HealthGateTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "opsflow.triggers.health.HealthGateTrigger"
    assert (kwargs["consecutive"], kwargs["interval"], kwargs["timeout"]) == (4, 2.0, 90.0)
    assert kwargs["runtime"] is None
    assert [check_from_data(c).kind for c in kwargs["checks"]] == ["tcp", "http"]
    assert kwargs["checks"][1]["timeout"] == 5.0


def test_a_gate_over_a_healthy_stack_ends_in_the_worker_without_deferring(
    tcp_listener: int,
) -> None:
    """Rounds run in the worker first: a stack already healthy needs no triggerer trip."""
    sensor = HealthGateSensor(
        task_id="gate",
        checks=[TcpCheck(kind="tcp", port=tcp_listener)],
        consecutive=3,
        interval=timedelta(seconds=0.1),
        timeout=60,
    )
    summary = sensor.execute({})  # type: ignore[arg-type]  # raises TaskDeferred if it defers
    assert (summary["status"], summary["rounds"]) == ("success", 3)
    assert summary["checks"][0]["ok"] is True


def test_a_placed_stack_waits_in_its_worker_until_the_service_answers() -> None:
    """A stack on its own host is probed from there: the gate never defers to the central
    triggerer, and the trigger's own rounds decide in the worker."""
    import threading

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    sensor = HealthGateSensor(
        task_id="gate",
        checks=[TcpCheck(kind="tcp", port=port, timeout="1s")],
        consecutive=2,
        interval=timedelta(seconds=0.2),
        timeout=30,
    )
    sensor.wait_in_worker = True
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def open_later() -> None:
        threading.Event().wait(1.5)  # the first rounds fail: the port is closed
        listener.bind(("127.0.0.1", port))
        listener.listen(16)

    opener = threading.Thread(target=open_later, daemon=True)
    opener.start()
    try:
        summary = sensor.execute({})  # type: ignore[arg-type]  # TaskDeferred if it defers
    finally:
        opener.join()
        listener.close()
    assert summary["status"] == "success"
    assert summary["checks"][0]["ok"] is True


def test_a_placed_stack_s_gate_fails_in_its_worker_at_the_timeout() -> None:
    with socket_closed() as port:
        sensor = HealthGateSensor(
            task_id="gate",
            checks=[TcpCheck(kind="tcp", port=port, timeout="1s")],
            consecutive=1,
            interval=timedelta(seconds=0.2),
            timeout=2,
        )
        sensor.wait_in_worker = True
        with pytest.raises(AirflowFailException, match=f"127.0.0.1:{port}"):
            sensor.execute({})  # type: ignore[arg-type]


def test_unreadable_compose_config_keeps_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compose = ComposeContext(project="opsflow-missing", working_dir=str(tmp_path / "nowhere"))
    sensor = ServiceHealthSensor(task_id="web", service="web", runtime=compose, timeout=40)
    with caplog.at_level(logging.WARNING):
        deferred = deferral(sensor)
    _classpath, kwargs = deferred.trigger.serialize()
    assert kwargs["timeout"] == 40.0
    assert kwargs["runtime"] == compose.to_dict()
    assert "opsflow-missing" in caplog.text


def test_for_gate_takes_the_stack_settings() -> None:
    gate = HealthGate(consecutive=2, interval="3s", timeout="1m")
    sensor = HealthGateSensor.for_gate(gate, task_id="gate", checks=[TCP])
    assert (sensor.consecutive, sensor.interval, sensor.timeout) == (2, 3.0, 60.0)


@pytest.mark.parametrize(
    ("sensor", "expected"),
    [
        (HttpHealthSensor(task_id="h", url="http://127.0.0.1:8080/ready", expect_status=204,
                          expect_json={"status": "ok"}, check_timeout="2s"),
         {"kind": "http", "url": "http://127.0.0.1:8080/ready", "method": "GET",
          "expect_status": [204], "expect_json": {"status": "ok"}, "timeout": 2.0}),
        (TcpPortSensor(task_id="t", port=6379),
         {"kind": "tcp", "host": "127.0.0.1", "port": 6379, "timeout": 3.0}),
        (PostgresReadySensor(task_id="p", conn_id="shop_db"),
         {"kind": "postgres", "conn_id": "shop_db", "timeout": 5.0}),
        (RedisPingSensor(task_id="r", conn_id="shop_cache"),
         {"kind": "redis", "conn_id": "shop_cache", "timeout": 3.0}),
        (GrpcHealthSensor(task_id="g", target="127.0.0.1:50051", service="api"),
         {"kind": "grpc", "target": "127.0.0.1:50051", "service": "api", "timeout": 5.0}),
    ],
)  # fmt: skip
def test_single_check_sensors(sensor: HealthGateSensor, expected: dict[str, Any]) -> None:
    _classpath, kwargs = deferral(sensor).trigger.serialize()
    assert kwargs["checks"] == [expected]
    assert kwargs["consecutive"] == 1


# --------------------------------------------------------------------------- outcome


def test_success_returns_a_json_summary() -> None:
    sensor = HealthGateSensor(task_id="gate", checks=[TCP])
    results = [{"name": "tcp 127.0.0.1:5432", "ok": True, "detail": "connected"}]
    summary = sensor.execute_complete(
        {},  # type: ignore[arg-type]
        {"status": "success", "rounds": 3, "streak": 3, "elapsed": 10.2, "results": results},
    )
    assert summary == {"status": "success", "rounds": 3, "elapsed": 10.2, "checks": results}


TIMEOUT_EVENT: dict[str, Any] = {
    "status": "timeout",
    "reason": "2 of 5 checks failing",
    "rounds": 12,
    "streak": 0,
    "consecutive": 3,
    "elapsed": 61.7,
    "failing": [
        {"name": "http GET http://127.0.0.1:18080/health/ready", "detail": "status 503"},
        {"name": "postgres shop_db", "detail": "OperationalError: connection refused"},
    ],
    "results": [{"name": f"c{i}", "ok": i > 1, "detail": ""} for i in range(5)],
}


def test_timeout_raises_with_every_failing_check() -> None:
    sensor = HealthGateSensor(task_id="gate", checks=[TCP])
    # A gate that ran and failed is a verdict: AirflowFailException is never retried.
    with pytest.raises(AirflowFailException) as caught:
        sensor.execute_complete({}, TIMEOUT_EVENT)  # type: ignore[arg-type]
    # The first line is the alert: it names the failing check and its last error.
    assert str(caught.value).splitlines() == [
        "health gate failed after 62s (2 of 5 checks failing): http GET "
        "http://127.0.0.1:18080/health/ready: status 503 (and 1 more)",
        "  - http GET http://127.0.0.1:18080/health/ready: status 503",
        "  - postgres shop_db: OperationalError: connection refused",
    ]


def test_short_streak_message_names_the_most_recent_failures() -> None:
    event = dict(TIMEOUT_EVENT, reason="all 5 checks passed the last round, but only 1 of 3 "
                 "consecutive rounds were green", failing=TIMEOUT_EVENT["failing"][:1],
                 results=[{"name": "c", "ok": True, "detail": ""}])  # fmt: skip
    lines = format_gate_failure(event).splitlines()
    assert lines[0].startswith("health gate failed after 62s (all 5 checks passed")
    assert lines[1:] == [
        "  most recent failures:",
        "  - http GET http://127.0.0.1:18080/health/ready: status 503",
    ]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (None, "health gate ended without an event"),
        ({"status": "error", "message": "invalid health gate: bad"}, "invalid health gate: bad"),
    ],
)
def test_errors_raise(event: dict[str, Any] | None, message: str) -> None:
    sensor = HealthGateSensor(task_id="gate", checks=[TCP])
    with pytest.raises(AirflowException, match=message):
        sensor.execute_complete({}, event)  # type: ignore[arg-type]
