"""kratos-boilerplate, proven end to end: the shipped include/stacks/kratos.yaml run through
``airflow dags test`` against the real engine and the replica in include/replicas/kratos.

The tests run in file order and each starts from the release it names (``at`` rebuilds
that state when an earlier test left something else). Every failed upgrade must leave the
old release healthy by the system's own signal (``/healthz`` 200), every table equal by
plain SQL digests, a failed run and one alert on each of the stack's routes (Slack webhook
and email, to real receivers).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.receivers import HttpCapture, SmtpCapture, smtp_connection
from support.replicas import (
    Replica,
    free_ports,
    image_exists,
    image_tags,
    load_old_releases,
    one_alert,
    one_mail,
    out_of,
    post_json,
    replica,
    slack_connection,
    system_project,
)
from support.services import get_json

pytestmark = pytest.mark.systems

RELEASES = ["1.0.0", "1.1.0", "1.2.0-unhealthy", "1.3.0-broken-migration"]
PREFIX = system_project("kratos")
SLACK_TOKEN = "T0KRATOS/B0KRATOS/kratosWebhookToken"


@pytest.fixture(scope="module")
def kratos(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """The replica under its own project, ports and images; every release built once."""
    root = tmp_path_factory.mktemp("kratos")
    ports = free_ports("http", "grpc", "postgres", "redis")
    password = secrets.token_hex(16)
    dotenv = {
        "POSTGRES_PASSWORD": password,
        "KRATOS_IMAGE_PREFIX": PREFIX,
        "KRATOS_HTTP_PORT": str(ports["http"]),
        "KRATOS_GRPC_PORT": str(ports["grpc"]),
        "KRATOS_POSTGRES_PORT": str(ports["postgres"]),
        "KRATOS_REDIS_PORT": str(ports["redis"]),
    }
    overlay = {
        # What differs on this machine: image names (pruning works on them), where the
        # backups go, and a gate quick enough for a test (the app has no healthcheck of
        # its own, so the gate waits its full timeout on a 503).
        "services": [{"name": "app", "image": f"{PREFIX}/app"}],
        "backup": {"local_dir": str(root / "backups")},
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "15s"},
    }
    connections = {
        "kratos_postgres": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": ports["postgres"],
            "login": "postgres", "password": password, "schema": "test",
        },
        "kratos_redis": {"conn_type": "redis", "host": "127.0.0.1", "port": ports["redis"]},
    }  # fmt: skip
    with replica(
        "kratos",
        root,
        ports=ports,
        dotenv=dotenv,
        overlay=overlay,
        connections=connections,
        allowed_root=tmp_path_factory.getbasetemp(),
    ) as deployed:
        for version in RELEASES:  # the DAGs' own builds are cache hits from here on
            deployed.build(version)
        yield deployed


def alert_env(smtp: SmtpCapture, receiver: HttpCapture) -> dict[str, str]:
    """Real endpoints for the shipped routes: kratos_slack and smtp_default."""
    return {**slack_connection("kratos_slack", receiver, SLACK_TOKEN), **smtp_connection(smtp)}


def healthz(kratos: Replica) -> tuple[int, dict[str, Any]]:
    try:
        return get_json(kratos.url("http", "/healthz"))
    except OSError as err:
        return 0, {"error": str(err)}


def version(kratos: Replica) -> str | None:
    try:
        return str(get_json(kratos.url("http", "/version"))[1]["version"])
    except OSError:
        return None


def serving(kratos: Replica, release: str) -> bool:
    return version(kratos) == release and healthz(kratos)[0] == 200


def migrations(kratos: Replica) -> list[str]:
    with kratos.pg() as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def post_note(kratos: Replica, note: dict[str, str]) -> int:
    return int(post_json(kratos.url("http", "/v1/notes"), note)["id"])


def one_alert_each(smtp: SmtpCapture, receiver: HttpCapture) -> tuple[str, str]:
    """The Slack text and the mail body of the single alert the failed run sent."""
    return one_alert(receiver, SLACK_TOKEN), one_mail(smtp)


def grpc_answer(port: int) -> str:
    """The status a gRPC call to the app's port answers (its server registers no services)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        try:
            call(None, timeout=5)
        except grpc.RpcError as err:
            return str(err.code().name)
    return "OK"


# ------------------------------------------------------------------------------ tests


def test_deploy_1_0_0_and_every_service_is_healthy_by_its_own_signal(kratos: Replica) -> None:
    import redis

    kratos.reset()
    result = kratos.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    status, body = healthz(kratos)
    assert status == 200 and body["status"] == "healthy", body
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "up", "cache": "up", "memory": "up",
    }  # fmt: skip
    assert version(kratos) == "1.0.0"
    assert grpc_answer(kratos.ports["grpc"]) == "UNIMPLEMENTED"  # a gRPC server answered
    with kratos.pg() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert migrations(kratos) == ["0001_notes"]
    assert kratos.container_health("db") == "healthy"
    assert redis.Redis(host="127.0.0.1", port=kratos.ports["redis"]).ping()
    # The gate ran the shipped checks, the ports found through the engine.
    assert "http GET http://app:8000/healthz" in out and "tcp app:9000" in out
    entry = kratos.last("deploy")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert kratos.lock_free()


def test_backup_ends_verified_with_every_source_of_the_stack_file(kratos: Replica) -> None:
    kratos.at("1.0.0", serving)
    post_note(kratos, {"body": "in the backup"})

    manifest, sources = kratos.verified_backup({"kratos_db", "redis", "config"})

    with kratos.artifact(manifest, sources["config"]) as tar:
        listing = tar.getnames()
    assert any(name.endswith("configs/config.yaml") for name in listing), listing


def test_upgrade_to_1_1_0_keeps_the_data_written_before(kratos: Replica) -> None:
    kratos.at("1.0.0", serving)
    note_id = post_note(kratos, {"body": "written before the upgrade"})
    with kratos.pg() as conn:
        before = list(conn.execute("SELECT id, body, created_at FROM notes ORDER BY id"))

    result = kratos.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert serving(kratos, "1.1.0")
    assert migrations(kratos) == ["0001_notes", "0002_note_authors"]
    with kratos.pg() as conn:
        assert list(conn.execute("SELECT id, body, created_at FROM notes ORDER BY id")) == before
    notes = get_json(kratos.url("http", "/v1/notes"))[1]["notes"]
    assert {"id": note_id, "body": "written before the upgrade", "author": "legacy"} in notes
    # 1.1.0 writes what 1.0.0 could not: the author.
    new_id = post_note(kratos, {"body": "after the upgrade", "author": "ops"})
    with kratos.pg() as conn:
        row = conn.execute("SELECT author FROM notes WHERE id = %s", (new_id,)).fetchone()
    assert row == ("ops",)
    entry = kratos.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and kratos.lock_free()


def test_never_healthy_release_is_rolled_back_with_every_table_equal(
    kratos: Replica, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    kratos.at("1.1.0", serving)
    post_note(kratos, {"body": "before the unhealthy upgrade", "author": "ops"})
    before = kratos.digests()

    result = kratos.dags_test(
        "upgrade", {"version": "1.2.0-unhealthy"}, alert_env(smtp_server, http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert serving(kratos, "1.1.0"), out[-6000:]
    assert kratos.digests() == before
    text, mail = one_alert_each(smtp_server, http_receiver)
    for message in (text, mail):
        assert "upgrade kratos 1.1.0 -> 1.2.0-unhealthy failed at verify" in message, message
        assert "http GET http://app:8000/healthz: status 503" in message, message
        assert "rolled back to 1.1.0; healthy" in message, message
    entry = kratos.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    assert kratos.current() == "1.1.0" and kratos.lock_free()


def test_half_applied_migration_is_rolled_back_with_every_table_equal(
    kratos: Replica, smtp_server: SmtpCapture, http_receiver: HttpCapture
) -> None:
    kratos.at("1.1.0", serving)
    before = kratos.digests()

    result = kratos.dags_test(
        "upgrade", {"version": "1.3.0-broken-migration"}, alert_env(smtp_server, http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    assert "migrate: 0003_audit_log applied" in out  # half-way: the first step did apply
    assert serving(kratos, "1.1.0"), out[-6000:]
    after = kratos.digests()
    assert "public.audit_log" not in after
    assert after == before  # schema_migrations back at 0002 too
    text, mail = one_alert_each(smtp_server, http_receiver)
    for message in (text, mail):
        assert "upgrade kratos 1.1.0 -> 1.3.0-broken-migration failed at migrate" in message
        assert 'column "category" does not exist' in message, message
        assert "rolled back to 1.1.0; healthy" in message, message
    entry = kratos.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert kratos.current() == "1.1.0" and kratos.lock_free()


def test_log_cleanup_prunes_exactly_the_images_its_rules_name(kratos: Replica) -> None:
    """kratos logs to stdout: its ``logs`` section names no files, only Docker's logs and
    the images of old releases (keep_images_releases: 3, default). Two release images
    older than the newest three and than the current and previous release must go;
    every other image of the app stays."""
    kratos.at("1.1.0", serving)
    repository = f"{PREFIX}/app"
    old = load_old_releases(repository)
    kept = {f"{repository}:{release}" for release in RELEASES}
    assert all(image_exists(reference) for reference in kept)
    before = image_tags(repository)
    assert set(old) | kept <= before
    started = time.monotonic()

    result = kratos.dags_test("log_cleanup", {})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: kratos -> SUCCEEDED" in out, out[-4000:]
    assert image_tags(repository) == before - set(old)
    for service in ("app", "db", "redis"):
        assert f"{kratos.project}-{service}-1: log " in out
    assert serving(kratos, "1.1.0") and time.monotonic() - started < 120
