"""Operators that run one Compose step of a release: fetch images, migrate, start."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any, Literal

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from opsflow.operators.steps import RECORD_KEY, StepRecord, as_bool, first_line
from opsflow.runtimes.compose import ComposeProject, check_version
from opsflow.runtimes.process import CommandFailed, ProcessRunner
from opsflow.stack.loader import load_stack

Step = Literal["fetch", "migrate", "start"]
STEPS: tuple[Step, ...] = ("fetch", "migrate", "start")


class ComposeStepOperator(BaseOperator):
    """Run one step of a release of a stack through ``docker compose``.

    The stack file is read when the task runs, not from the parsed DAG, so the commands
    match the file on disk at that moment. With ``dry_run`` the exact argv is logged and
    nothing is executed.
    """

    template_fields: Sequence[str] = ("version", "is_dry_run")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        stack_name: str,
        step: Step,
        version: str,
        dry_run: bool | str = False,
        timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds!r}")
        self.stack_name = stack_name
        self.step = step
        self.version = version
        self.is_dry_run = dry_run
        self.timeout_seconds = timeout_seconds
        self._runner: ProcessRunner | None = None

    def _argv(self, project: ComposeProject) -> list[str] | None:
        if self.step == "fetch":
            return project.fetch_argv()
        if self.step == "migrate":
            return project.migrate_argv()
        return project.up_argv()

    def _timeout(self, project: ComposeProject) -> float | None:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        migration = project.stack.migration
        if self.step == "migrate" and migration is not None:
            return migration.timeout.total_seconds()
        return None

    def execute(self, context: Context) -> dict[str, Any]:
        version = check_version(str(self.version))
        project = ComposeProject.for_stack(load_stack(self.stack_name))
        argv = self._argv(project)
        record = StepRecord(step=self.step, version=version, dry_run=as_bool(self.is_dry_run))
        record.commands = [shlex.join(argv)] if argv else []
        ti = context["ti"]
        try:
            self._run(project, argv, record)
            result = record.finish("dry-run" if record.dry_run else "ok")
        except Exception as error:
            ti.xcom_push(key=RECORD_KEY, value=record.finish("failed", first_line(str(error))))
            raise
        ti.xcom_push(key=RECORD_KEY, value=result)
        return result

    def _run(self, project: ComposeProject, argv: list[str] | None, record: StepRecord) -> None:
        env = " ".join(f"{k}={v}" for k, v in project.env(record.version).items())
        if argv is None:
            record.detail = "the stack declares no migration"
            self.log.info("Nothing to do: %s", record.detail)
            return
        if record.dry_run:
            self.log.info("DRY RUN - would run (with %s):\n  %s", env, shlex.join(argv))
            return
        self.log.info("Step %s of %s %s (with %s)", self.step, project.name, record.version, env)
        self._runner = project.runner(record.version, self.log)
        try:
            result = self._runner.run(argv, timeout=self._timeout(project))
        except CommandFailed as failed:
            # The first line is the step record's detail and the alert: it names the first
            # error the tool printed (scrubbed, bounded), not its generic last words.
            raise AirflowException(
                f"{self.step} of {self.stack_name} {record.version} failed: {failed.summary}\n"
                + failed.details
            ) from None
        finally:
            self._runner = None
        record.detail = f"exit 0 in {result.seconds:.1f}s"
        if self.step == "fetch":
            record.images = self._image_facts(project, record.version)

    def _image_facts(self, project: ComposeProject, version: str) -> dict[str, Any]:
        from opsflow.runtimes.engine import image_facts

        images = project.images(version)
        facts = image_facts(sorted(set(images.values())))
        missing = [ref for ref, fact in facts.items() if fact["id"] is None]
        if missing:
            raise AirflowException(f"images missing after {self.step}: {', '.join(missing)}")
        return {service: {"image": ref, **facts[ref]} for service, ref in images.items()}

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.terminate()
