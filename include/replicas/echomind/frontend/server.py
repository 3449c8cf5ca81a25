"""Stand-in for EchoMind's Next.js frontend: GET / answers 200 with the app's page (it names
the release), anything else 404, on $HOSTNAME:$PORT (Next.js standalone's variables)."""

import html
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = Path("/app/VERSION").read_text(encoding="utf-8").strip()
PAGE = (
    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>EchoMind</title>"
    f"<meta name=\"echomind-version\" content=\"{html.escape(VERSION)}\"></head>"
    "<body><div id=\"__next\">EchoMind mail assistant</div></body></html>"
).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = (200, PAGE) if self.path == "/" else (404, b"not found")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"frontend {VERSION}: {self.command} {self.path} -> {args[1]}", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((os.environ["HOSTNAME"], int(os.environ["PORT"])), Handler)
    print(f"frontend {VERSION}: ready on {os.environ['HOSTNAME']}:{os.environ['PORT']}", flush=True)
    server.serve_forever()
