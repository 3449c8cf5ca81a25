"""EchoMind, proven end to end: the shipped include/stacks/echomind.yaml run through
``airflow dags test`` against the real engine and the replica in include/replicas/echomind.

EchoMind's images are pulled, never built on the host (``runtime.images: pull``): the
module fixture runs a real registry (Debian's ``docker-registry``, distribution 2.8) on
127.0.0.1, builds every release once as CI would (deploy/docker-compose.build.yml), pushes
it there and removes the local images, so each deploy and upgrade really pulls. The tests
run in file order and each starts from the release it names (``at`` rebuilds that state
when an earlier test left something else). Every failed upgrade must leave the old release
healthy by the system's own signal (backend ``/health`` 200, the frontend's page, the
worker taking jobs), every table equal by plain SQL digests, a failed run and one alert on
the stack's only route (Slack webhook, to a real receiver).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsflow.runtimes.compose import compose_base_argv
from support.receivers import HttpCapture
from support.replicas import (
    Replica,
    free_ports,
    image_exists,
    image_tags,
    load_old_releases,
    one_alert,
    out_of,
    post_json,
    replica,
    shipped_log_roots,
    slack_connection,
    system_project,
    workdir_of,
)
from support.services import free_port, get_json, service_unavailable

pytestmark = pytest.mark.systems

RELEASES = ["1.0.0", "1.1.0", "1.2.0-crash-loop", "1.3.0-broken-migration"]
OWNER = system_project("echomind")  # the guide's REPO_OWNER: whose images the registry holds
PROD = "deploy/docker-compose.prod.yml"
BUILD = "deploy/docker-compose.build.yml"
SLACK_TOKEN = "T0ECHOMIND/B0ECHOMIND/echomindWebhookToken"
REGISTRY_BIN = Path("/usr/bin/docker-registry")
CONFIGS = ("config.yaml", "logger.yaml")


@dataclass
class Registry:
    """A real image registry on 127.0.0.1 (storage in the test's temp dir)."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tags(self, repository: str) -> list[str]:
        url = f"http://{self.host}/v2/{repository}/tags/list"
        return sorted(get_json(url)[1].get("tags") or [])


@pytest.fixture(scope="module")
def registry(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """``docker-registry serve`` on a free 127.0.0.1 port; the engine pushes to it over
    plain HTTP (Docker treats 127.0.0.0/8 registries as insecure by default)."""
    if not REGISTRY_BIN.is_file():
        service_unavailable(f"{REGISTRY_BIN} is missing (scripts/setup-docker.sh installs it)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    with (root / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [str(REGISTRY_BIN), "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started = Registry(port, process)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{started.host}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (root / "registry.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the registry did not answer on /v2/ in 20 s"
            time.sleep(0.2)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def echomind(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """The replica under its own project, ports and image names; every release built and
    pushed once, as CI does, then removed locally so the workflows pull them."""
    root = tmp_path_factory.mktemp("echomind")
    ports = free_ports("frontend", "server", "postgres", "redis")
    password = secrets.token_hex(16)
    images = {
        "frontend": f"{registry.host}/{OWNER}/echomind-frontend",
        "server": f"{registry.host}/{OWNER}/echomind-backend",
        "worker": f"{registry.host}/{OWNER}/echomind-worker",
        "postgres": f"{registry.host}/{OWNER}/pgvector:pg16",
        "redis": f"{registry.host}/{OWNER}/redis:7-alpine",
    }
    dotenv = {
        "REPO_OWNER": OWNER,
        "DB_PASSWORD": password,
        "JWT_SECRET": secrets.token_hex(32),
        "ENCRYPTION_KEY": secrets.token_hex(32),  # 64 hex characters, as the guide asks
        "OPENAI_API_KEY": "",
        "GEMINI_API_KEY": "",
        "ECHOMIND_REGISTRY": registry.host,
        "ECHOMIND_POSTGRES_IMAGE": images["postgres"],
        "ECHOMIND_REDIS_IMAGE": images["redis"],
        "ECHOMIND_FRONTEND_PORT": str(ports["frontend"]),
        "ECHOMIND_SERVER_PORT": str(ports["server"]),
        "ECHOMIND_POSTGRES_PORT": str(ports["postgres"]),
        "ECHOMIND_REDIS_PORT": str(ports["redis"]),
    }
    overlay = {
        # What differs on this machine: the registry's image names (pruning works on them),
        # where the backups go, the checkout's log directory, and a gate quick enough for
        # a test.
        "services": [{"name": name, "image": image} for name, image in images.items()],
        "backup": {"local_dir": str(root / "backups")},
        "logs": {"roots": shipped_log_roots("echomind", workdir_of("echomind", root) / "logs")},
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "15s"},
    }
    connections = {
        "echomind_postgres": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": ports["postgres"],
            "login": "echomind", "password": password, "schema": "echomind_db",
        },
        "echomind_redis": {"conn_type": "redis", "host": "127.0.0.1", "port": ports["redis"]},
    }  # fmt: skip
    with replica(
        "echomind",
        root,
        ports=ports,
        dotenv=dotenv,
        overlay=overlay,
        connections=connections,
        allowed_root=tmp_path_factory.getbasetemp(),
        files=(PROD,),
    ) as deployed:
        assert deployed.workdir == workdir_of("echomind", root)
        try:
            publish_releases(deployed)
            yield deployed
        finally:
            deployed.down()
            remove_images(registry.host)


def ci(echomind: Replica, version: str, *args: str) -> None:
    """``docker compose`` with the prod and the build file, as CI runs it."""
    argv = [*compose_base_argv(echomind.project, echomind.workdir, [PROD, BUILD], ".env"), *args]
    env = {**echomind.env, "OPSFLOW_VERSION": version}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"


def publish_releases(echomind: Replica) -> None:
    for version in RELEASES:
        ci(echomind, version, "build")
        ci(echomind, version, "push")
    # The host has nothing but the registry: the workflows' pulls are real.
    references = set()
    for version in RELEASES:
        references |= set(images_of(echomind, version).values())
    subprocess.run(["docker", "image", "rm", *sorted(references)], capture_output=True, check=True)


def images_of(echomind: Replica, version: str) -> dict[str, str]:
    config = json.loads(echomind.compose("config", "--format", "json", version=version))
    return {name: str(spec["image"]) for name, spec in config["services"].items()}


def remove_images(registry_host: str) -> None:
    listed = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ours = [ref for ref in listed.stdout.split() if ref.startswith(f"{registry_host}/")]
    if ours:
        subprocess.run(["docker", "image", "rm", "--force", *ours], capture_output=True)


def alert_env(receiver: HttpCapture) -> dict[str, str]:
    """A real endpoint for the shipped route: echomind_slack."""
    return slack_connection("echomind_slack", receiver, SLACK_TOKEN)


def api(echomind: Replica) -> str:
    return f"http://127.0.0.1:{echomind.ports['server']}"


def health(echomind: Replica) -> tuple[int, dict[str, Any]]:
    try:
        return get_json(f"{api(echomind)}/health")
    except OSError as err:
        return 0, {"error": str(err)}


def version(echomind: Replica) -> str | None:
    try:
        return str(get_json(f"{api(echomind)}/version")[1]["version"])
    except OSError:
        return None


def frontend_page(echomind: Replica) -> tuple[int, str]:
    url = f"http://127.0.0.1:{echomind.ports['frontend']}/"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def serving(echomind: Replica, release: str) -> bool:
    page_ok = frontend_page(echomind) == (200, page_of(release))
    return version(echomind) == release and health(echomind)[0] == 200 and page_ok


def page_of(release: str) -> str:
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>EchoMind</title>'
        f'<meta name="echomind-version" content="{release}"></head>'
        '<body><div id="__next">EchoMind mail assistant</div></body></html>'
    )


def migrations(echomind: Replica) -> list[str]:
    with echomind.pg() as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def post_email(echomind: Replica, email: dict[str, str]) -> int:
    return int(post_json(f"{api(echomind)}/api/v1/emails", email)["id"])


def summary(echomind: Replica, email_id: int, timeout: float = 15.0) -> str | None:
    """What the worker wrote for an email (its own signal: it takes jobs from Redis)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get_json(f"{api(echomind)}/api/v1/emails/{email_id}/summary")
        if status == 200:
            return str(body["summary"])
        time.sleep(0.3)
    return None


# ------------------------------------------------------------------------------ tests


def test_deploy_1_0_0_and_every_service_is_healthy_by_its_own_signal(
    echomind: Replica, registry: Registry
) -> None:
    import redis

    echomind.reset()
    configs = echomind.workdir / "backend" / "configs"
    for name in CONFIGS:  # a fresh checkout: only the examples are there
        (configs / name).unlink(missing_ok=True)
    assert not any(image_exists(ref) for ref in images_of(echomind, "1.0.0").values())

    result = echomind.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    # The guide's `cp backend/configs/*.example.yaml ...`, done by the deploy itself.
    for name in CONFIGS:
        example = configs / name.replace(".yaml", ".example.yaml")
        assert (configs / name).read_bytes() == example.read_bytes()
        assert f"backend/configs/{name}: created from backend/configs/" in out
    # Pulled from the registry, not built: the images the containers run are its own.
    running = echomind.running_images()
    assert running == images_of(echomind, "1.0.0"), running
    assert registry.tags(f"{OWNER}/echomind-backend") == sorted(RELEASES)
    status, body = health(echomind)
    assert (status, body["status"], body["database"], body["redis"]) == (200, "ok", "up", "up")
    assert version(echomind) == "1.0.0"
    assert frontend_page(echomind) == (200, page_of("1.0.0"))
    email_id = post_email(echomind, {"sender": "a@example.com", "subject": "first"})
    assert summary(echomind, email_id) == "summary: first"  # the worker took the job
    with echomind.pg() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert migrations(echomind) == ["0001_emails"]
    assert echomind.container_health("postgres") == "healthy"
    assert echomind.container_health("redis") == "healthy"
    cache = redis.Redis(host="127.0.0.1", port=echomind.ports["redis"])
    assert cache.ping() and cache.config_get("appendonly") == {"appendonly": "yes"}
    # The gate ran the shipped checks, the ports found through the engine.
    assert "http GET http://server:8080/health" in out, out[-4000:]
    assert "http GET http://frontend:3000/" in out
    entry = echomind.last("deploy")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert echomind.lock_free()


def test_backup_ends_verified_with_every_source_of_the_stack_file(echomind: Replica) -> None:
    echomind.at("1.0.0", serving)
    post_email(echomind, {"sender": "b@example.com", "subject": "in the backup"})

    manifest, sources = echomind.verified_backup({"echomind_db", "redis", "config"})

    with echomind.artifact(manifest, sources["config"]) as tar:
        listing = tar.getnames()
    for name in CONFIGS:
        assert any(entry.endswith(f"backend/configs/{name}") for entry in listing), listing


def test_upgrade_to_1_1_0_keeps_the_data_written_before(
    echomind: Replica, registry: Registry
) -> None:
    from opsflow.runtimes.engine import registry_manifest

    echomind.at("1.0.0", serving)
    # The preflight asks the registry, through the engine, for what is not local yet.
    backend = f"{registry.host}/{OWNER}/echomind-backend"
    assert not image_exists(f"{backend}:1.1.0")
    assert str(registry_manifest(f"{backend}:1.1.0")).startswith("sha256:")
    with pytest.raises(LookupError, match=r"not found|unknown"):
        registry_manifest(f"{backend}:9.9.9-never-pushed")
    email_id = post_email(echomind, {"sender": "c@example.com", "subject": "before the upgrade"})
    with echomind.pg() as conn:
        before = list(
            conn.execute("SELECT id, sender, subject, received_at FROM emails ORDER BY id")
        )

    result = echomind.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "pullable: 2 local, 3 in the registry" in out, out[-6000:]
    assert serving(echomind, "1.1.0")
    assert migrations(echomind) == ["0001_emails", "0002_email_labels"]
    with echomind.pg() as conn:
        after = list(
            conn.execute("SELECT id, sender, subject, received_at FROM emails ORDER BY id")
        )
    assert after == before
    emails = get_json(f"{api(echomind)}/api/v1/emails")[1]["emails"]
    assert {"id": email_id, "sender": "c@example.com", "subject": "before the upgrade",
            "label": "inbox"} in emails  # fmt: skip
    # 1.1.0 writes what 1.0.0 could not: the label; the worker still takes the jobs.
    new_id = post_email(echomind, {"sender": "d@example.com", "subject": "after", "label": "work"})
    with echomind.pg() as conn:
        assert conn.execute("SELECT label FROM emails WHERE id = %s", (new_id,)).fetchone() == (
            "work",
        )
    assert summary(echomind, new_id) == "summary: after"
    entry = echomind.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and echomind.lock_free()


def test_crash_looping_release_is_rolled_back_with_every_table_equal(
    echomind: Replica, http_receiver: HttpCapture
) -> None:
    """1.2.0 requires a config key (ai.embedding.provider) the operator's config.yaml,
    made from the older example and kept by every deploy since, does not have: its backend
    exits at every start and Docker restarts it."""
    echomind.at("1.1.0", serving)
    post_email(echomind, {"sender": "e@example.com", "subject": "before the crash", "label": "x"})
    before = echomind.digests()
    config_before = (echomind.workdir / "backend" / "configs" / "config.yaml").read_bytes()

    result = echomind.dags_test(
        "upgrade", {"version": "1.2.0-crash-loop"}, alert_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert serving(echomind, "1.1.0"), out[-6000:]
    assert echomind.digests() == before
    assert (echomind.workdir / "backend" / "configs" / "config.yaml").read_bytes() == config_before
    text = one_alert(http_receiver, SLACK_TOKEN, alone=True)
    assert "upgrade echomind 1.1.0 -> 1.2.0-crash-loop failed at verify" in text, text
    assert "server" in text and "ai.embedding.provider is required" in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = echomind.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    assert echomind.current() == "1.1.0" and echomind.lock_free()


def test_half_applied_migration_is_rolled_back_with_every_table_equal(
    echomind: Replica, http_receiver: HttpCapture
) -> None:
    echomind.at("1.1.0", serving)
    before = echomind.digests()

    result = echomind.dags_test(
        "upgrade", {"version": "1.3.0-broken-migration"}, alert_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert "migrate: 0003_email_owners applied" in out  # half-way: the first step did apply
    assert serving(echomind, "1.1.0"), out[-6000:]
    after = echomind.digests()
    assert "public.users" not in after
    assert after == before  # schema_migrations back at 0002 too
    text = one_alert(http_receiver, SLACK_TOKEN, alone=True)
    assert "upgrade echomind 1.1.0 -> 1.3.0-broken-migration failed at migrate" in text, text
    assert "CREATE INDEX CONCURRENTLY cannot run inside a transaction block" in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = echomind.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert echomind.current() == "1.1.0" and echomind.lock_free()


def test_log_cleanup_removes_exactly_what_its_rules_name(
    echomind: Replica, registry: Registry
) -> None:
    """The shipped rules: rotated ``backend-*.log.gz`` (lumberjack's names) older than 30
    days go, younger ones stay; the live backend.log, a rotated file lumberjack has not
    compressed yet and files of other names are never touched. Image pruning removes the
    two release images older than the newest three (keep_images_releases) and nothing
    else."""
    echomind.at("1.1.0", serving)
    logs = echomind.workdir / "logs"
    assert (logs / "backend.log").stat().st_size > 0  # the backend writes it
    day = 86400.0
    now = time.time()
    ages = {
        "backend-2026-01-01T00-00-00.000.log.gz": 45,
        "backend-2026-01-10T00-00-00.000.log.gz": 31,
        "backend-2026-02-01T00-00-00.000.log.gz": 20,
        "backend-2026-02-20T00-00-00.000.log.gz": 1,
        "backend-2026-01-05T00-00-00.000.log": 40,  # not compressed yet: never deleted
        "access-2026-01-01.log.gz": 60,  # another name: not the rules' business
    }
    for name, age in ages.items():
        path = logs / name
        path.write_bytes(os.urandom(512))
        os.utime(path, (now - age * day, now - age * day))
    expired = {name for name, age in ages.items() if name.endswith(".log.gz") and
               name.startswith("backend-") and age > 30}  # fmt: skip
    repository = f"{registry.host}/{OWNER}/echomind-backend"
    old = load_old_releases(repository)
    before = image_tags(repository)
    assert set(old) | {f"{repository}:1.0.0", f"{repository}:1.1.0"} <= before
    listing = {p.name for p in logs.iterdir()}
    started = time.monotonic()

    result = echomind.dags_test("log_cleanup", {})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: echomind -> SUCCEEDED" in out, out[-4000:]
    assert {p.name for p in logs.iterdir()} == listing - expired
    assert image_tags(repository) == before - set(old)
    for service in ("frontend", "server", "worker", "postgres", "redis"):
        assert f"{echomind.project}-{service}-1: log " in out
    assert serving(echomind, "1.1.0") and time.monotonic() - started < 120
