"""The stack lock as tasks: ``lock`` first, ``unlock`` always, in every DAG that changes a stack.

``lock`` is a sensor in reschedule mode: while another deploy, upgrade, rollback or restore
of the stack holds the lock it frees its worker slot between pokes, logs who holds it, and
when it gives up it fails with a message naming the holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from opsflow.operators.steps import (
    RECORD_KEY,
    StepOperator,
    StepRecord,
    as_bool,
    refuse_unknown_conf,
)
from opsflow.releases.lock import LockHolder, StackLock

LOCK_TTL = timedelta(hours=6)
LOCK_WAIT = timedelta(minutes=30)
_ENDED = {"success", "failed"}


def holder_run_ended(ti: Any, holder: LockHolder) -> bool | None:
    """Owner check through Airflow: has the holder's run ended (or vanished)?"""
    try:
        state = ti.get_dagrun_state(holder.dag_id, holder.run_id)
    except Exception as error:
        text = str(error).lower()
        return True if "404" in text or "not found" in text else None
    return str(getattr(state, "value", state)) in _ENDED


class StackLockSensor(BaseSensorOperator):
    """Take the stack lock for this run, waiting while another run holds it."""

    template_fields: Sequence[str] = ("is_dry_run",)
    ui_color = "#fbe9e7"

    def __init__(
        self,
        *,
        stack_name: str,
        dry_run: bool | str = False,
        ttl: timedelta = LOCK_TTL,
        wait: timedelta = LOCK_WAIT,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 5.0)
        super().__init__(timeout=wait.total_seconds(), **kwargs)
        self.stack_name = stack_name
        self.is_dry_run = dry_run
        self.ttl = ttl
        self.wait = wait

    def poke(self, context: Context) -> bool:
        ti = context["ti"]
        lock = StackLock(self.stack_name)
        record = StepRecord(step=self.task_id, dry_run=as_bool(self.is_dry_run))
        if record.dry_run:
            holder = lock.holder()
            record.detail = f"held by {holder.describe()}" if holder else "free"
            self.log.info("DRY RUN - the lock is not taken; it is %s", record.detail)
            ti.xcom_push(key=RECORD_KEY, value=record.finish("dry-run"))
            return True
        owner = LockHolder.new(self.stack_name, ti.dag_id, ti.run_id, self.ttl)
        result = lock.acquire(owner, lambda held: holder_run_ended(ti, held))
        if not result.acquired:
            assert result.holder is not None
            self.log.info(
                "Waiting for the lock of stack %s, held by %s",
                self.stack_name,
                result.holder.describe(),
            )
            return False
        if result.note:
            self.log.warning("%s", result.note)
        record.detail = f"held by this run until {owner.expires_at}"
        record.lines = [result.note] if result.note else []
        self.log.info("Took the lock of stack %s: %s", self.stack_name, lock.where)
        ti.xcom_push(key=RECORD_KEY, value=record.finish("ok"))
        return True

    def execute(self, context: Context) -> Any:
        try:
            refuse_unknown_conf(context, self)
        except AirflowFailException as error:
            record = StepRecord(step=self.task_id)
            context["ti"].xcom_push(key=RECORD_KEY, value=record.finish("failed", str(error)))
            raise
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            holder = StackLock(self.stack_name).holder()
            who = holder.describe() if holder else "a run that has since released it"
            message = (
                f"stack {self.stack_name} is locked by {who}; gave up waiting after "
                f"{int(self.wait.total_seconds())}s"
            )
            record = StepRecord(step=self.task_id)
            context["ti"].xcom_push(key=RECORD_KEY, value=record.finish("failed", message))
            raise AirflowFailException(message) from None


class StackUnlockOperator(StepOperator):
    """Release the lock if this run holds it; always runs, and is safe to run twice."""

    ui_color = "#fbe9e7"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        kwargs.setdefault("retries", 2)
        super().__init__(**kwargs)

    def run(self, record: StepRecord, context: Context) -> None:
        ti = context["ti"]
        if record.dry_run:
            record.detail = "dry run: no lock was taken"
            return
        still = StackLock(self.stack_name).release(ti.dag_id, ti.run_id)
        record.detail = f"lock still held by {still.describe()}" if still else "lock released"
