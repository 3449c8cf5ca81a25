"""The Dramatiq actors, one per queue (``dramatiq app.tasks:broker -Q <queue>``).

Each processes a task the api stored: reads its payload, computes a result and finishes
the row. 1.0.0 marks it 'done' with a JSON text result; from 1.1.0 (feature
``results_v2``, migration 0002) it is 'succeeded', the result JSONB, attempts counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import psycopg2

from app import settings
from app.broker import RedisBroker

if settings.FEATURES.get("lumina_sdk"):
    # 1.2.0-worker-crash: the lumina actor's SDK, which this release forgot to install.
    import lumina_sdk  # noqa: F401

log = logging.getLogger("app.tasks")
broker = RedisBroker(settings.REDIS_URL)


def _finish(task_id: int, compute: Callable[[Any], dict[str, Any]]) -> None:
    conn = psycopg2.connect(settings.DATABASE_URL, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT payload FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"task {task_id} does not exist")
            payload = json.loads(row[0]) if isinstance(row[0], str) else row[0]
            done = {"worker_queue": os.environ.get("WORKER_QUEUE"), **compute(payload)}
            result = json.dumps(done)
            if settings.FEATURES.get("results_v2"):
                cur.execute(
                    "UPDATE tasks SET status = 'succeeded', attempts = attempts + 1, result = %s,"
                    " finished_at = now() WHERE id = %s",
                    (result, task_id),
                )
            else:
                cur.execute(
                    "UPDATE tasks SET status = 'done', result = %s, finished_at = now()"
                    " WHERE id = %s",
                    (result, task_id),
                )
    finally:
        conn.close()
    log.info("task %s finished", task_id)


@broker.actor(queue_name="standard_tasks")
def process_standard(task_id: int) -> None:
    _finish(task_id, lambda payload: {"echo": payload})


@broker.actor(queue_name="lumina_tasks")
def process_lumina(task_id: int) -> None:
    _finish(task_id, lambda payload: {"lumina": {"chars": len(json.dumps(payload))}})
