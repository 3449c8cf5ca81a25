"""Build step: bake one release's release.json into the backend image.

Run as ``python3 select_release.py VERSION SRC_DIR``; an unknown release stops the build
with a message naming the releases that exist.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"select_release: ERROR: {message}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: select_release.py VERSION SRC_DIR")
    version, src = sys.argv[1], Path(sys.argv[2])
    known = sorted(p.name for p in (src / "releases").iterdir() if (p / "release.json").is_file())
    if version not in known:
        fail(f"release {version!r} does not exist; known releases: {known}")
    release_file = src / "releases" / version / "release.json"
    release = json.loads(release_file.read_text(encoding="utf-8"))
    if release.get("version") != version:
        fail(f"{release_file} says version {release.get('version')!r}, expected {version!r}")
    shutil.copy2(release_file, Path("/app/release.json"))
    print(f"select_release: release {version}, features {release.get('features', {})}")


if __name__ == "__main__":
    main()
