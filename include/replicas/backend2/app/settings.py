"""Settings from the environment, with the guide's names and defaults, and the release
baked into the image (/app/release.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

RELEASE = json.loads(Path("/app/release.json").read_text(encoding="utf-8"))
FEATURES: dict = RELEASE.get("features", {})
VERSION: str = RELEASE["version"]

DATABASE_URL = os.environ["DATABASE_URL"]
REDIS_URL = os.environ["REDIS_URL"]
LOG_LEVEL = os.getenv("LOG_LEVEL", "INFO")
API_V1_STR = os.getenv("API_V1_STR", "/api/v1")
REDIS_KEY_PREFIX = os.getenv("REDIS_KEY_PREFIX", "app:")

# Queue -> the actor that consumes it (app.tasks), so the api can enqueue without
# importing the actors.
ACTORS = {"standard_tasks": "process_standard", "lumina_tasks": "process_lumina"}
