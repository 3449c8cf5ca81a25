"""Jaeger all-in-one stand-in: ``/`` and ``/api/services`` on the query port 16686, the
admin port's health ``{"status": "Server available"}`` on 14269, and sockets bound on
the OTLP (4317, 4318), collector (14250, 14268), Zipkin (9411), config (5778) and agent
UDP (6831, 6832) ports, accepting and discarding what arrives. No spans are stored."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TCP_PORTS = (4317, 4318, 14250, 14268, 9411, 5778)
UDP_PORTS = (6831, 6832)


def handler(documents: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = documents.get(self.path.split("?")[0], documents["/"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def sink(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        conn.close()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    query = {"/": b"<html><body>Jaeger UI stand-in</body></html>\n",
             "/api/services": json.dumps({"data": ["weknora-app"], "total": 1}).encode()}
    admin = {"/": json.dumps({"status": "Server available"}).encode()}
    for port, documents in ((16686, query), (14269, admin)):
        http = ThreadingHTTPServer(("0.0.0.0", port), handler(documents))
        threading.Thread(target=http.serve_forever, daemon=True).start()
    for port in TCP_PORTS:
        threading.Thread(target=sink, args=(socket.create_server(("0.0.0.0", port)),),
                         daemon=True).start()
    udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in UDP_PORTS]
    for sock, port in zip(udp, UDP_PORTS):
        sock.bind(("0.0.0.0", port))
    print("Jaeger stand-in: UI on :16686, admin on :14269", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
