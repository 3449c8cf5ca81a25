#!/usr/bin/env python3
"""Container healthcheck: exit 0 only when URL answers 200 within the timeout.

The image has no curl or wget; Python's standard library is already there.
"""

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith("http://127.0.0.1:"):
        print("usage: airflow-healthcheck http://127.0.0.1:PORT/PATH", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[1], timeout=5) as response:  # noqa: S310
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
