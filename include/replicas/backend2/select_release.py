"""Build step: bake one release into the image (its release.json and its alembic revisions).

Run as ``python3 select_release.py VERSION SRC_DIR``; any problem stops the build with a
message that names the release and the releases that exist.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

APP = Path("/app")


def fail(message: str) -> None:
    print(f"select_release: ERROR: {message}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: select_release.py VERSION SRC_DIR")
    version, src = sys.argv[1], Path(sys.argv[2])
    releases = src / "releases"
    known = sorted(p.name for p in releases.iterdir() if (p / "release.json").is_file())
    if not version:
        fail(f"build arg VERSION is empty; set OPSFLOW_VERSION to one of {known}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", version) or version not in known:
        fail(f"release {version!r} does not exist; known releases: {known}")
    release_file = releases / version / "release.json"
    release = json.loads(release_file.read_text(encoding="utf-8"))
    if release.get("version") != version:
        fail(f"{release_file} says version {release.get('version')!r}, expected {version!r}")
    versions = APP / "alembic" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    for name in release["migrations"]:
        source = src / "alembic" / "all" / f"{name}.py"
        if not source.is_file():
            fail(f"release {version} lists migration {name!r}, but {source} does not exist")
        shutil.copy2(source, versions / source.name)
    shutil.copy2(release_file, APP / "release.json")
    print(f"select_release: release {version}, migrations {release['migrations']}")


if __name__ == "__main__":
    main()
