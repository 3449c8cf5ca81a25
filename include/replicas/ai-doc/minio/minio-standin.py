"""MinIO stand-in: ``minio server DIR --console-address :9001`` served by moto's S3 server.

The S3 API on 9000 is moto's (``moto.server``'s werkzeug app, S3 only); MinIO's own probes
``/minio/health/live`` and ``/minio/health/ready`` answer 200 as MinIO's do; the console
port answers a plain page. moto keeps objects in memory: unlike MinIO, nothing is written
to DIR, so a restart of the container empties the store.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

HEALTH_PATHS = ("/minio/health/live", "/minio/health/ready", "/minio/health/cluster")


def s3_app() -> Any:
    app = DomainDispatcherApplication(create_backend_app)

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") in HEALTH_PATHS:
            start_response("200 OK", [("Content-Length", "0"), ("Server", "MinIO stand-in (moto)")])
            return [b""]
        return app(environ, start_response)

    return wrapped


class Console(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<html><body>MinIO console stand-in (moto S3 on :9000)</body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "server":
        print("usage: minio server DIR [--address :9000] [--console-address :9001]",
              file=sys.stderr)
        return 2
    options = dict(zip(argv[3::2], argv[4::2]))
    api = port_of(options.get("--address", ":9000"))
    console = port_of(options.get("--console-address", ":9001"))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # as MinIO: docker stop ends it
    server = ThreadingHTTPServer(("0.0.0.0", console), Console)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"MinIO stand-in: S3 API (moto) on :{api}, console on :{console}", flush=True)
    run_simple("0.0.0.0", api, s3_app(), threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
