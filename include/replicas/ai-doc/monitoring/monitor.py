"""``monitor.py prometheus PORT TARGET...`` or ``monitor.py grafana PORT PROMETHEUS``.

prometheus: scrapes each target's /metrics every 15 s, answers ``/-/healthy`` and
``/-/ready`` and serves the last scrape on ``/api/v1/targets``. grafana: answers
``/api/health`` with ``{"database": "ok"}`` while its Prometheus answers ``/-/healthy``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCRAPES: dict[str, str] = {}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.read().decode()


def scrape(targets: list[str]) -> None:
    while True:
        for target in targets:
            try:
                SCRAPES[target] = "up: " + fetch(f"http://{target}/metrics").splitlines()[0]
            except OSError as err:
                SCRAPES[target] = f"down: {err}"
        time.sleep(15)


def main(argv: list[str]) -> None:
    role, port, *targets = argv[1:]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body = 404, {"error": self.path}
            if role == "prometheus" and self.path in ("/-/healthy", "/-/ready"):
                status, body = 200, {"status": "Prometheus stand-in is Healthy."}
            elif role == "prometheus" and self.path == "/api/v1/targets":
                status, body = 200, {"targets": SCRAPES}
            elif role == "grafana" and self.path == "/api/health":
                try:
                    fetch(f"http://{targets[0]}/-/healthy")
                    status, body = 200, {"database": "ok"}
                except OSError as err:
                    status, body = 503, {"database": "ok", "prometheus": str(err)}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if role == "prometheus":
        threading.Thread(target=scrape, args=(targets,), daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv)
