"""HTTP API: health endpoints for the deploy gate, /version, and /items to show data."""

from __future__ import annotations

import json
import os
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import psycopg2

from opsflow_demo import logs
from opsflow_demo.checks import db_connect, readiness
from opsflow_demo.settings import load_release

RELEASE = load_release()
log = logs.setup("api")
MAX_BODY = 64 * 1024
CRASH_EXIT_STATUS = 3
"""Exit status of a release with the ``crash_at_start`` feature: a release whose api dies
at every start, as one with a bad config or a missing dependency does."""


class Handler(BaseHTTPRequestHandler):
    server_version = "opsflow-demo"
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # Health probes every few seconds would drown everything else.
        if not self.path.startswith("/health/"):
            log.info("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health/live":
            self._send(200, {"status": "live"})
        elif path == "/health/ready":
            ok, body = readiness(RELEASE)
            self._send(200 if ok else 503, body)
        elif path == "/version":
            self._send(200, {"version": RELEASE.version, "schema_head": RELEASE.schema_head})
        elif path == "/items":
            self._items()
        elif path == "/events" and RELEASE.has("worker_events"):
            self._events()
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/items":
            self._send(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._send(400, {"error": "JSON body with a name required"})
            return
        try:
            data = json.loads(self.rfile.read(length))
            name = str(data["name"])
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": "JSON body with a name required"})
            return
        try:
            conn = db_connect()
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO items (name) VALUES (%s) RETURNING id, name, created_at",
                        (name,),
                    )
                    row = cur.fetchone()
            finally:
                conn.close()
        except psycopg2.Error as exc:
            self._send(503, {"error": str(exc).strip()})
            return
        self._send(201, {"id": row[0], "name": row[1], "created_at": row[2]})

    def _query(self, sql: str) -> None:
        try:
            conn = db_connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    columns = [c.name for c in cur.description]
                    rows = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
            finally:
                conn.close()
        except psycopg2.Error as exc:
            self._send(503, {"error": str(exc).strip()})
            return
        self._send(200, {"count": len(rows), "rows": rows})

    def _items(self) -> None:
        self._query("SELECT id, name, created_at FROM items ORDER BY id")

    def _events(self) -> None:
        self._query(
            "SELECT id, worker, note, created_at FROM worker_events ORDER BY id DESC LIMIT 100"
        )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # PID 1 ignores SIGTERM without a handler; docker stop would wait 10 s and kill.
    raise SystemExit(0)


def main() -> None:
    if RELEASE.has("crash_at_start"):
        # Before binding the port: the container exits and Compose restarts it, again and
        # again (restart: unless-stopped), which is the crash loop the health gate must see.
        log.error(
            "opsflow-demo api %s: feature crash_at_start, exiting with status %s before serving",
            RELEASE.version,
            CRASH_EXIT_STATUS,
        )
        raise SystemExit(CRASH_EXIT_STATUS)
    signal.signal(signal.SIGTERM, _on_sigterm)
    port = int(os.environ.get("API_LISTEN_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - container port
    server.daemon_threads = True
    log.info("opsflow-demo api %s listening on :%s", RELEASE.version, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
