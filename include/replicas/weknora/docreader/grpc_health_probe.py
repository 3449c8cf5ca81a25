#!/usr/bin/env python3
"""grpc_health_probe stand-in: ``grpc_health_probe -addr=HOST:PORT [-service=NAME]``
calls grpc.health.v1.Health/Check and exits 0 on SERVING, 2 when it cannot connect and 4
on any other status, printing what the real probe prints."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    options = dict(arg.lstrip("-").partition("=")[::2] for arg in argv[1:])
    address, service = options.get("addr", "localhost:50051"), options.get("service", "")
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError as err:
            print(f"error: health rpc failed: {err.code().name}", file=sys.stderr)
            return 2
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f'service unhealthy (responded with "{name}")', file=sys.stderr)
        return 4
    print(f"status: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
