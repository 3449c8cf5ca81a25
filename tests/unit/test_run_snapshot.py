"""One source of truth per run: every task of a run sees the stack file as the run's first
task read it; another run sees the file as it is. Against real files in a temp dir."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from opsflow.operators.steps import run_stack
from opsflow.stack.loader import StackFileError
from opsflow.stack.run_snapshot import KEEP_SECONDS, load_run_stack, snapshot_path

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "stacks"
    directory.mkdir()
    data = yaml.safe_load((REPO / "include" / "stacks" / "demo.yaml").read_text())
    data["runtime"]["working_dir"] = "../demo"  # relative to the stack file's directory
    (tmp_path / "demo").mkdir()
    data["backup"]["local_dir"] = str(tmp_path / "backups")
    (directory / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(directory))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("OPSFLOW_ALLOWED_ROOTS", str(tmp_path))
    return directory


def edit(stacks: Path, **changes: object) -> None:
    path = stacks / "demo.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_task_of_a_run_sees_the_stack_its_first_task_read(stacks: Path) -> None:
    first = load_run_stack("demo", "demo__upgrade", "manual__1")
    edit(stacks, description="edited while the run was going")

    again = load_run_stack("demo", "demo__upgrade", "manual__1")
    other = load_run_stack("demo", "demo__upgrade", "manual__2")

    assert again == first and again.description != "edited while the run was going"
    assert other.description == "edited while the run was going"
    assert snapshot_path("demo", "demo__upgrade", "manual__1").read_bytes() != (
        (stacks / "demo.yaml").read_bytes()
    )


def test_the_copy_is_judged_as_the_file_at_its_real_path(stacks: Path, tmp_path: Path) -> None:
    from opsflow.stack.loader import resolve_working_dir

    load_run_stack("demo", "demo__deploy", "manual__1")
    stack = load_run_stack("demo", "demo__deploy", "manual__1")
    assert resolve_working_dir(stack) == (tmp_path / "demo").resolve()


def test_a_file_broken_mid_run_does_not_break_the_run(stacks: Path) -> None:
    kept = load_run_stack("demo", "demo__upgrade", "manual__1")
    (stacks / "demo.yaml").write_text("name: demo\nservices: [")

    assert load_run_stack("demo", "demo__upgrade", "manual__1") == kept
    with pytest.raises(StackFileError, match=r"demo\.yaml"):
        load_run_stack("demo", "demo__upgrade", "manual__2")
    assert not snapshot_path("demo", "demo__upgrade", "manual__2").exists()


def test_tasks_racing_to_be_first_keep_one_copy(stacks: Path) -> None:
    seen: list[str] = []

    def ask() -> None:
        seen.append(load_run_stack("demo", "demo__backup", "scheduled__1").description)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    edit(stacks, description="changed during the race")
    for thread in threads:
        thread.join()

    assert len(seen) == 8 and len(set(seen)) == 1
    stored = snapshot_path("demo", "demo__backup", "scheduled__1")
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]


def test_ids_become_one_safe_file_name_and_old_copies_go(stacks: Path) -> None:
    path = snapshot_path("demo", "demo__upgrade", "manual__2026-12-01T10:00:00+00:00/../x")
    assert (
        path.parent.name == "runs" and "/" not in path.name and ".." not in path.name.split("--")[0]
    )
    old = load_run_stack("demo", "demo__upgrade", "manual__old")
    assert old.name == "demo"
    stale = snapshot_path("demo", "demo__upgrade", "manual__old")
    os.utime(stale, (time.time() - KEEP_SECONDS - 60,) * 2)
    load_run_stack("demo", "demo__upgrade", "manual__new")
    assert not stale.exists()


def test_outside_a_task_the_file_is_read_as_it_is(stacks: Path) -> None:
    edit(stacks, description="now")
    assert run_stack("demo").description == "now"
