"""Backend2, proven end to end: the shipped include/stacks/backend2.yaml run through
``airflow dags test`` against the real engine and the replica in include/replicas/backend2.

The tests run in file order and each starts from the release it names (``at`` rebuilds
that state when an earlier test left something else). Every service must be healthy by
its own signal: the api's ``/health`` 200, PostgreSQL's and Redis' Docker healthchecks and
their connections, and each Dramatiq worker by a task it processed from its queue. Every
failed upgrade must leave the old release serving, every table equal by plain SQL
digests, a failed run and one alert on the stack's route (Slack webhook, to a real
receiver).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.receivers import HttpCapture
from support.replicas import (
    Replica,
    free_ports,
    image_exists,
    image_tags,
    load_old_releases,
    one_alert,
    out_of,
    password,
    post_json,
    replica,
    slack_connection,
    system_project,
    workdir_of,
)
from support.services import get_json

pytestmark = pytest.mark.systems

RELEASES = ["1.0.0", "1.1.0", "1.2.0-worker-crash", "1.3.0-broken-migration"]
VERSIONED = ["api", "worker-standard", "worker-lumina"]
QUEUES = {"standard_tasks": "worker-standard", "lumina_tasks": "worker-lumina"}
PREFIX = system_project("backend2")
SLACK_TOKEN = "T0BACKEND2/B0BACKEND2/backend2WebhookToken"
DAY = 86400.0
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def backend2(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """The replica under its own project, ports and images; every release built once."""
    root = tmp_path_factory.mktemp("backend2")
    workdir = workdir_of("backend2", root)
    ports = free_ports("api", "postgres", "redis")
    pg_password, redis_password = password(), password()
    dotenv = {
        "POSTGRES_PASSWORD": pg_password,
        "REDIS_PASSWORD": redis_password,
        "SECRET_KEY": password(),
        "BACKEND2_IMAGE_PREFIX": PREFIX,
        "BACKEND2_API_PORT": str(ports["api"]),
        "BACKEND2_POSTGRES_PORT": str(ports["postgres"]),
        "BACKEND2_REDIS_PORT": str(ports["redis"]),
    }
    overlay = {
        # What differs on this machine: image names (pruning works on them), where the
        # backups are, and a gate quick enough for a test. The shipped log root is the
        # checkout's logs/, relative to the working dir (the replica's copy).
        "services": [{"name": name, "image": f"{PREFIX}-{name}"} for name in VERSIONED],
        "backup": {"local_dir": str(root / "backups")},
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "15s"},
    }
    connections = {
        "backend2_postgres": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": ports["postgres"],
            "login": "backend", "password": pg_password, "schema": "backend",
        },
        "backend2_redis": {
            "conn_type": "redis", "host": "127.0.0.1", "port": ports["redis"],
            "password": redis_password,
        },
    }  # fmt: skip
    with replica(
        "backend2",
        root,
        ports=ports,
        dotenv=dotenv,
        overlay=overlay,
        connections=connections,
        allowed_root=tmp_path_factory.getbasetemp(),
    ) as deployed:
        assert deployed.workdir == workdir
        for version in RELEASES:  # the DAGs' own builds are cache hits from here on
            deployed.build(version)
        yield deployed


def alert_env(receiver: HttpCapture) -> dict[str, str]:
    """A real endpoint for the shipped route: backend2_slack."""
    return slack_connection("backend2_slack", receiver, SLACK_TOKEN)


# --------------------------------------------------------------------------- signals


def health(backend2: Replica) -> tuple[int, dict[str, Any]]:
    try:
        return get_json(backend2.url("api", "/health"))
    except OSError as err:
        return 0, {"error": str(err)}


def version(backend2: Replica) -> str | None:
    try:
        return str(get_json(backend2.url("api", "/version"))[1]["version"])
    except OSError:
        return None


def containers(backend2: Replica) -> dict[str, tuple[str, str]]:
    """Service -> (image, state) of every container of the project."""
    rows = backend2.compose("ps", "--all", "--format", "json").splitlines()
    found = {}
    for row in filter(str.strip, rows):
        container = json.loads(row)
        found[container["Service"]] = (container["Image"], container["State"])
    return found


def serving(backend2: Replica, release: str) -> bool:
    """The api answers healthy as ``release`` and every versioned service runs its image."""
    if version(backend2) != release or health(backend2)[0] != 200:
        return False
    running = containers(backend2)
    return all(running.get(name) == (f"{PREFIX}-{name}:{release}", "running") for name in VERSIONED)


def cache(backend2: Replica, *, authenticated: bool = True) -> Any:
    import redis

    conn = backend2.connection("backend2_redis")
    secret = conn["password"] if authenticated else None
    return redis.Redis(host="127.0.0.1", port=conn["port"], password=secret, socket_timeout=5)


def schema_head(backend2: Replica) -> list[str]:
    with backend2.pg() as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def submit(backend2: Replica, queue: str, payload: dict[str, Any]) -> int:
    task = post_json(backend2.url("api", "/api/v1/tasks"), {"queue": queue, "payload": payload})
    return int(task["id"])


def finished(backend2: Replica, task_id: int, timeout: float = 30.0) -> dict[str, Any]:
    """The task once a worker finished it (a failure when none does within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        status, task = get_json(backend2.url("api", f"/api/v1/tasks/{task_id}"))
        assert status == 200, task
        if task["status"] in ("done", "succeeded", "failed") or time.monotonic() > deadline:
            return task
        time.sleep(0.3)


def age(path: Path, days: float, size: int = 0) -> Path:
    """A log file of ``size`` bytes (sparse) last written ``days`` ago."""
    with path.open("wb") as handle:
        handle.truncate(size)
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))
    return path


# ------------------------------------------------------------------------------ tests


def test_deploy_1_0_0_and_every_service_is_healthy_by_its_own_signal(backend2: Replica) -> None:
    import redis

    backend2.reset()
    result = backend2.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    status, body = health(backend2)
    assert status == 200 and body["status"] == "healthy", body
    assert body["components"] == {"database": {"status": "up"}, "redis": {"status": "up"}}
    assert version(backend2) == "1.0.0"
    assert schema_head(backend2) == ["0001"]
    # PostgreSQL and Redis by Docker's verdict on the guide's healthchecks, and through the
    # connections; Redis really requires its password.
    assert backend2.container_health("postgres") == "healthy"
    assert backend2.container_health("redis") == "healthy"
    with backend2.pg() as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "backend", "backend",
        )  # fmt: skip
    assert cache(backend2).ping()
    with pytest.raises(redis.AuthenticationError):
        cache(backend2, authenticated=False).get("app:tasks:submitted")
    # Each worker by its own signal: a task of its queue, processed by it.
    for queue in QUEUES:
        task = finished(backend2, submit(backend2, queue, {"deploy": queue}))
        assert task["status"] == "done", task
        assert task["result"]["worker_queue"] == queue, task
    beats = cache(backend2).zcard("dramatiq:__heartbeats__")
    assert beats == 4 + 2, beats  # every worker process of both workers beats
    # The api writes the guide's JSON log, rotated by its handler, into the checkout.
    lines = (backend2.workdir / "logs" / "app.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["name"] == "app.api" and "queued on lumina_tasks" in r["message"] for r in records)
    # The gate ran the shipped checks, the api's port found through the engine.
    assert "http GET http://api:8000/health" in out
    for service in ("worker-standard", "worker-lumina", "postgres", "redis"):
        assert f"container {service}" in out, service
    entry = backend2.last("deploy")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert backend2.lock_free()


def test_backup_ends_verified_with_every_source_of_the_stack_file(backend2: Replica) -> None:
    backend2.at("1.0.0", serving)
    finished(backend2, submit(backend2, "standard_tasks", {"in": "the backup"}))

    manifest, sources = backend2.verified_backup({"backend", "redis", "config"})

    # The Redis snapshot holds what the api and the workers wrote (counter, heartbeats).
    assert sources["redis"]["fingerprint"]["keys"] >= 2, sources["redis"]
    with backend2.artifact(manifest, sources["config"]) as tar:
        listing = tar.getnames()
    for name in ("docker-compose.yml", ".env", "backend2.yaml"):
        assert any(entry.endswith(name) for entry in listing), (name, listing)


def test_upgrade_to_1_1_0_keeps_the_data_written_before(backend2: Replica) -> None:
    backend2.at("1.0.0", serving)
    ids = [submit(backend2, queue, {"before": queue}) for queue in QUEUES]
    for task_id in ids:
        assert finished(backend2, task_id)["status"] == "done"
    with backend2.pg() as conn:
        before = {
            row[0]: (row[1], json.loads(row[2]), row[3])
            for row in conn.execute("SELECT id, queue, payload, created_at FROM tasks")
        }
    submitted = cache(backend2).get("app:tasks:submitted")

    result = backend2.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert serving(backend2, "1.1.0")
    assert schema_head(backend2) == ["0002"]
    with backend2.pg() as conn:
        after = {
            row[0]: (row[1], row[2], row[3])
            for row in conn.execute("SELECT id, queue, payload, created_at FROM tasks")
        }
        converted = set(
            conn.execute("SELECT status, attempts, pg_typeof(payload)::text FROM tasks")
        )
    assert after == before  # every task, its payload now JSONB
    assert converted == {("succeeded", 1, "jsonb")}  # 1.0.0's 'done' rows migrated
    assert cache(backend2).get("app:tasks:submitted") == submitted
    # 1.1.0's workers write what 1.0.0's could not: 'succeeded' with an attempt count.
    for queue in QUEUES:
        task = finished(backend2, submit(backend2, queue, {"after": queue}))
        assert (task["status"], task["attempts"]) == ("succeeded", 1), task
        assert task["result"]["worker_queue"] == queue
    entry = backend2.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and backend2.lock_free()


def test_never_healthy_release_is_rolled_back_with_every_table_equal(
    backend2: Replica, http_receiver: HttpCapture
) -> None:
    backend2.at("1.1.0", serving)
    finished(backend2, submit(backend2, "lumina_tasks", {"before": "the crashing workers"}))
    before = backend2.digests()

    result = backend2.dags_test(
        "upgrade", {"version": "1.2.0-worker-crash"}, alert_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert serving(backend2, "1.1.0"), out[-6000:]
    assert backend2.digests() == before
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade backend2 1.1.0 -> 1.2.0-worker-crash failed at verify" in text, text
    assert "crash loop" in text and "No module named 'lumina_sdk'" in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = backend2.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    assert backend2.current() == "1.1.0" and backend2.lock_free()
    # The workers of 1.1.0 consume their queues again.
    for queue in QUEUES:
        assert finished(backend2, submit(backend2, queue, {"after": "rollback"}))["status"] == (
            "succeeded"
        )


def test_half_applied_migration_is_rolled_back_with_every_table_equal(
    backend2: Replica, http_receiver: HttpCapture
) -> None:
    backend2.at("1.1.0", serving)
    before = backend2.digests()

    result = backend2.dags_test(
        "upgrade", {"version": "1.3.0-broken-migration"}, alert_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    # Half-way: 0003 ran in its own transaction and committed before 0004 failed.
    assert "Running upgrade 0002 -> 0003" in out and "Running upgrade 0003 -> 0004" in out
    assert serving(backend2, "1.1.0"), out[-6000:]
    after = backend2.digests()
    assert "public.task_events" not in after
    assert after == before  # alembic_version back at 0002 too
    assert schema_head(backend2) == ["0002"]
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade backend2 1.1.0 -> 1.3.0-broken-migration failed at migrate" in text, text
    assert 'column "category" of relation "tasks" does not exist' in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = backend2.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert backend2.current() == "1.1.0" and backend2.lock_free()


def test_log_cleanup_removes_exactly_what_the_rules_name(backend2: Replica) -> None:
    """The shipped rules for the api's logs/ (``app.log.*``, plain files older than 30
    days deleted, 110MB at most) and old release images (the newest three releases, the
    current and the previous one kept). The handler's own ten files (10 MB each, days
    old) stay, as do the live app.log and files the patterns do not name; two leftovers
    from a larger backupCount, 40 and 45 days old, and each repository's two images
    older than every release go."""
    backend2.at("1.1.0", serving)
    logs = backend2.workdir / "logs"
    assert (logs / "app.log").stat().st_size > 0  # written by the running api
    rotated = [age(logs / f"app.log.{n}", days=n, size=10 * MIB) for n in range(1, 11)]
    stale = [age(logs / "app.log.11", days=40, size=MIB), age(logs / "app.log.12", days=45)]
    unnamed = age(logs / "access.log.1", days=90, size=MIB)
    old = {name: load_old_releases(f"{PREFIX}-{name}") for name in VERSIONED}
    for name in VERSIONED:
        assert all(image_exists(f"{PREFIX}-{name}:{release}") for release in RELEASES)
    before = {name: image_tags(f"{PREFIX}-{name}") for name in VERSIONED}
    files_before = {p.name for p in logs.iterdir()}
    started = time.monotonic()

    result = backend2.dags_test("log_cleanup", {})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: backend2 -> SUCCEEDED" in out, out[-4000:]
    assert {p.name for p in logs.iterdir()} == files_before - {p.name for p in stale}
    assert all(p.stat().st_size == 10 * MIB for p in rotated) and unnamed.exists()
    for name in VERSIONED:
        assert image_tags(f"{PREFIX}-{name}") == before[name] - set(old[name]), name
    for service in ("api", "worker-standard", "worker-lumina", "postgres", "redis"):
        assert f"{backend2.project}-{service}-1: log " in out, service
    assert serving(backend2, "1.1.0") and time.monotonic() - started < 120
