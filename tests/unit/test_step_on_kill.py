"""A killed step (Airflow calls ``on_kill``) leaves none of the commands it started running.

The step below starts a real command that starts a child of its own, like ``docker
compose`` does; the test kills the step and looks for both processes in ``/proc``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.bases.sensor import BaseSensorOperator

import opsflow.operators
from opsflow.operators.steps import StepOperator, StepRecord
from opsflow.runtimes.process import CommandFailed, ProcessRunner, terminate_started

PARENT_AND_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "print('child', child.pid, flush=True)\n"
    "time.sleep(300)\n"
)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: Any, /, *args: Any) -> None:
        self.lines.append(str(msg) % args if args else str(msg))


class LongCommandStep(StepOperator):
    def __init__(self, *, log_lines: Lines, **kwargs: Any) -> None:
        super().__init__(stack_name="demo", **kwargs)
        self.log_lines = log_lines
        self.outcome: BaseException | None = None

    def run(self, record: StepRecord, context: Any) -> Any:
        ProcessRunner(log=self.log_lines).run([sys.executable, "-c", PARENT_AND_CHILD])

    def run_in_thread(self) -> None:
        """What the task's ``execute`` would do; the outcome is kept for the test to judge."""
        try:
            self.run(StepRecord(step=self.task_id), {})
        except BaseException as error:
            self.outcome = error


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie has ended (its parent only has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_on_kill_ends_the_command_and_the_children_it_started() -> None:
    lines = Lines()
    step = LongCommandStep(log_lines=lines, task_id="rollback")
    worker = threading.Thread(target=step.run_in_thread)
    worker.start()
    try:
        assert wait_until(lambda: any(x.strip().startswith("child ") for x in lines.lines), 20)
        child_pid = int(next(x for x in lines.lines if x.strip().startswith("child ")).split()[1])
        assert alive(child_pid)

        step.on_kill()

        worker.join(timeout=30)
        assert not worker.is_alive()
        assert isinstance(step.outcome, CommandFailed)
        assert step.outcome.result.returncode != 0
        assert wait_until(lambda: not alive(child_pid), 10), f"pid {child_pid} still runs"
    finally:
        terminate_started(grace=1)  # never leave a sleeping process behind a failed assertion
        worker.join(timeout=10)


def test_on_kill_without_running_commands_is_harmless() -> None:
    LongCommandStep(log_lines=Lines(), task_id="idle").on_kill()


def _operators_that_do_work() -> list[type[BaseOperator]]:
    """Every opsflow operator but the sensors (they wait) and the summaries (they read)."""
    found: dict[str, type[BaseOperator]] = {}
    for info in pkgutil.iter_modules(opsflow.operators.__path__):
        module = importlib.import_module(f"opsflow.operators.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, BaseOperator)
                and cls.__module__.startswith("opsflow.")
                and not issubclass(cls, BaseSensorOperator)
                and not cls.__name__.endswith("SummaryOperator")
            ):
                found[f"{cls.__module__}.{cls.__name__}"] = cls
    return list(found.values())


@pytest.mark.parametrize("cls", _operators_that_do_work(), ids=lambda cls: cls.__name__)
def test_every_operator_that_can_start_a_command_is_a_step_with_the_killing_on_kill(
    cls: type[BaseOperator],
) -> None:
    assert issubclass(cls, StepOperator), f"{cls.__name__} is not a StepOperator"
    assert cls.on_kill is StepOperator.on_kill, f"{cls.__name__} overrides on_kill"
