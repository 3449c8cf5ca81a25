"""docreader stand-in: a gRPC server on 50051 with the standard grpc.health.v1 service
(generated stubs) and ``docreader.DocReader/Read`` (raw bytes: plain text in, a JSON word
count out; the real one parses PDF, DOCX and images). Health is NOT_SERVING while the
models load and SERVING after; a release whose models never load (release.json
``"models": "never-load"``) stays NOT_SERVING for ever."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

RELEASE = json.loads(Path("/app/release.json").read_text())
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.status = NOT_SERVING

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        if request.service not in ("", "docreader.DocReader"):
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=self.status)

    def Watch(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        yield health_pb2.HealthCheckResponse(status=self.status)


def read(payload: bytes, context: Any) -> bytes:
    text = payload.decode("utf-8", "replace")
    return json.dumps({"words": len(text.split()), "chars": len(text),
                       "version": RELEASE["version"]}).encode()


def main() -> int:
    health = Health()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    methods = {"Read": grpc.unary_unary_rpc_method_handler(read)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("docreader.DocReader",
                                                                         methods),))
    server.add_insecure_port("0.0.0.0:50051")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    print(f"docreader {RELEASE['version']}: gRPC on :50051, loading models", flush=True)

    def load() -> None:
        if RELEASE.get("models") == "never-load":
            while True:
                print("docreader: OCR models still loading (NOT_SERVING)", flush=True)
                time.sleep(5)
        time.sleep(0.5)
        health.status = SERVING
        print("docreader: models loaded, SERVING", flush=True)

    threading.Thread(target=load, daemon=True).start()
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
