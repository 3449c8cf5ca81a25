"""End to end: ``demo__upgrade`` and ``demo__rollback`` through ``airflow dags test`` against
the real engine, the demo stack's PostgreSQL and real alert receivers.

Every failure must leave the previous release running and healthy, its data as before
(checked with plain SQL digests, not opsflow's fingerprint), a failed run and one alert.
The tests run in file order and each starts from the release it names (``arrive_at``
rebuilds that state if an earlier test left something else).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import (
    DEMO_DIR,
    DemoDeployment,
    HttpCapture,
    SmtpCapture,
    alert_connections,
    demo_pg,
    table_digests,
)

pytestmark = pytest.mark.e2e

ENV_FILE = DEMO_DIR / ".env"


def _out(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@dataclass
class Upgrades:
    deployment: DemoDeployment
    stack_file: Path
    backups: Path

    @property
    def state(self) -> Path:
        return Path(self.deployment.env["OPSFLOW_STATE_DIR"]) / "demo"

    def upgrade(
        self, version: str, *env: dict[str, str], logical_date: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.deployment.dags_test(
            {"version": version}, *env, dag_id="demo__upgrade", logical_date=logical_date
        )

    def entries(self) -> list[dict[str, Any]]:
        """The ledger as plain JSON lines, folded by entry id (newest line wins)."""
        path = self.state / "ledger.jsonl"
        folded: dict[str, dict[str, Any]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            folded[entry["entry_id"]] = entry
        return list(folded.values())

    def current(self) -> str | None:
        done = [
            e
            for e in self.entries()
            if e["action"] in ("deploy", "upgrade", "rollback") and e["outcome"] == "succeeded"
        ]
        return max(done, key=lambda e: e["ended_at"])["version"] if done else None

    def last(self, action: str) -> dict[str, Any]:
        return max((e for e in self.entries() if e["action"] == action), key=_started)

    def lock_free(self) -> bool:
        return not (self.state / "lock.json").exists()

    def serving(self, version: str) -> bool:
        try:
            return self.deployment.get("/version")[1].get("version") == version and (
                self.deployment.get("/health/ready")[0] == 200
            )
        except OSError:
            return False

    def arrive_at(self, version: str) -> None:
        """Make ``version`` the current, healthy release, rebuilding from scratch if needed."""
        if self.current() == version and self.serving(version) and self.lock_free():
            return
        (self.state / "lock.json").unlink(missing_ok=True)
        self.deployment.compose("down", "--volumes", "--remove-orphans")
        for step in dict.fromkeys(["1.0.0", version]):
            result = self.deployment.dags_test({"version": step})
            assert result.returncode == 0, _out(result)[-4000:]
        assert self.serving(version)


def _started(entry: dict[str, Any]) -> str:
    return str(entry["started_at"])


@pytest.fixture(scope="module")
def upgrades(
    deployment: DemoDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upgrades]:
    """The e2e stack file with backups in a temp dir; the demo .env restored afterwards."""
    backups = tmp_path_factory.mktemp("upgrade-backups")
    stack_file = deployment.stacks / "demo.yaml"
    original_stack, original_env = stack_file.read_text(), ENV_FILE.read_bytes()
    data = yaml.safe_load(original_stack)
    data["backup"]["local_dir"] = str(backups)
    stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield Upgrades(deployment, stack_file, backups)
    finally:
        stack_file.write_text(original_stack)
        ENV_FILE.write_bytes(original_env)


def _worker_rows_up_to(deployment: DemoDeployment, last_id: int) -> tuple[int, str]:
    with demo_pg(deployment) as conn:
        row = conn.execute(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) "
            "FROM worker_events AS t WHERE id <= %s",
            (last_id,),
        ).fetchone()
    return int(row[0]), str(row[1])


def _max_worker_id(deployment: DemoDeployment) -> int:
    with demo_pg(deployment) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM worker_events").fetchone()
    return int(row[0])


def _quiet(digests: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    return {table: digest for table, digest in digests.items() if table != "public.worker_events"}


def _alert(receiver: HttpCapture) -> dict[str, Any]:
    receiver.wait_for(1)
    bodies = [b for b in receiver.json_bodies() if b.get("dag_id") == "demo__upgrade"]
    assert len(bodies) == 1, receiver.requests
    return bodies[0]


def _worker_env(deployment: DemoDeployment) -> dict[str, str]:
    container = deployment.compose("ps", "--quiet", "worker").strip()
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Env}}", container],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(item.split("=", 1) for item in json.loads(out))


def test_upgrade_1_0_0_to_1_1_0_keeps_the_data_and_the_worker_writes(upgrades: Upgrades) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.0.0")
    with demo_pg(deployment) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('written before the upgrade')")
    before = table_digests(deployment)

    result = upgrades.upgrade("1.1.0")
    out = _out(result)

    assert result.returncode == 0, out[-6000:]
    assert upgrades.serving("1.1.0")
    after = table_digests(deployment)
    assert after["public.items"] == before["public.items"]
    time.sleep(7)  # the 1.1.0 worker writes a row every 3 s
    assert table_digests(deployment)["public.worker_events"][0] >= 1
    entry = upgrades.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and (upgrades.backups / entry["backup_id"] / "manifest.json").exists()
    assert entry["images"]["api"]["id"].startswith("sha256:")
    assert entry["snapshot"]["version"] == "1.0.0" and entry["config_digest"]
    assert upgrades.current() == "1.1.0" and upgrades.lock_free()


def test_never_ready_release_is_rolled_back_with_its_data_and_config(
    upgrades: Upgrades, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    before, last_id = table_digests(deployment), _max_worker_id(deployment)
    worker_before = _worker_rows_up_to(deployment, last_id)
    original_env = ENV_FILE.read_bytes()
    assert _worker_env(deployment)["WORKER_INTERVAL_SECONDS"] == "3"
    # The operator changes the config for the new release, then upgrades.
    ENV_FILE.write_bytes(original_env + b"WORKER_INTERVAL_SECONDS=7\n")

    result = upgrades.upgrade("1.2.0-never-ready", alert_connections(smtp_server, http_receiver))
    out = _out(result)

    assert result.returncode != 0, out[-6000:]
    assert upgrades.serving("1.1.0"), out[-6000:]
    # Config: the changed env value is back to the one 1.1.0 ran with, on disk and live;
    # the config the failed release ran with is kept in the ledger, not lost.
    assert "config put back: compose/.env" in out
    assert ENV_FILE.read_bytes() == original_env
    assert _worker_env(deployment)["WORKER_INTERVAL_SECONDS"] == "3"
    entry = upgrades.last("upgrade")
    assert (upgrades.state / "configs" / f"{entry['config_digest']}.tar").exists()
    assert entry["config_digest"] != entry["snapshot"]["config_digest"]
    assert _quiet(table_digests(deployment)) == _quiet(before)
    assert _worker_rows_up_to(deployment, last_id) == worker_before
    alert = _alert(http_receiver)
    assert "upgrade demo 1.1.0 -> 1.2.0-never-ready failed at verify with" in alert["error"]
    assert "rolled back to 1.1.0; healthy" in alert["error"]
    mail = smtp_server.wait_for(1)[0].get_payload(decode=True).decode()
    assert "rolled back to 1.1.0; healthy" in mail
    entry = upgrades.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    rollback = upgrades.last("rollback")
    assert (rollback["version"], rollback["outcome"]) == ("1.1.0", "succeeded")
    assert upgrades.current() == "1.1.0" and upgrades.lock_free()


def test_half_applied_migration_is_undone_by_restoring_the_database(
    upgrades: Upgrades, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    before, last_id = table_digests(deployment), _max_worker_id(deployment)
    worker_before = _worker_rows_up_to(deployment, last_id)

    result = upgrades.upgrade(
        "1.3.0-broken-migration", alert_connections(smtp_server, http_receiver)
    )
    out = _out(result)

    assert result.returncode != 0, out[-6000:]
    assert "0003" in out  # the first migration of the release did apply
    assert upgrades.serving("1.1.0"), out[-6000:]
    after = table_digests(deployment)
    assert "public.audit_log" not in after and "public.item_tags" not in after
    assert _quiet(after) == _quiet(before)  # alembic_version is back at 0002 too
    assert _worker_rows_up_to(deployment, last_id) == worker_before
    alert = _alert(http_receiver)
    assert "failed at migrate" in alert["error"]
    assert "rolled back to 1.1.0; healthy" in alert["error"]
    entry = upgrades.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert "restored" in upgrades.last("rollback")["notes"][0]


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Read the process's output until a line contains ``needle``; return what was read."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if needle in line:
            return seen
        assert time.monotonic() < deadline, "".join(seen[-200:])
    raise AssertionError(f"{needle!r} never appeared:\n" + "".join(seen[-200:]))


def test_killed_task_process_during_start_converges_after_clear_and_rerun(
    upgrades: Upgrades,
) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    logical_date = "2026-11-22T01:02:03+00:00"
    process = deployment.start_dags_test(
        {"version": "1.1.1"}, dag_id="demo__upgrade", logical_date=logical_date
    )
    try:
        _wait_for_line(process, "Step start of opsflow-e2e 1.1.1", timeout=600)
        time.sleep(0.5)  # compose is recreating the containers now
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    held = json.loads((upgrades.state / "lock.json").read_text())
    assert held["dag_id"] == "demo__upgrade"

    # Clearing and running the same run again: `dags test` with the same logical date.
    result = upgrades.upgrade("1.1.1", logical_date=logical_date)
    out = _out(result)

    assert result.returncode == 0, out[-6000:]
    assert "resuming upgrade 1.1.0 -> 1.1.1" in out
    assert "reusing the snapshot of 1.1.0 taken by the first attempt" in out
    assert upgrades.serving("1.1.1")
    assert upgrades.lock_free()
    running = deployment.compose("ps", "--format", "json").splitlines()
    images = {json.loads(row)["Service"]: json.loads(row)["Image"] for row in running}
    assert images["api"].endswith(":1.1.1") and images["worker"].endswith(":1.1.1")
    assert upgrades.last("upgrade")["outcome"] == "succeeded"


def test_two_upgrade_triggers_never_run_at_the_same_time(upgrades: Upgrades) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.1")
    known = {e["entry_id"] for e in upgrades.entries()}
    first = deployment.start_dags_test({"version": "1.1.0"}, dag_id="demo__upgrade")
    rest: list[str] = []
    try:
        _wait_for_line(first, "Took the lock of stack demo", timeout=300)
        # Keep reading the first run's output, or it blocks on a full pipe.
        assert first.stdout is not None
        reader = threading.Thread(target=lambda: rest.extend(first.stdout or []), daemon=True)
        reader.start()
        second = deployment.dags_test({"version": "1.1.0"}, dag_id="demo__upgrade")
        first.wait(timeout=900)
        reader.join(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    first_out, second_out = "".join(rest), _out(second)

    assert first.returncode == 0, first_out[-6000:]
    assert "Waiting for the lock of stack demo, held by demo__upgrade run manual__" in second_out
    # The second got the lock only after the first released it, then found nothing to do.
    assert second.returncode != 0
    assert "already runs 1.1.0: nothing to upgrade" in second_out
    runs = sorted((e for e in upgrades.entries() if e["entry_id"] not in known), key=_started)
    assert [(e["outcome"], e["failed_task"]) for e in runs] == [
        ("succeeded", None), ("failed", "preflight"),
    ]  # fmt: skip
    assert runs[1]["started_at"] >= runs[0]["ended_at"]
    assert upgrades.serving("1.1.0") and upgrades.lock_free()


class FlappingHealth:
    """An HTTP check that answers 200 and 503 in turn while flapping, 200 otherwise."""

    def __init__(self) -> None:
        self.flapping = False
        self.answers: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 200
                if outer.flapping:
                    status = 503 if len(outer.answers) % 2 == 0 else 200
                outer.answers.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/flaky"


def test_health_that_flaps_during_the_gate_never_passes_it(
    upgrades: Upgrades, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    flaky = FlappingHealth()
    original = upgrades.stack_file.read_text()
    data = yaml.safe_load(original)
    data["services"][0]["health"].append({"kind": "http", "url": flaky.url, "expect_status": 200})
    upgrades.stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        process = deployment.start_dags_test(
            {"version": "1.1.1"},
            alert_connections(smtp_server, http_receiver),
            dag_id="demo__upgrade",
        )
        try:
            seen = _wait_for_line(process, "Step start of opsflow-e2e 1.1.1", timeout=600)
            flaky.flapping = True
            seen += _wait_for_line(process, "rolling back 1.1.1 -> 1.1.0", timeout=600)
            flaky.flapping = False
            rest, _ = process.communicate(timeout=600)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    finally:
        flaky.server.shutdown()
        upgrades.stack_file.write_text(original)
    out = "".join(seen) + rest

    assert process.returncode != 0, out[-6000:]
    # Every check but the flapping one was green, and the flapping one was green half the
    # time: the gate still failed, because it needs consecutive all-green rounds.
    assert flaky.answers.count(200) >= 3 and flaky.answers.count(503) >= 3
    assert "health gate failed" in out
    alert = _alert(http_receiver)
    assert "failed at verify" in alert["error"]
    assert "rolled back to 1.1.0; healthy" in alert["error"]
    assert upgrades.serving("1.1.0") and upgrades.lock_free()


def test_upgrade_dry_run_checks_and_changes_nothing(upgrades: Upgrades) -> None:
    upgrades.arrive_at("1.1.0")
    entries = len(upgrades.entries())
    result = upgrades.deployment.dags_test(
        {"version": "1.1.1", "dry_run": True}, dag_id="demo__upgrade"
    )
    out = _out(result)

    assert result.returncode == 0, out[-6000:]
    assert "healthy now: all" in out and "buildable: every build context of 1.1.1 exists" in out
    assert len(upgrades.entries()) == entries and upgrades.serving("1.1.0")


def test_rollback_dag_returns_to_1_0_0_with_the_backup_taken_on_it(upgrades: Upgrades) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    if not any(e.get("from_version") == "1.0.0" and e.get("backup_id") for e in upgrades.entries()):
        upgrades.arrive_at("1.0.0")
        assert upgrades.upgrade("1.1.0").returncode == 0
    wrong = deployment.dags_test(
        {"release": "1.0.0", "restore_data": False, "dry_run": True}, dag_id="demo__rollback"
    )
    assert wrong.returncode == 0, _out(wrong)[-4000:]
    assert "would stop 1.1.0, put back images and config of 1.0.0, start 1.0.0" in _out(wrong)

    result = deployment.dags_test(
        {"release": "1.0.0", "restore_data": True}, dag_id="demo__rollback"
    )
    out = _out(result)

    assert result.returncode == 0, out[-6000:]
    assert upgrades.serving("1.0.0")
    assert "public.worker_events" not in table_digests(deployment)  # schema 0001 again
    entry = upgrades.last("rollback")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert entry["from_version"] == "1.1.0"
    assert entry["backup_id"] and upgrades.current() == "1.0.0" and upgrades.lock_free()
