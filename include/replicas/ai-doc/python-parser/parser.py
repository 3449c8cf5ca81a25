"""Stand-in for ai-doc's Python document parser: a gRPC server on 50051.

Service ``ai_doc.parser.DocumentParser``, method ``Parse``: the request is a document's
bytes, the answer a JSON object (``words``, ``lines``, ``title``), serialised as bytes
(no generated stubs). The real service parses PDF and DOCX; this one reads plain text.
It offers no other method (``Embed`` answers UNIMPLEMENTED) and, like the guide's, no
grpc.health.v1 service: its compose healthcheck is a socket connect.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent import futures

import grpc

PORT = 50051


def parse(request: bytes, context: grpc.ServicerContext) -> bytes:
    text = request.decode("utf-8", errors="replace")
    lines = text.splitlines()
    return json.dumps(
        {"words": len(text.split()), "lines": len(lines), "title": lines[0] if lines else ""}
    ).encode()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # docker stop ends it at once
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "ai_doc.parser.DocumentParser", {"Parse": grpc.unary_unary_rpc_method_handler(parse)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{PORT}")
    server.start()
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} python-parser: gRPC on :{PORT}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
