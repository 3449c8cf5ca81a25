"""Placement: every task of a placed stack's DAGs goes to its host's queue on the Edge
Executor; a stack without placement runs where Airflow's default executor runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.factory import build_stack_dags
from opsflow.stack.loader import StackFileError, load_stack

REPO = Path(__file__).resolve().parents[2]


def write_demo(directory: Path, **changes: Any) -> None:
    data = yaml.safe_load((REPO / "include" / "stacks" / "demo.yaml").read_text())
    data["runtime"]["working_dir"] = str(REPO / "include" / "demo")
    data.update(changes)
    (directory / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(tmp_path))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_every_task_of_a_placed_stack_runs_on_its_queue(stacks: Path) -> None:
    write_demo(stacks, placement={"queue": "host-b"})
    dags = build_stack_dags("demo")
    assert len(dags) == 6
    placed = {(task.queue, task.executor) for dag in dags for task in dag.tasks}
    assert placed == {("host-b", "EdgeExecutor")}


def test_a_stack_without_placement_runs_where_it_does_today(stacks: Path) -> None:
    write_demo(stacks)
    tasks = [task for dag in build_stack_dags("demo") for task in dag.tasks]
    assert {task.executor for task in tasks} == {None}
    assert {task.queue for task in tasks} == {tasks[0].queue}
    assert tasks[0].queue != "host-b"


@pytest.mark.parametrize(
    "placement",
    [{"queue": "host b"}, {"queue": "host;reboot"}, {"queue": ""}, {"queue": "Host-B"},
     {"queue": "host-b", "executor": "CeleryExecutor"}, {"queue": "host-b", "node": "x"}, {}],
)  # fmt: skip
def test_a_bad_placement_names_the_file_and_the_field(
    stacks: Path, placement: dict[str, Any]
) -> None:
    write_demo(stacks, placement=placement)
    with pytest.raises(StackFileError) as caught:
        load_stack("demo")
    message = str(caught.value)
    assert "demo.yaml" in message and "placement" in message
