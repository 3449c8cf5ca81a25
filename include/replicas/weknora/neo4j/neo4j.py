"""Neo4j stand-in: the HTTP discovery document on 7474 and Bolt's version handshake on
7687 (the 0x6060B017 preamble and four proposed versions, answered with 4.4), which is
what a client's connectivity check and a TCP probe see. No graph, no Cypher."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BOLT_MAGIC = b"\x60\x60\xb0\x17"


class Discovery(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"bolt_direct": "bolt://localhost:7687",
                           "bolt_routing": "neo4j://localhost:7687",
                           "neo4j_version": "5.26.0 (stand-in)",
                           "neo4j_edition": "community"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def bolt(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(5)
        try:
            hello = conn.recv(20)
        except OSError:
            return
        conn.sendall(b"\x00\x00\x04\x04" if hello[:4] == BOLT_MAGIC else b"\x00\x00\x00\x00")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http = ThreadingHTTPServer(("0.0.0.0", 7474), Discovery)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = socket.create_server(("0.0.0.0", 7687))
    print("Neo4j stand-in: HTTP on :7474, Bolt handshake on :7687", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=bolt, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
