"""Log roots on a Kubernetes stack's PersistentVolumeClaims, cleaned by a pod that mounts
the claim (``kubernetes_claim_pods.py``) and runs the same file engine
(``opsflow.logs.files``) as on a host.

The engine is stdlib-only, so its modules travel in the pod's spec as a zip (an environment
variable): the rules, the symlink-proof walk and the system-directory checks are the same
code, with the claim's mount as the only allowed root. What the pod cannot see: which files
the writers hold open (they run in other pods), so ``min_age_minutes`` alone protects a file
being written; the report says so.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opsflow.runtimes.kubernetes_claim_pods import MOUNT, REPORT_MARK, ClaimPods
from opsflow.runtimes.process import LineLogger

ROLE = "log-cleanup"
OPEN_FILES_NOTE = (
    "files the writers hold open are not visible from the cleanup pod; only "
    "min_age_minutes keeps a file that is being written"
)
# The engine and what it imports, relative to the package's parent directory.
ENGINE_MODULES = (
    "opsflow/__init__.py",
    "opsflow/errors.py",
    "opsflow/logs/__init__.py",
    "opsflow/logs/compress.py",
    "opsflow/logs/files.py",
    "opsflow/stack/__init__.py",
    "opsflow/stack/safety.py",
)
ENGINE_ENV = "OPSFLOW_ENGINE_ZIP"
# Runs in the pod as ``python3 -c BOOTSTRAP MOUNT SUBDIR RULE_JSON MODE``: unpacks the
# engine from $OPSFLOW_ENGINE_ZIP (base64), cleans MOUNT/SUBDIR with MOUNT as the only
# allowed root and prints the report as its last line.
BOOTSTRAP = f"""\\
import base64, json, os, sys, tempfile
from pathlib import Path
mount, subdir, rule, mode = sys.argv[1:5]
engine = os.path.join(tempfile.mkdtemp(prefix="opsflow-"), "engine.zip")
with open(engine, "wb") as out:
    out.write(base64.b64decode(os.environ.pop("{ENGINE_ENV}")))
sys.path.insert(0, engine)
os.environ["OPSFLOW_ALLOWED_ROOTS"] = mount
from opsflow.logs.files import CleanupRule, clean_root, open_file_ids
root = Path(mount, subdir) if subdir else Path(mount)
report = clean_root(root, CleanupRule(**json.loads(rule)), dry_run=mode == "dry",
                    open_files=open_file_ids())
print("{REPORT_MARK}" + json.dumps(report.to_dict()), flush=True)
"""


def engine_zip() -> str:
    """The engine's modules as a zip in base64, read from this installation."""
    base = Path(__file__).resolve().parents[2]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ENGINE_MODULES:
            archive.writestr(name, (base / name).read_bytes())
    return base64.b64encode(buffer.getvalue()).decode()


def cleanup_args(subdir: str, rule: Mapping[str, Any], *, dry_run: bool) -> list[str]:
    return [MOUNT, subdir, json.dumps(dict(rule)), "dry" if dry_run else "real"]


def clean_claim(
    pods: ClaimPods,
    claim: str,
    subdir: str,
    rule: Mapping[str, Any],
    *,
    dry_run: bool,
    log: LineLogger,
) -> dict[str, Any]:
    """The engine's report on ``claim``/``subdir``, from a pod deleted afterwards."""
    args = cleanup_args(subdir, rule, dry_run=dry_run)
    env = {ENGINE_ENV: engine_zip()}
    with pods.started(ROLE, claim, BOOTSTRAP, args, log, env=env) as name:
        report = pods.report(name, log)
    report["root"] = f"claim:{claim}" + (f"/{subdir}" if subdir else "")
    report["note"] = OPEN_FILES_NOTE
    return report
