"""A stand-in for Dramatiq's RedisBroker (Dramatiq is not in bookworm's archive).

Its key layout, in the ``dramatiq`` namespace: a message is Dramatiq's message JSON
(queue_name, actor_name, args, kwargs, options, message_id, message_timestamp) in the hash
``dramatiq:<queue>.msgs``, its id on the list ``dramatiq:<queue>``. A worker moves an id
atomically to its own acks list (``dramatiq:__acks__.<worker>.<queue>``) before running
the actor and acks it afterwards, so a message is lost neither when a worker dies mid-task
(its unacked ids go back on the queue when it stops) nor when the actor fails (the message
goes to the dead-letter queue ``dramatiq:<queue>.XQ``). Workers beat into the sorted set
``dramatiq:__heartbeats__``. Not reproduced: the Lua scripts, retries with backoff,
delayed queues, result backends.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

NAMESPACE = "dramatiq"
HEARTBEATS = f"{NAMESPACE}:__heartbeats__"
HEARTBEAT_TTL_MS = 60_000


class Actor:
    def __init__(self, broker: RedisBroker, fn: Callable[..., Any], queue_name: str) -> None:
        self.broker, self.fn, self.queue_name = broker, fn, queue_name
        self.actor_name = fn.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> str:
        return self.broker.enqueue(self.queue_name, self.actor_name, list(args), kwargs)


class RedisBroker:
    def __init__(self, url: str) -> None:
        self.url = url
        self.actors: dict[str, Actor] = {}
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        """One client per process: a forked worker process opens its own connections."""
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=10, socket_connect_timeout=3
            )
            self._pid = os.getpid()
        return self._client

    def actor(self, queue_name: str = "default") -> Callable[[Callable[..., Any]], Actor]:
        def register(fn: Callable[..., Any]) -> Actor:
            declared = Actor(self, fn, queue_name)
            self.actors[declared.actor_name] = declared
            return declared

        return register

    # ---------------------------------------------------------------- producer

    def enqueue(
        self,
        queue_name: str,
        actor_name: str,
        args: list[Any],
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        message = {
            "queue_name": queue_name,
            "actor_name": actor_name,
            "args": args,
            "kwargs": kwargs or {},
            "options": {},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{NAMESPACE}:{queue_name}.msgs", message["message_id"], json.dumps(message))
        pipe.rpush(f"{NAMESPACE}:{queue_name}", message["message_id"])
        pipe.execute()
        return str(message["message_id"])

    def pending(self, queue_name: str) -> int:
        return int(self.client.llen(f"{NAMESPACE}:{queue_name}"))

    def ping(self) -> bool:
        return bool(self.client.ping())

    # ---------------------------------------------------------------- consumer

    def _acks(self, worker_id: str, queue_name: str) -> str:
        return f"{NAMESPACE}:__acks__.{worker_id}.{queue_name}"

    def fetch(self, queue_name: str, worker_id: str, timeout: float) -> dict[str, Any] | None:
        """The next message, moved to this worker's acks first; None after ``timeout``."""
        message_id = self.client.blmove(
            f"{NAMESPACE}:{queue_name}", self._acks(worker_id, queue_name), timeout, "LEFT", "RIGHT"
        )
        if message_id is None:
            return None
        raw = self.client.hget(f"{NAMESPACE}:{queue_name}.msgs", message_id)
        if raw is None:  # acked by someone else already: drop the stray id
            self.client.lrem(self._acks(worker_id, queue_name), 1, message_id)
            return None
        return dict(json.loads(raw))

    def ack(self, message: dict[str, Any], worker_id: str) -> None:
        queue, message_id = message["queue_name"], message["message_id"]
        pipe = self.client.pipeline(transaction=True)
        pipe.lrem(self._acks(worker_id, queue), 1, message_id)
        pipe.hdel(f"{NAMESPACE}:{queue}.msgs", message_id)
        pipe.execute()

    def nack(self, message: dict[str, Any], worker_id: str) -> None:
        """A failed message goes to the dead-letter queue ``<queue>.XQ``."""
        queue, message_id = message["queue_name"], message["message_id"]
        pipe = self.client.pipeline(transaction=True)
        pipe.lrem(self._acks(worker_id, queue), 1, message_id)
        pipe.hdel(f"{NAMESPACE}:{queue}.msgs", message_id)
        pipe.hset(f"{NAMESPACE}:{queue}.XQ.msgs", message_id, json.dumps(message))
        pipe.rpush(f"{NAMESPACE}:{queue}.XQ", message_id)
        pipe.execute()

    def requeue_unacked(self, queue_name: str, worker_id: str) -> int:
        moved = 0
        while self.client.lmove(
            self._acks(worker_id, queue_name), f"{NAMESPACE}:{queue_name}", "RIGHT", "LEFT"
        ):
            moved += 1
        return moved

    def heartbeat(self, worker_id: str) -> None:
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(HEARTBEATS, {worker_id: now})
        pipe.zremrangebyscore(HEARTBEATS, 0, now - HEARTBEAT_TTL_MS)
        pipe.execute()
