"""The runtime steps of a release (fetch its images, migrate, start; in an upgrade of a
stack with ``runtime.down_before_upgrade``, first take the running release down), in a
deploy or an upgrade, through whatever runtime the stack uses.

A build, pull or migration that ran and failed is a verdict and is not retried; Airflow
retries only what failed before it ran, and a ``start`` that failed without conclusive
evidence from the runtime (starting a release is idempotent; a container that cannot start
or crashed makes it a verdict, so the rollback is not delayed). When the run has a ledger
entry (upgrades open one at preflight), the fetch step records the new release's image ids
in it (what the run later compares the runtime with), and the migration notes that it
started and finished: a rollback then restores the data even if this task's process dies,
and a retry never re-runs a migration cut short.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from typing import Any, Literal

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from opsflow.operators.release import entry_id
from opsflow.operators.steps import StepOperator, StepRecord, run_stack
from opsflow.releases.ledger import Ledger, LedgerEntry
from opsflow.runtimes.base import Runtime, RuntimeFailure
from opsflow.runtimes.evidence import conclusive
from opsflow.runtimes.process import CommandFailed
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import check_version

Step = Literal["fetch", "down", "migrate", "start"]
STEPS: tuple[Step, ...] = ("fetch", "down", "migrate", "start")
MIGRATION_STARTED = "migration started"
MIGRATION_FINISHED = "migration finished"


class RuntimeStepOperator(StepOperator):
    """Run one runtime step of a release; with ``dry_run`` log the exact argv only."""

    template_fields: Sequence[str] = ("version", "is_dry_run")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        step: Step,
        version: str,
        timeout_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds!r}")
        self.step = step
        self.version = version
        self.timeout_seconds = timeout_seconds

    def run(self, record: StepRecord, context: Context) -> dict[str, Any]:
        record.version = version = check_version(str(self.version))
        stack = run_stack(self.stack_name)
        runtime = runtime_for(stack)
        commands = runtime.commands(self.step, version)
        record.commands = [shlex.join(argv) for argv in commands]
        ledger = Ledger(self.stack_name)
        entry = None if record.dry_run else ledger.get(entry_id(context))
        if self.step in ("migrate", "start"):
            self._prepare_config(runtime, record)
        if self.step == "start" and not record.dry_run:
            for line in runtime.clear_interrupted_start():  # a re-run after a kill
                self.log.warning("Before start: %s", line)
                record.lines.append(line)
            self._record_applied(runtime, ledger, entry, record)
        if entry is not None and self.step == "migrate":
            self._note_migration_start(ledger, entry)
        if commands and not record.dry_run:
            event = self._wait_if_waiting(runtime, version, here=stack.placement is not None)
            if event is not None:
                return self.resume(record, context, event)
        steps: list[list[str] | None] = [*commands] if commands else [None]
        for argv in steps:
            try:
                self._run(runtime, argv, record)
            except AirflowException as failed:
                if self.step == "start" and not self._cannot_start(runtime):
                    raise  # starting a release again is idempotent: worth a retry
                raise AirflowFailException(str(failed)) from None
        if entry is not None:
            self._note_done(ledger, entry, record)
        return {"images": record.images}

    def _record_applied(
        self, runtime: Runtime, ledger: Ledger, entry: LedgerEntry | None, record: StepRecord
    ) -> None:
        """Store what this start sends (Kubernetes: the rendered objects) in the ledger's
        config store before it is sent, so it can be applied again byte for byte."""
        applied = runtime.applied(record.version)
        if not applied:
            return
        digest = ledger.save_contents(applied).digest
        record.lines.append(f"objects to apply recorded in the config store as {digest[:12]}")
        if entry is not None and f"applied {digest}" not in entry.notes:
            entry.notes.append(f"applied {digest}")
            ledger.write(entry)

    def _wait_if_waiting(
        self, runtime: Runtime, version: str, *, here: bool
    ) -> dict[str, Any] | None:
        """A step that only waits once started (a Kubernetes migration Job) waits in the
        triggerer, or in this worker for a stack placed on its own host (the event is
        returned); :meth:`resume` finishes it."""
        try:
            wait = runtime.begin_wait(self.step, version, self.log)
        except RuntimeFailure as failed:
            raise AirflowFailException(f"{self.step} of {self.stack_name}: {failed}") from None
        if wait is None:
            return None
        from opsflow.triggers.job import JobTrigger

        if here:
            from opsflow.triggers.here import first_event

            self.log.info("Waiting for Job %s in this worker, on the stack's host", wait["job"])
            return first_event(JobTrigger(**wait))
        self.log.info("Waiting for Job %s in the triggerer (no worker slot held)", wait["job"])
        self.defer(
            trigger=JobTrigger(**wait),
            method_name="execute_complete",
        )

    def resume(self, record: StepRecord, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        record.version = version = check_version(str(self.version))
        runtime = runtime_for(run_stack(self.stack_name))
        record.commands = [shlex.join(argv) for argv in runtime.commands(self.step, version)]
        try:
            runtime.end_wait(event, self.log)
        except RuntimeFailure as failed:
            # A migration that ran and failed is a verdict: the rollback restores the data.
            raise AirflowFailException(
                f"{self.step} of {self.stack_name} {version}: {failed}"
            ) from None
        record.detail = f"Job {event.get('job')} complete in {event.get('elapsed')}s"
        ledger = Ledger(self.stack_name)
        entry = ledger.get(entry_id(context))
        if entry is not None:
            self._note_done(ledger, entry, record)
        return {"images": record.images}

    def _prepare_config(self, runtime: Runtime, record: StepRecord) -> None:
        """Config files made from examples must exist before a container of the release
        reads them (the migration's one-off container too)."""
        try:
            lines = runtime.prepare_config(dry_run=record.dry_run)
        except RuntimeFailure as failed:
            raise AirflowFailException(f"{self.step} of {self.stack_name}: {failed}") from None
        for line in lines:
            self.log.info("Config from example: %s", line)
        record.lines += [f"config {line}" for line in lines]

    def _cannot_start(self, runtime: Runtime) -> bool:
        """Whether the runtime shows a failed start is a verdict (a container that cannot
        start or crashed): a retry would only delay the rollback."""
        states = asyncio.run(runtime.context().containers())
        evidence = conclusive(states, {s.name for s in runtime.stack.services}, {})
        if evidence:
            self.log.error(
                "Not retried, the runtime's evidence is conclusive: %s",
                "; ".join(e.line for e in evidence),
            )
        return bool(evidence)

    def _timeout(self, runtime: Runtime) -> float | None:
        if self.timeout_seconds is not None:
            return self.timeout_seconds
        migration = runtime.stack.migration
        if self.step == "migrate" and migration is not None:
            return migration.timeout.total_seconds()
        return None

    def _run(self, runtime: Runtime, argv: list[str] | None, record: StepRecord) -> None:
        env = " ".join(f"{k}={v}" for k, v in runtime.env(record.version).items())
        if argv is None:
            record.detail = "the stack declares no migration"
            self.log.info("Nothing to do: %s", record.detail)
            return
        if record.dry_run:
            self.log.info("DRY RUN - would run (with %s):\n  %s", env, shlex.join(argv))
            return
        self.log.info("Step %s of %s %s (with %s)", self.step, runtime.name, record.version, env)
        try:
            timeout = self._timeout(runtime)
            seconds = runtime.run_argv(argv, record.version, self.log, timeout=timeout)
        except CommandFailed as failed:
            # The first line is the step record's detail and the alert: it names the first
            # error the tool printed (scrubbed, bounded), not its generic last words.
            raise AirflowException(
                f"{self.step} of {self.stack_name} {record.version} failed: {failed.summary}\n"
                + failed.details
            ) from None
        record.detail = f"exit 0 in {seconds:.1f}s"
        if self.step == "fetch":
            record.images = self._image_facts(runtime, record.version)

    def _image_facts(self, runtime: Runtime, version: str) -> dict[str, Any]:
        images = runtime.images(version)
        facts = runtime.image_facts(sorted(set(images.values())))
        missing = [ref for ref, fact in facts.items() if fact["id"] is None]
        if missing:
            raise AirflowException(f"images missing after {self.step}: {', '.join(missing)}")
        return {service: {"image": ref, **facts[ref]} for service, ref in images.items()}

    def _note_migration_start(self, ledger: Ledger, entry: LedgerEntry) -> None:
        if MIGRATION_STARTED in entry.notes and MIGRATION_FINISHED not in entry.notes:
            raise AirflowFailException(
                "an earlier attempt of the migration was cut short: it is not run again "
                "on a database in an unknown state (the rollback restores the backup)"
            )
        if MIGRATION_STARTED not in entry.notes:
            entry.notes.append(MIGRATION_STARTED)
            ledger.write(entry)

    def _note_done(self, ledger: Ledger, entry: LedgerEntry, record: StepRecord) -> None:
        entry = ledger.get(entry.entry_id) or entry
        if self.step == "fetch":
            entry.images = {
                service: {"image": fact["image"], "id": fact.get("id")}
                for service, fact in record.images.items()
            }
        elif self.step == "migrate":
            entry.notes.append(MIGRATION_FINISHED)
        else:
            return
        ledger.write(entry)
