"""Waits in the triggerer for a Kubernetes Job (a release's migration) to finish, so a
migration of many minutes holds no worker slot.

The deadline comes from ``started_at``, so a trigger rebuilt after a triggerer restart
keeps it. The Job's conditions decide (``runtimes/kubernetes_status.job_outcome``); a Job
deleted under the wait fails it, as nothing is left to say the schema is right.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from opsflow.runtimes.kubernetes_status import job_outcome

CLASSPATH = "opsflow.triggers.job.JobTrigger"
PROGRESS_EVERY = 30.0


class JobTrigger(BaseTrigger):
    """Fire ``{"status": "complete" | "failed" | "timeout", "job", "reason", "elapsed"}``."""

    def __init__(
        self,
        *,
        conn_id: str,
        namespace: str,
        job: str,
        timeout: float,
        poll: float = 2.0,
        started_at: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.conn_id = conn_id
        self.namespace = namespace
        self.job = job
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.started_at = started_at or datetime.now(UTC).isoformat()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "conn_id": self.conn_id,
                "namespace": self.namespace,
                "job": self.job,
                "timeout": self.timeout,
                "poll": self.poll,
                "started_at": self.started_at,
            },
        )

    def _elapsed(self) -> float:
        return (datetime.now(UTC) - datetime.fromisoformat(self.started_at)).total_seconds()

    async def _read(self) -> dict[str, Any] | None:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        async with AsyncKubernetesHook(conn_id=self.conn_id).get_conn() as api:
            try:
                job = await client.BatchV1Api(api).read_namespaced_job(self.job, self.namespace)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
            plain: dict[str, Any] = api.sanitize_for_serialization(job)
            return plain

    def _event(self, status: str, reason: str | None) -> TriggerEvent:
        payload = {"status": status, "job": self.job, "reason": reason,
                   "elapsed": round(self._elapsed(), 1)}  # fmt: skip
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        reported = 0.0
        while True:
            job = await self._read()
            if job is None:
                yield self._event("failed", "the Job was deleted before it finished")
                return
            done, failure = job_outcome(job)
            if done:
                yield self._event("failed" if failure else "complete", failure)
                return
            if self._elapsed() >= self.timeout:
                yield self._event("timeout", f"did not finish within {self.timeout:.0f}s")
                return
            if self._elapsed() - reported >= PROGRESS_EVERY:
                reported = self._elapsed()
                active = (job.get("status") or {}).get("active") or 0
                self.log.info("Job %s: %s pod(s) active after %.0fs", self.job, active, reported)
            await asyncio.sleep(min(self.poll, max(self.timeout - self._elapsed(), 0.1)))
