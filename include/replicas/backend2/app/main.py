"""Backend2's FastAPI app (``uvicorn app.main:app --host 0.0.0.0 --port 8000``).

- ``GET /health``: the guide's component status; 200 ``{"status": "healthy"}`` while
  PostgreSQL and Redis answer, else 503 ``{"status": "unhealthy"}``, each component's
  result either way;
- ``GET /version``: the release and the schema head it expects;
- ``POST /api/v1/tasks`` ``{"queue": "standard_tasks"|"lumina_tasks", "payload": {...}}``:
  a row in ``tasks``, a message for the queue's actor, the counter
  ``app:tasks:submitted`` in Redis; ``GET /api/v1/tasks/{id}``: the row.

Every request is logged to ``logs/app.log`` (JSON, rotated by the guide's handler).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg2
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from app import settings
from app.broker import RedisBroker
from app.logging_config import configure

configure()
log = logging.getLogger("app.api")
broker = RedisBroker(settings.REDIS_URL)
app = FastAPI(title="Backend2", version=settings.VERSION)


def _db() -> Any:
    return psycopg2.connect(settings.DATABASE_URL, connect_timeout=3)


def _ping_database() -> None:
    conn = _db()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
    finally:
        conn.close()


def _component(check: Any) -> dict[str, str]:
    try:
        check()
    except Exception as err:  # noqa: BLE001 - every failure is the component's status
        return {"status": "down", "error": f"{type(err).__name__}: {err}"[:200]}
    return {"status": "up"}


@app.get("/health")
def health() -> JSONResponse:
    components = {"database": _component(_ping_database), "redis": _component(broker.ping)}
    healthy = all(c["status"] == "up" for c in components.values())
    body: dict[str, Any] = {
        "status": "healthy" if healthy else "unhealthy",
        "version": settings.VERSION,
        "components": components,
    }
    if healthy:
        body["queues"] = {queue: {"pending": broker.pending(queue)} for queue in settings.ACTORS}
    log.info("health %s", body["status"])
    return JSONResponse(body, status_code=200 if healthy else 503)


@app.get("/version")
def version() -> dict[str, Any]:
    return {"version": settings.VERSION, "schema_head": settings.RELEASE["schema_head"]}


@app.post(f"{settings.API_V1_STR}/tasks", status_code=201)
def create_task(body: dict = Body(...)) -> Any:  # noqa: B008 - FastAPI's idiom
    queue = body.get("queue", "standard_tasks")
    if queue not in settings.ACTORS:
        return JSONResponse({"detail": f"unknown queue {queue!r}"}, status_code=422)
    conn = _db()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO tasks (queue, payload) VALUES (%s, %s) RETURNING id",
                (queue, json.dumps(body.get("payload", {}))),
            )
            task_id = int(cur.fetchone()[0])
    finally:
        conn.close()
    broker.enqueue(queue, settings.ACTORS[queue], [task_id])
    broker.client.incr(f"{settings.REDIS_KEY_PREFIX}tasks:submitted")
    log.info("task %s queued on %s", task_id, queue)
    return {"id": task_id, "queue": queue}


@app.get(f"{settings.API_V1_STR}/tasks/{{task_id}}")
def get_task(task_id: int) -> Any:
    conn = _db()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
            row = cur.fetchone()
            names = [c.name for c in cur.description]
    finally:
        conn.close()
    if row is None:
        return JSONResponse({"detail": f"no task {task_id}"}, status_code=404)
    task = dict(zip(names, row, strict=True))
    for key in ("payload", "result"):
        if isinstance(task.get(key), str):
            task[key] = json.loads(task[key])
    for key in ("created_at", "finished_at"):
        if task.get(key) is not None:
            task[key] = task[key].isoformat()
    return task
