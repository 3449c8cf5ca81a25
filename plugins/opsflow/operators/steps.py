"""A step record: what one task of a release workflow did, for the run summary.

Each step pushes its record to XCom under :data:`RECORD_KEY` whether it succeeds or fails,
so the summary task can tell "failed", "did not run" and "done" apart without reading the
metadata DB (which Airflow 3 tasks may not do).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from opsflow.stack.model import Stack

RECORD_KEY = "step_record"


@dataclass
class StepRecord:
    step: str
    version: str = ""
    dry_run: bool = False
    status: str = "running"  # running -> ok | failed | dry-run
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""
    images: dict[str, Any] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    # Human-readable lines for the run summary, and the step's structured report.
    lines: list[str] = field(default_factory=list)
    report: Any = None
    # What must fail the step once its work is done (housekeeping finishes every root).
    problems: list[str] = field(default_factory=list)
    # The machine the step ran on: with placement, the stack's host (its edge worker).
    host: str = field(default_factory=socket.gethostname)
    _started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self, status: str, detail: str = "") -> dict[str, Any]:
        self.status = status
        self.detail = detail or self.detail
        self.seconds = round(time.monotonic() - self._started, 2)
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_started")
        return data


def run_stack(stack_name: str) -> Stack:
    """The stack as this run sees it: the stack file as the run's first task read it
    (``stack.run_snapshot``), so every task and retry of one run works from the same
    stack. Outside a task (tests, benchmarks) it is the file as it is now."""
    from airflow.sdk import get_current_context

    from opsflow.stack.loader import load_stack
    from opsflow.stack.run_snapshot import load_run_stack

    try:
        ti = get_current_context()["ti"]
    except Exception:
        return load_stack(stack_name)
    return load_run_stack(stack_name, ti.dag_id, ti.run_id)


def refuse_unknown_conf(context: Context, task: BaseOperator) -> None:
    """Fail on keys of the run's conf that no param of the task's DAG declares.

    Airflow validates the values of declared params before a run exists but ignores
    extra keys; a misspelt ``verison`` would silently run with the default instead.
    """
    dag = task.get_dag()
    known = set(dag.params) if dag is not None else set()
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    unknown = sorted(str(key) for key in conf if key not in known)
    if unknown:
        raise AirflowFailException(
            f"unknown keys in the run's conf: {unknown}; this DAG takes {sorted(known)}"
        )


def as_bool(value: Any) -> bool:
    """Params rendered through templates may arrive as ``True`` or as ``"True"``."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def first_line(text: str, limit: int = 300) -> str:
    line = next((part for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def human_duration(value: timedelta | float) -> str:
    """A duration as a person (and a stack file) writes it: ``26h``, ``1h30m``, ``45s``,
    ``7d``, where ``str(timedelta)`` prints ``1 day, 2:00:00``. Days only from 2 days on,
    so the default backup age reads ``26h``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if 0 < seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    rest = round(seconds)
    days, rest = divmod(rest, 86400) if rest >= 2 * 86400 else (0, rest)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{amount}{unit}" for amount, unit in parts if amount)
    return sign + (text or "0s")


class StepOperator(BaseOperator):
    """A workflow step that keeps a :class:`StepRecord` and ends honestly.

    Subclasses implement :meth:`run`; the record is pushed whether the step succeeds,
    fails or is skipped, and its lines are logged either way. A step that must finish its
    work before failing (housekeeping) puts what went wrong in ``record.problems``: the
    task then fails with all of them after the work is done. With ``returns_record`` the
    task's return value is the finished record (what the UI shows).
    """

    template_fields: Sequence[str] = ("is_dry_run",)
    returns_record: bool = False

    def __init__(self, *, stack_name: str, dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stack_name = stack_name
        self.is_dry_run = dry_run

    def run(self, record: StepRecord, context: Context) -> Any:
        """Do the work and fill ``record``; raise to fail, :class:`AirflowSkipException` to skip."""
        raise NotImplementedError

    def on_kill(self) -> None:
        """A killed step leaves none of the commands it started running."""
        from opsflow.runtimes.process import terminate_started

        ended = terminate_started()
        if ended:
            self.log.warning("Killed: ended %s command(s) this step had started", ended)

    def resume(self, record: StepRecord, context: Context, event: dict[str, Any]) -> Any:
        """Finish the work after a deferral's ``event``, filling ``record`` as ``run`` does."""
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        return self._recorded(context, lambda record: self.run(record, context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Back from the triggerer: the same record, pushed the same way."""
        return self._recorded(context, lambda record: self.resume(record, context, event or {}))

    def _recorded(self, context: Context, work: Callable[[StepRecord], Any]) -> Any:
        record = StepRecord(step=self.task_id, dry_run=as_bool(self.is_dry_run))
        ti = context["ti"]
        try:
            refuse_unknown_conf(context, self)
            result = work(record)
        except AirflowSkipException as skip:
            ti.xcom_push(key=RECORD_KEY, value=record.finish("skipped", str(skip)))
            raise
        except Exception as error:
            for line in record.lines:
                self.log.info("%s", line)
            ti.xcom_push(key=RECORD_KEY, value=record.finish("failed", first_line(str(error))))
            raise
        for line in record.lines:
            self.log.info("%s", line)
        if record.problems:
            ti.xcom_push(key=RECORD_KEY, value=record.finish("failed", record.problems[0]))
            raise AirflowException("\n".join(record.problems))
        finished = record.finish("dry-run" if record.dry_run else "ok")
        ti.xcom_push(key=RECORD_KEY, value=finished)
        return finished if self.returns_record else result
