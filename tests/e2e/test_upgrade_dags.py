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
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from support.demo import E2E_PROJECT, DemoDeployment, demo_pg, table_digests
from support.receivers import HttpCapture, SmtpCapture, alert_connections
from support.upgrades import ENV_FILE, Upgrades, out_of, started, upgrade_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upgrades(
    deployment: DemoDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upgrades]:
    with upgrade_stack(deployment, tmp_path_factory.mktemp("upgrade-backups")) as stack:
        yield stack


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
    out = out_of(result)

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
    # A green run says so: the skipped rollback and its skipped gate are no failures.
    assert "==== opsflow upgrade summary: demo 1.1.0 -> SUCCEEDED ====" in out
    assert re.search(r"rollback_verify\s+skipped", out), out[-4000:]
    assert "running now (as the engine reports it): api, worker run 1.1.0" in out


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
    out = out_of(result)

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
    # The alert names the failing check and its last error.
    assert re.search(
        r"failed at verify with health gate failed after \d+s \(1 of \d+ checks failing\): "
        r"http GET http://127\.0\.0\.1:\d+/health/ready: status 503",
        alert["error"],
    ), alert["error"]
    # The summary lists what runs after the rollback, not the failed release's images.
    assert "==== opsflow upgrade summary: demo 1.2.0-never-ready -> ROLLED-BACK ====" in out
    assert "running now (as the engine reports it): api, worker run 1.1.0" in out
    images = out[out.index("images:", out.index("ROLLED-BACK")) :].splitlines()[1:3]
    assert all(line.split()[1].endswith(":1.1.0") for line in images), images
    entry = upgrades.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    rollback = upgrades.last("rollback")
    assert (rollback["version"], rollback["outcome"]) == ("1.1.0", "succeeded")
    assert upgrades.current() == "1.1.0" and upgrades.lock_free()


def test_a_release_that_crashes_at_start_fails_its_gate_at_once(
    upgrades: Upgrades, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    """The api of 1.4.0-crash-at-start exits at every start: the gate must not wait out its
    timeout (at least the api's 60 s unhealthy window) on a container that crash-loops."""
    upgrades.arrive_at("1.1.0")
    result = upgrades.upgrade("1.4.0-crash-at-start", alert_connections(smtp_server, http_receiver))
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert upgrades.serving("1.1.0"), out[-6000:]
    alert = _alert(http_receiver)
    found = re.search(
        r"failed at verify with health gate failed after (\d+)s \(conclusive evidence from "
        r"the runtime\): service api: \S+ (exited with code 3|restarted \S+ (times )?during)",
        alert["error"],
    )
    assert found, alert["error"]
    assert int(found.group(1)) <= 10, alert["error"]  # within a round or two, 1 s apart
    assert "rolled back to 1.1.0; healthy" in alert["error"]
    assert "feature crash_at_start, exiting with status 3" in out  # the container's last words
    # The gate watched what the upgrade restarted, not the databases that kept running.
    assert re.search(r"Not changed by this run \(kept running since before \S+\): postgres, redis",
                     out)  # fmt: skip
    assert "Watching api, worker:" in out
    entry = upgrades.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
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
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert "0003" in out  # the first migration of the release did apply
    assert upgrades.serving("1.1.0"), out[-6000:]
    after = table_digests(deployment)
    assert "public.audit_log" not in after and "public.item_tags" not in after
    assert _quiet(after) == _quiet(before)  # alembic_version is back at 0002 too
    assert _worker_rows_up_to(deployment, last_id) == worker_before
    alert = _alert(http_receiver)
    assert "failed at migrate" in alert["error"]
    # The alert carries the real cause from the tool's output, not its last line.
    assert 'column "category" of relation "items" does not exist' in alert["error"]
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
        _wait_for_line(process, f"Step start of {E2E_PROJECT} 1.1.1", timeout=600)
        time.sleep(0.5)  # compose is recreating the containers now
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    held = json.loads((upgrades.state / "lock.json").read_text())
    assert held["dag_id"] == "demo__upgrade"

    # Clearing and running the same run again: `dags test` with the same logical date.
    result = upgrades.upgrade("1.1.1", logical_date=logical_date)
    out = out_of(result)

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
    # The first run is held in its gate (an extra check answers 503) until the second has
    # been seen waiting for the lock. Without the hold, a quick first run could end before
    # the second's `dags test` had even parsed its DAG (about 15 s), and the second would
    # never wait: the reason this test failed once on a loaded machine.
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.1")
    known = {e["entry_id"] for e in upgrades.entries()}
    gate = FlappingHealth()
    original = upgrades.stack_file.read_text()
    data = yaml.safe_load(original)
    data["services"][0]["health"].append({"kind": "http", "url": gate.url, "expect_status": 200})
    # The hold lasts while the second `dags test` starts; once Docker calls the release
    # healthy the gate's deadline is the configured one, so it must outlast that start.
    data["health_gate"]["timeout"] = "5m"
    upgrades.stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
    first_rest: list[str] = []
    second_rest: list[str] = []
    try:
        first = deployment.start_dags_test({"version": "1.1.0"}, dag_id="demo__upgrade")
        second: subprocess.Popen[str] | None = None
        try:
            first_seen = _wait_for_line(first, f"Step start of {E2E_PROJECT} 1.1.0", timeout=600)
            gate.held = True
            threading.Thread(
                target=lambda: first_rest.extend(first.stdout or []), daemon=True
            ).start()
            second = deployment.start_dags_test({"version": "1.1.0"}, dag_id="demo__upgrade")
            second_seen = _wait_for_line(second, "Waiting for the lock of stack demo", timeout=600)
            gate.held = False
            threading.Thread(
                target=lambda: second_rest.extend(second.stdout or []), daemon=True
            ).start()
            first.wait(timeout=600)
            second.wait(timeout=600)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
    finally:
        gate.server.shutdown()
        upgrades.stack_file.write_text(original)
    time.sleep(1)  # the readers drain what is left
    first_out = "".join(first_seen + first_rest)
    second_out = "".join(second_seen + second_rest)

    assert first.returncode == 0, first_out[-6000:]
    assert "Waiting for the lock of stack demo, held by demo__upgrade run manual__" in second_out
    # The second got the lock only after the first released it, then found nothing to do.
    assert second.returncode != 0
    assert "already runs 1.1.0: nothing to upgrade" in second_out, second_out[-6000:]
    runs = sorted((e for e in upgrades.entries() if e["entry_id"] not in known), key=started)
    assert [(e["outcome"], e["failed_task"]) for e in runs] == [
        ("succeeded", None), ("failed", "preflight"),
    ]  # fmt: skip
    assert runs[1]["started_at"] >= runs[0]["ended_at"]
    assert upgrades.serving("1.1.0") and upgrades.lock_free()


class FlappingHealth:
    """An HTTP check that answers 200 and 503 in turn while flapping, 503 while held,
    200 otherwise."""

    def __init__(self) -> None:
        self.flapping = False
        self.held = False
        self.answers: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 503 if outer.held else 200
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
            seen = _wait_for_line(process, f"Step start of {E2E_PROJECT} 1.1.1", timeout=600)
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
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "healthy now: all" in out and "buildable: every build context of 1.1.1 exists" in out
    assert len(upgrades.entries()) == entries and upgrades.serving("1.1.0")
    # Checks that were not run are listed as such, not as failures.
    summary = out[out.index("==== opsflow upgrade summary: demo 1.1.1 -> DRY-RUN ====") :]
    assert "FAIL" not in summary and "  ---- http GET http://127.0.0.1:" in summary


def test_a_stack_file_edited_mid_run_does_not_change_the_run(upgrades: Upgrades) -> None:
    # The run works from the stack file as its first task read it: a check added to the
    # file while the upgrade runs (one that can never pass) does not reach its gate.
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    original = upgrades.stack_file.read_text()
    process = deployment.start_dags_test({"version": "1.1.1"}, dag_id="demo__upgrade")
    try:
        seen = _wait_for_line(process, "current release 1.1.0 (from the ledger)", timeout=600)
        data = yaml.safe_load(original)
        data["services"][0]["health"].append(
            {"kind": "http", "url": "http://127.0.0.1:9/never", "expect_status": 200}
        )
        upgrades.stack_file.write_text(yaml.safe_dump(data, sort_keys=False))
        rest, _ = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        upgrades.stack_file.write_text(original)
    out = "".join(seen) + rest

    assert process.returncode == 0, out[-6000:]
    assert "127.0.0.1:9/never" not in out
    assert upgrades.serving("1.1.1") and upgrades.last("upgrade")["outcome"] == "succeeded"


def test_a_release_that_does_not_exist_fails_before_any_backup(
    upgrades: Upgrades, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    upgrades.arrive_at("1.1.0")
    backups = sorted(p.name for p in upgrades.backups.iterdir())

    result = upgrades.upgrade("9.9.9", alert_connections(smtp_server, http_receiver))
    out = out_of(result)

    assert result.returncode != 0
    entry = upgrades.last("upgrade")
    assert (entry["version"], entry["outcome"], entry["failed_task"]) == (
        "9.9.9", "failed", "build",
    )  # fmt: skip
    assert entry["backup_id"] is None and sorted(p.name for p in upgrades.backups.iterdir()) == (
        backups
    )
    assert out.count(f"Step fetch of {E2E_PROJECT} 9.9.9") == 1  # a failed build is not retried
    alert = _alert(http_receiver)
    assert "upgrade demo 1.1.0 -> 9.9.9 failed at build with " in alert["error"]
    assert "release '9.9.9' does not exist" in alert["error"]
    assert alert["error"].endswith("; the running release was not changed (api, worker run 1.1.0)")
    assert upgrades.serving("1.1.0") and upgrades.lock_free()


def test_unknown_conf_keys_are_refused_before_anything_happens(upgrades: Upgrades) -> None:
    upgrades.arrive_at("1.1.0")
    entries = upgrades.entries()

    result = upgrades.upgrade_conf({"version": "1.1.1", "verison": "1.1.1"})

    assert result.returncode != 0
    assert (
        "unknown keys in the run's conf: ['verison']; this DAG takes ['dry_run', 'version']"
        in out_of(result)
    )
    assert upgrades.entries() == entries and upgrades.serving("1.1.0") and upgrades.lock_free()


def test_rollback_dag_returns_to_1_0_0_with_the_backup_taken_on_it(upgrades: Upgrades) -> None:
    deployment = upgrades.deployment
    upgrades.arrive_at("1.1.0")
    if not any(e.get("from_version") == "1.0.0" and e.get("backup_id") for e in upgrades.entries()):
        upgrades.arrive_at("1.0.0")
        assert upgrades.upgrade("1.1.0").returncode == 0
    wrong = deployment.dags_test(
        {"release": "1.0.0", "restore_data": False, "dry_run": True}, dag_id="demo__rollback"
    )
    assert wrong.returncode == 0, out_of(wrong)[-4000:]
    assert "would stop 1.1.0, put back images and config of 1.0.0, start 1.0.0" in out_of(wrong)

    result = deployment.dags_test(
        {"release": "1.0.0", "restore_data": True}, dag_id="demo__rollback"
    )
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert upgrades.serving("1.0.0")
    assert "public.worker_events" not in table_digests(deployment)  # schema 0001 again
    entry = upgrades.last("rollback")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert entry["from_version"] == "1.1.0"
    assert entry["backup_id"] and upgrades.current() == "1.0.0" and upgrades.lock_free()
