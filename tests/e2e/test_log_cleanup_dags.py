"""End to end: ``demo__log_cleanup``, ``airflow__log_cleanup`` and the metadata DB clean job.

Real files in the demo stack's named log volume, the real containers and images of the
deployed demo, and a real Airflow home (SQLite) for Airflow's own logs and metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from opsflow.runtimes.compose import compose_base_argv
from support import REPO_ROOT
from support.demo import E2E_PROJECT, DemoDeployment

pytestmark = pytest.mark.e2e

DAY = 86400.0


def _age(path: Path, days: float) -> None:
    moment = time.time() - days * DAY
    os.utime(path, (moment, moment), follow_symlinks=False)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root)}|{info.st_mode}|{info.st_mtime_ns}".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _out(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_demo_log_cleanup_cleans_the_log_volume_safely(
    deployment: DemoDeployment, tmp_path: Path
) -> None:
    deployment.ensure_deployed()
    logs = deployment.volume("applogs")
    outside = tmp_path / "outside.log"
    outside.write_text("not yours\n")
    _age(outside, 40)
    (logs / "old.log").write_text("old line\n" * 1000)
    _age(logs / "old.log", 3)
    (logs / "ancient.log.20261001T000000.gz").write_bytes(b"\x1f\x8b old")
    _age(logs / "ancient.log.20261001T000000.gz", 30)
    (logs / "escape.log").symlink_to(outside)
    _age(logs / "escape.log", 40)
    (logs / "2026-10-01").mkdir()
    _age(logs / "2026-10-01", 40)
    running = {
        row["Service"]: row["Image"]
        for row in map(json.loads, deployment.compose("ps", "--format", "json").splitlines())
    }

    before = _tree_hash(logs)
    dry = deployment.dags_test({"dry_run": True}, dag_id="demo__log_cleanup")
    assert dry.returncode == 0, _out(dry)[-4000:]
    assert _tree_hash(logs) == before
    assert "would compress 1, would delete 1, would remove 1 dirs" in _out(dry)

    real = deployment.dags_test({}, dag_id="demo__log_cleanup")
    out = _out(real)
    assert real.returncode == 0, out[-4000:]
    assert "opsflow log cleanup summary: demo -> SUCCEEDED" in out
    assert not (logs / "old.log").exists()
    compressed = list(logs.glob("old.log.*.gz"))
    assert len(compressed) == 1 and compressed[0].stat().st_mtime < time.time() - 2 * DAY
    assert not (logs / "ancient.log.20261001T000000.gz").exists()
    assert not (logs / "2026-10-01").exists()
    assert (logs / "escape.log").is_symlink() and outside.read_text() == "not yours\n"
    assert "largest remaining" in out
    for service in ("api", "worker", "postgres", "redis"):
        assert f"{E2E_PROJECT}-{service}-1: log " in out
    for image in running.values():  # what runs now is never pruned
        assert (
            subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
            == 0
        )


def test_demo_log_cleanup_fails_and_names_a_container_without_log_limits(
    deployment: DemoDeployment,
) -> None:
    deployment.ensure_deployed()
    override = deployment.home / "nolimits.yml"
    # !reset drops the base file's logging section: the driver's default, no limits.
    override.write_text("services:\n  worker:\n    logging: !reset {}\n")
    env = {**deployment.env, "OPSFLOW_VERSION": _worker_release(deployment)}
    demo = REPO_ROOT / "include" / "demo"
    base = compose_base_argv(E2E_PROJECT, demo, ["docker-compose.yml"], ".env")
    without_limits = compose_base_argv(
        E2E_PROJECT, demo, ["docker-compose.yml", str(override)], ".env"
    )
    up_worker = ["up", "--detach", "--no-build", "worker"]
    started = subprocess.run([*without_limits, *up_worker], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        result = deployment.dags_test({}, dag_id="demo__log_cleanup")
        out = _out(result)
        assert result.returncode != 0
        assert f"service worker (container {E2E_PROJECT}-worker-1) runs without log limits" in out
        assert "log cleanup of demo failed at container_logs" in out
    finally:
        subprocess.run([*base, *up_worker], env=env, check=True, capture_output=True)


def _worker_release(deployment: DemoDeployment) -> str:
    """The release the worker container runs, with its tag pointing at that image again.

    An earlier module may leave the api on another release than the worker, or rebuild the
    worker's release so that its tag moved to a new image while the container keeps the
    old one (which the cleanup above may then rightly prune). Compose recreates the worker
    from the tag, so the tag must name the image that runs.
    """
    container = f"{E2E_PROJECT}-worker-1"
    inspect = ["docker", "inspect", "--format", "{{.Config.Image}} {{.Image}}", container]
    reference, image_id = subprocess.run(
        inspect, capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["docker", "image", "tag", image_id, reference], check=True)
    return reference.rpartition(":")[2]


def test_airflow_log_cleanup_and_metadata_clean(deployment: DemoDeployment) -> None:
    logs = deployment.home / "logs"
    old_task = logs / "dag_id=x" / "run_id=manual__2026-01-01T00:00:00+00:00" / "task_id=t"
    old_task.mkdir(parents=True)
    (old_task / "attempt=1.log").write_text("old task log\n")
    _age(old_task / "attempt=1.log", 40)
    recent_task = logs / "dag_id=x" / "run_id=manual__2026-11-20T00:00:00+00:00" / "task_id=t"
    recent_task.mkdir(parents=True)
    (recent_task / "attempt=1.log").write_text("recent task log\n")
    _age(recent_task / "attempt=1.log", 2)
    processor = logs / "dag_processor" / "2026-01-01" / "dags-folder"
    processor.mkdir(parents=True)
    (processor / "demo.py.log").write_text("old parse log\n")
    _age(processor / "demo.py.log", 40)

    result = deployment.dags_test({"retention_days": 30}, dag_id="airflow__log_cleanup")
    out = _out(result)

    assert result.returncode == 0, out[-4000:]
    assert "opsflow log cleanup summary: airflow -> SUCCEEDED" in out
    assert not (old_task / "attempt=1.log").exists() and not old_task.parent.exists()
    assert (recent_task / "attempt=1.log").read_text() == "recent task log\n"
    assert not (processor / "demo.py.log").exists()

    # Airflow's metadata: make the run just made look 200 days old, then clean outside tasks.
    database = deployment.home / "airflow.db"
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE dag_run SET start_date = '2026-01-01 00:00:00' "
            "WHERE dag_id = 'airflow__log_cleanup'"
        )

    def runs() -> int:
        with sqlite3.connect(database) as db:
            query = "SELECT count(*) FROM dag_run WHERE dag_id = 'airflow__log_cleanup'"
            return int(db.execute(query).fetchone()[0])

    clean = [str(REPO_ROOT / "scripts" / "airflow-db-clean"), "--days", "90"]
    dry = subprocess.run([*clean, "--dry-run"], env=deployment.env, capture_output=True, text=True)
    assert dry.returncode == 0, _out(dry)[-3000:]
    assert runs() == 1
    done = subprocess.run(clean, env=deployment.env, capture_output=True, text=True)
    assert done.returncode == 0, _out(done)[-3000:]
    assert runs() == 0
