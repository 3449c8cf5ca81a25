"""Values of a stack file are data: the health gate's checks reach the trigger exactly as
written, whatever they contain.

The gate is built by the real factory from a stack file whose checks use every kind with
its defaults, empty strings, ``{{`` and ``}}``; Airflow renders the task's template fields
with the DAG's own settings, as a worker does, and the trigger the task defers to carries
the checks unchanged. Before the fix the gRPC check's default ``service: ""`` came back as
``None`` from native rendering and every gate failed; ``{{ ... }}`` was evaluated as Jinja.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred

from opsflow.factory.deploy import build_deploy_dag
from opsflow.factory.upgrade import build_upgrade_dag
from opsflow.health import check_from_data, check_to_data
from opsflow.stack.loader import load_stack

REPO = Path(__file__).resolve().parents[2]

CHECKS: list[dict[str, Any]] = [
    {"kind": "grpc", "target": "127.0.0.1:25051"},  # service defaults to "" (whole server)
    {"kind": "grpc", "target": "127.0.0.1:25052", "service": ""},
    {"kind": "grpc", "target": "127.0.0.1:25053", "service": "{{ params.version }}"},
    {"kind": "http", "url": "http://127.0.0.1:1/health?q={{ 7 * 7 }}&r=}}"},
    {"kind": "http", "url": "http://127.0.0.1:1/", "expect_json": {"a": "", "b": "{{ x }}"}},
    {"kind": "tcp", "port": 1},
    {"kind": "postgres", "conn_id": "demo_postgres"},
    {"kind": "redis", "conn_id": "demo_redis"},
    {"kind": "container", "service": "api"},
]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    data = yaml.safe_load((REPO / "include" / "stacks" / "demo.yaml").read_text())
    data["runtime"]["working_dir"] = str(REPO / "include" / "demo")
    data["services"][0]["health"] = CHECKS
    for service in data["services"][1:]:
        service["health"] = []
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(tmp_path))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    return load_stack("demo")


class Preflight:
    """What ``rollback_verify``'s version template reads: the preflight's XCom."""

    def xcom_pull(self, task_ids: str) -> dict[str, str]:
        return {"from_version": "1.0.0"} if task_ids == "preflight" else {}


def _deferred_checks(task: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    context: dict[str, Any] = {"params": params, "ti": Preflight(), "run_id": "manual__test"}
    task.render_template_fields(context)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute(context)
    _, kwargs = deferred.value.trigger.serialize()
    checks: list[dict[str, Any]] = kwargs["checks"]
    return checks


@pytest.mark.parametrize("build", [build_deploy_dag, build_upgrade_dag])
def test_gate_checks_reach_the_trigger_exactly_as_written(stack: Any, build: Any) -> None:
    dag = build(stack)
    for task_id in ("verify", "rollback_verify"):
        if task_id not in dag.task_ids:
            continue
        checks = _deferred_checks(dag.get_task(task_id), {"version": "1.10", "dry_run": False})
        assert checks == [check_to_data(check) for check in stack.checks]
        assert [check_from_data(c) for c in checks] == stack.checks
        grpc = [c for c in checks if c["kind"] == "grpc"]
        assert [c["service"] for c in grpc] == ["", "", "{{ params.version }}"]
        assert checks[3]["url"] == "http://127.0.0.1:1/health?q={{ 7 * 7 }}&r=}}"
        assert checks[4]["expect_json"] == {"a": "", "b": "{{ x }}"}


def test_the_runs_params_still_render_and_stay_strings(stack: Any) -> None:
    # Native rendering would make the version 1.10 the float 1.1 and "" None.
    task = build_deploy_dag(stack).get_task("verify")
    task.render_template_fields({"params": {"version": "1.10", "dry_run": False}})
    assert (task.version, task.is_dry_run) == ("1.10", "False")
