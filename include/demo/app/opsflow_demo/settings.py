"""Runtime settings from the environment plus the release baked into the image.

The release file (``/app/release.json``) is copied from ``releases/<VERSION>/`` at build
time, so the image itself knows which version it is and which schema it expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELEASE_FILE = Path(os.environ.get("OPSFLOW_RELEASE_FILE", "/app/release.json"))


@dataclass(frozen=True)
class Release:
    version: str
    schema_head: str
    features: tuple[str, ...]

    def has(self, feature: str) -> bool:
        return feature in self.features


def load_release(path: Path = RELEASE_FILE) -> Release:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return Release(
        version=str(data["version"]),
        schema_head=str(data["schema_head"]),
        features=tuple(data.get("features", [])),
    )


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"environment variable {name} is required")
    return value


def pg_params() -> dict[str, Any]:
    """Keyword arguments for ``psycopg2.connect`` (no DSN string: passwords need no quoting)."""
    return {
        "host": os.environ.get("POSTGRES_HOST", "postgres"),
        "port": int(os.environ.get("POSTGRES_PORT", "5432")),
        "user": os.environ.get("POSTGRES_USER", "app"),
        "password": _required("POSTGRES_PASSWORD"),
        "dbname": os.environ.get("POSTGRES_DB", "app"),
        "connect_timeout": int(os.environ.get("POSTGRES_CONNECT_TIMEOUT", "3")),
        "application_name": os.environ.get("APP_NAME", "opsflow-demo"),
    }


def redis_params() -> dict[str, Any]:
    return {
        "host": os.environ.get("REDIS_HOST", "redis"),
        "port": int(os.environ.get("REDIS_PORT", "6379")),
        "password": _required("REDIS_PASSWORD"),
        "socket_timeout": 3,
        "socket_connect_timeout": 3,
    }


def log_dir() -> Path | None:
    value = os.environ.get("APP_LOG_DIR")
    return Path(value) if value else None
