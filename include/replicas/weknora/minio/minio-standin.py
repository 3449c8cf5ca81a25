"""MinIO stand-in: ``minio server DIR --console-address :9001`` served by moto's S3 server.

The S3 API on 9000 is moto's (``moto.server``'s werkzeug app, S3 only); MinIO's probes
``/minio/health/live`` and ``/minio/health/ready`` answer 200 as MinIO's do; the console
port answers a plain page. moto keeps objects in memory, so unlike ai-doc's copy this one
keeps DIR as MinIO does: at SIGTERM (``docker compose down`` / ``stop``) every bucket and
object is written to DIR/<bucket>/<key>, and at start DIR is loaded back. WeKnora's upgrade
takes every container down, so without this the bucket would not survive an upgrade (it
does with MinIO). A container killed without SIGTERM loses what it held since its start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

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


def client(api: int) -> Any:
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{api}", region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def load(data: Path, api: int) -> int:
    s3, count = client(api), 0
    for bucket in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        s3.create_bucket(Bucket=bucket.name)
        for path in sorted(p for p in bucket.rglob("*") if p.is_file()):
            s3.put_object(Bucket=bucket.name, Key=str(path.relative_to(bucket)),
                          Body=path.read_bytes())
            count += 1
    return count


def save(data: Path, api: int) -> int:
    s3, count = client(api), 0
    for bucket in s3.list_buckets()["Buckets"]:
        root = data / bucket["Name"]
        root.mkdir(exist_ok=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                target = root / item["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                tmp = target.with_name(f".{target.name}.part")
                tmp.write_bytes(body)
                tmp.replace(target)
                count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "server":
        print("usage: minio server DIR [--address :9000] [--console-address :9001]",
              file=sys.stderr)
        return 2
    data = Path(argv[2])
    options = dict(zip(argv[3::2], argv[4::2]))
    api = port_of(options.get("--address", ":9000"))
    console = port_of(options.get("--console-address", ":9001"))
    server = make_server("0.0.0.0", api, s3_app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    loaded = load(data, api)
    done = threading.Event()

    def stop(*_: object) -> None:
        saved = save(data, api)
        print(f"MinIO stand-in: {saved} objects kept in {data}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    panel = ThreadingHTTPServer(("0.0.0.0", console), Console)
    threading.Thread(target=panel.serve_forever, daemon=True).start()
    print(f"MinIO stand-in: S3 API (moto) on :{api}, console on :{console}, "
          f"{loaded} objects loaded from {data}", flush=True)
    while not done.is_set():
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
