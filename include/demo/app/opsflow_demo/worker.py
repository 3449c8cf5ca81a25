"""Background worker: a heartbeat file for the container healthcheck and, from release
1.1.0 on (feature ``worker_events``), one row in ``worker_events`` per cycle."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import psycopg2

from opsflow_demo import logs
from opsflow_demo.checks import db_connect
from opsflow_demo.settings import load_release

HEARTBEAT = Path(os.environ.get("WORKER_HEARTBEAT_FILE", "/tmp/worker-heartbeat"))  # noqa: S108
INTERVAL = float(os.environ.get("WORKER_INTERVAL_SECONDS", "3"))

stop = threading.Event()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop.set()


def write_event(release_version: str, cycle: int) -> None:
    conn = db_connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO worker_events (worker, note) VALUES (%s, %s)",
                (socket.gethostname(), f"release {release_version} cycle {cycle}"),
            )
    finally:
        conn.close()


def main() -> None:
    release = load_release()
    log = logs.setup("worker")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    log.info("opsflow-demo worker %s started, interval %ss", release.version, INTERVAL)
    cycle = 0
    while not stop.is_set():
        cycle += 1
        HEARTBEAT.touch()
        if release.has("worker_events"):
            try:
                write_event(release.version, cycle)
            except psycopg2.Error as exc:
                # Not fatal: before the migration ran the table does not exist yet.
                log.warning("cycle %s: cannot write worker event: %s", cycle, str(exc).strip())
        stop.wait(INTERVAL)
    log.info("worker stopped after %s cycles", cycle)


if __name__ == "__main__":
    main()
