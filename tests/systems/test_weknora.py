"""WeKnora (knowledge base / RAG), proven end to end: the shipped include/stacks/weknora.yaml
run through ``airflow dags test`` against the real engine and the replica in
include/replicas/weknora (nginx frontend, app, docreader with the grpc.health.v1 service,
PostgreSQL standing in for ParadeDB, moto standing in for MinIO, Redis, Neo4j and Jaeger
stand-ins, a golang-migrate stand-in with its schema_migrations table and dirty flag).

The tests run in file order and each starts from the release it names (``at`` rebuilds
that state when an earlier test left something else). WeKnora's guide upgrades with
``docker-compose down`` first (the stack file's ``runtime.down_before_upgrade``). Every
failed upgrade must leave the old release healthy by the system's own signal (``/health``
answering ``{"status": "ok"}`` and docreader ``SERVING``), every table equal by plain SQL
digests, a failed run and one alert on the stack's route (its Slack webhook, to a real
receiver).
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from support.receivers import HttpCapture
from support.replicas import (
    Replica,
    beyond_the_kept,
    fetch_moto_wheels,
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
from support.s3 import S3Server

pytestmark = pytest.mark.systems

RELEASES = ["1.0.0", "1.1.0", "1.2.0-never-serving", "1.3.0-broken-migration"]
PREFIX = system_project("weknora")
SLACK_TOKEN = "T0WEKNORA/B0WEKNORA/weKnoraWebhookToken"
SERVICES = {"frontend", "app", "docreader", "postgres", "minio", "redis", "neo4j", "jaeger"}
VERSIONED = ("weknora-app", "weknora-docreader", "weknora-ui")
DB_USER, DB_NAME = "weknora", "WeKnora"


@pytest.fixture(scope="module")
def weknora(
    engine: None, tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[Replica]:
    """The replica under its own project, ports and images; every release built once."""
    root = tmp_path_factory.mktemp("weknora")
    workdir = workdir_of("weknora", root)
    ports = free_ports(
        "frontend", "app", "docreader", "postgres", "redis", "minio", "minio_console",
        "neo4j_http", "neo4j_bolt", "jaeger_ui",
    )  # fmt: skip
    dotenv = {
        "DB_USER": DB_USER,
        "DB_PASSWORD": password(),
        "DB_NAME": DB_NAME,
        "REDIS_PASSWORD": password(),
        "MINIO_ACCESS_KEY_ID": "weknora",
        "MINIO_SECRET_ACCESS_KEY": password(),
        "NEO4J_PASSWORD": password(),
        "WEKNORA_IMAGE_PREFIX": PREFIX,
        # The guide sets every host port through .env; the stack file's checks follow them.
        "FRONTEND_PORT": str(ports["frontend"]),
        "APP_PORT": str(ports["app"]),
        "DOCREADER_PORT": str(ports["docreader"]),
        "DB_PORT": str(ports["postgres"]),
        "REDIS_PORT": str(ports["redis"]),
        "MINIO_PORT": str(ports["minio"]),
        "MINIO_CONSOLE_PORT": str(ports["minio_console"]),
        "NEO4J_HTTP_PORT": str(ports["neo4j_http"]),
        "NEO4J_BOLT_PORT": str(ports["neo4j_bolt"]),
        "JAEGER_UI_PORT": str(ports["jaeger_ui"]),
        # The guide's 30 s healthchecks and 60 s start periods, shortened for a test run.
        "WEKNORA_HEALTHCHECK_INTERVAL": "1s",
        "WEKNORA_START_PERIOD": "5s",
    }
    overlay = {
        # What differs on this machine: image names, where the backups go, a quick gate.
        "services": [
            {"name": "frontend", "image": f"{PREFIX}/weknora-ui"},
            {"name": "app", "image": f"{PREFIX}/weknora-app"},
            {"name": "docreader", "image": f"{PREFIX}/weknora-docreader"},
            {"name": "postgres", "image": f"{PREFIX}/postgres:15"},
            {"name": "minio", "image": f"{PREFIX}/minio:moto-5.2.5"},
            {"name": "redis", "image": f"{PREFIX}/redis:7.0"},
            {"name": "neo4j", "image": f"{PREFIX}/neo4j:stand-in"},
            {"name": "jaeger", "image": f"{PREFIX}/jaeger:stand-in"},
        ],
        "backup": {"local_dir": str(root / "backups")},
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "30s"},
    }
    connections = {
        "weknora_postgres": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": ports["postgres"],
            "login": DB_USER, "password": dotenv["DB_PASSWORD"], "schema": DB_NAME,
        },
        "weknora_redis": {
            "conn_type": "redis", "host": "127.0.0.1", "port": ports["redis"],
            "password": dotenv["REDIS_PASSWORD"],
        },
        "weknora_minio": {
            "conn_type": "aws", "login": "weknora",
            "password": dotenv["MINIO_SECRET_ACCESS_KEY"],
            "extra": {"endpoint_url": f"http://127.0.0.1:{ports['minio']}",
                      "region_name": "us-east-1"},
        },
        "weknora_s3": json.loads(s3_server.connection()),
    }  # fmt: skip
    s3_server.create_bucket("weknora-backups")
    with replica(
        "weknora",
        root,
        ports=ports,
        dotenv=dotenv,
        overlay=overlay,
        connections=connections,
        allowed_root=tmp_path_factory.getbasetemp(),
    ) as deployed:
        assert deployed.workdir == workdir
        fetch_moto_wheels(workdir / "minio")
        for version in RELEASES:  # the DAGs' own builds are cache hits from here on
            deployed.build(version)
        yield deployed


def slack_env(receiver: HttpCapture) -> dict[str, str]:
    """A real endpoint for the shipped route, weknora_slack."""
    return slack_connection("weknora_slack", receiver, SLACK_TOKEN)


def docreader_health(weknora: Replica) -> str:
    """grpc.health.v1 Check of docreader from outside (grpcio-health-checking's stubs)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{weknora.ports['docreader']}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError as err:
            return str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def serving(weknora: Replica, release: str) -> bool:
    """/health is ok for ``release``, through the frontend too, and docreader SERVING."""
    status, body = weknora.answer("app", "/health")
    if status != 200 or body.get("status") != "ok" or body.get("version") != release:
        return False
    status, body = weknora.answer("frontend", "/health")
    return (
        status == 200
        and body.get("version") == release
        and (docreader_health(weknora) == "SERVING")
    )


def schema_version(weknora: Replica) -> tuple[int, bool]:
    with weknora.pg() as conn:
        row = conn.execute("SELECT version, dirty FROM schema_migrations").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def cache(weknora: Replica) -> Any:
    import redis

    conn = weknora.connection("weknora_redis")
    return redis.Redis(host="127.0.0.1", port=conn["port"], password=conn["password"])


def post_knowledge(weknora: Replica, knowledge: dict[str, str]) -> dict[str, Any]:
    """A document through the frontend: read by docreader over gRPC, stored in the bucket,
    a row in PostgreSQL, its key in Redis."""
    return post_json(weknora.url("frontend", "/api/v1/knowledge"), knowledge, timeout=10)


def log_config(container: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .HostConfig.LogConfig}}", container],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out))


# ------------------------------------------------------------------------------ tests


def test_deploy_1_0_0_and_every_service_is_healthy_by_its_own_signal(weknora: Replica) -> None:
    weknora.reset()
    result = weknora.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    status, body = weknora.answer("app", "/health")
    assert (status, body) == (200, {"status": "ok", "version": "1.0.0"}), body
    status, body = weknora.answer("frontend", "/health")  # nginx proxies to app:8080
    assert status == 200 and body["status"] == "ok", body
    with urllib.request.urlopen(weknora.url("frontend", "/"), timeout=5) as page:
        assert b"WeKnora" in page.read()
    assert docreader_health(weknora) == "SERVING"  # the real grpc.health.v1 protocol
    # Docker's own verdicts: curl /health, grpc_health_probe, pg_isready.
    for service in ("app", "docreader", "postgres"):
        assert weknora.container_health(service) == "healthy", service
    # golang-migrate's contract: one row, the last version applied, clean.
    assert schema_version(weknora) == (1, False)
    with weknora.pg() as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables "
                                                 "WHERE schemaname = 'public'")}  # fmt: skip
        extensions = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
    assert tables == {"schema_migrations", "tenants", "knowledge_bases", "knowledges"}
    assert {"pg_trgm", "uuid-ossp"} <= extensions  # 00-init-db.sql on the first start
    assert "1/u init" in out  # the migration's own output
    assert cache(weknora).ping() is True  # with the password, AOF on
    assert cache(weknora).info("persistence")["aof_enabled"] == 1
    with urllib.request.urlopen(weknora.url("minio", "/minio/health/live"), timeout=5) as live:
        assert live.status == 200
    assert "weknora" in {b["Name"] for b in weknora.bucket().list_buckets()["Buckets"]}
    status, body = weknora.answer("neo4j_http", "/")
    assert status == 200 and body["bolt_direct"].endswith(":7687"), body
    with socket.create_connection(("127.0.0.1", weknora.ports["neo4j_bolt"]), timeout=5) as bolt:
        bolt.sendall(b"\x60\x60\xb0\x17" + b"\x00\x00\x04\x04" + b"\x00" * 12)
        assert bolt.recv(4) == b"\x00\x00\x04\x04"  # Bolt 4.4 agreed
    with urllib.request.urlopen(weknora.url("jaeger_ui", "/"), timeout=5) as ui:
        assert ui.status == 200
    # The gate ran the shipped checks, every port found through the engine.
    for name in ("http GET http://app:8080/health", "grpc docreader:50051",
                 "http GET http://frontend:80/", "tcp neo4j:7687",
                 "http GET http://minio:9000/minio/health/live",
                 "http GET http://jaeger:16686/"):  # fmt: skip
        assert name in out, name
    assert set(weknora.running_images()) == SERVICES
    for service in SERVICES:  # the guide's json-file limits on every container
        container = weknora.compose("ps", "--quiet", service).strip()
        assert log_config(container) == {
            "Type": "json-file", "Config": {"max-file": "3", "max-size": "10m"},
        }, service  # fmt: skip
    entry = weknora.last("deploy")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert weknora.lock_free()


def test_backup_ends_verified_with_every_source_of_the_stack_file(
    weknora: Replica, s3_server: S3Server
) -> None:
    weknora.at("1.0.0", serving, via="upgrade")
    stored = post_knowledge(weknora, {"title": "in the backup", "content": "backed up words"})

    manifest, sources = weknora.verified_backup({"weknora", "redis", "files", "config"})

    files = sources["files"]
    assert stored["object_key"] in files["fingerprint"]["sha256"]
    with weknora.artifact(manifest, files) as tar:
        member = tar.extractfile(stored["object_key"])
        assert member is not None and member.read() == b"backed up words"
    with weknora.artifact(manifest, sources["config"]) as tar:
        names = tar.getnames()
    for wanted in ("config.yaml", "docker-compose.yml", ".env"):
        assert any(name.endswith(wanted) for name in names), (wanted, names)
    offsite = s3_server.client().list_objects_v2(
        Bucket="weknora-backups", Prefix=f"weknora/weknora/{manifest['backup_id']}/"
    )
    keys = {item["Key"].rsplit("/", 1)[-1] for item in offsite.get("Contents", [])}
    assert "manifest.json" in keys and files["artifacts"][0]["name"] in keys, keys


def test_upgrade_to_1_1_0_keeps_the_data_written_before(weknora: Replica) -> None:
    weknora.at("1.0.0", serving, via="upgrade")
    stored = post_knowledge(weknora, {"title": "before the upgrade", "content": "three old words"})
    query = "SELECT id, title, object_key, word_count, created_at FROM knowledges ORDER BY id"
    with weknora.pg() as conn:
        before = list(conn.execute(query))

    result = weknora.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert serving(weknora, "1.1.0")
    # The guide's order: the old release went down before the migration and the start.
    down = out.index(" down --remove-orphans")
    assert down < out.index("2/u knowledge_tags") < out.rindex(" up --detach"), out[-6000:]
    assert schema_version(weknora) == (2, False)
    with weknora.pg() as conn:
        assert list(conn.execute(query)) == before
        tags = {row[0] for row in conn.execute("SELECT name FROM tags")}
        old_tag = conn.execute("SELECT tag FROM knowledges WHERE id = %s", (stored["id"],))
        assert old_tag.fetchone() == ("untagged",)  # the migration's backfill
    assert tags == {"untagged", "manual", "faq"}
    # The object store and Redis kept their data through `down` (their volumes stay).
    body = weknora.bucket().get_object(Bucket="weknora", Key=stored["object_key"])["Body"]
    assert body.read() == b"three old words"
    assert cache(weknora).get(f"weknora:knowledge:{stored['id']}") == stored["object_key"].encode()
    # 1.1.0 writes what 1.0.0 could not: the tag.
    new = post_knowledge(weknora, {"title": "after", "content": "x", "tag": "faq"})
    with weknora.pg() as conn:
        row = conn.execute("SELECT tag FROM knowledges WHERE id = %s", (new["id"],))
        assert row.fetchone() == ("faq",)
    entry = weknora.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and weknora.lock_free()


def test_never_serving_release_is_rolled_back_with_every_table_equal(
    weknora: Replica, http_receiver: HttpCapture
) -> None:
    weknora.at("1.1.0", serving, via="upgrade")
    post_knowledge(weknora, {"title": "before the never-serving upgrade", "content": "a b c"})
    before = weknora.digests()

    result = weknora.dags_test(
        "upgrade", {"version": "1.2.0-never-serving"}, slack_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    # docreader's models never load: grpc.health.v1 answers NOT_SERVING, its
    # grpc_health_probe healthcheck fails, and Docker calls it unhealthy.
    assert "docreader" in out and "unhealthy" in out, out[-6000:]
    assert serving(weknora, "1.1.0"), out[-6000:]
    assert weknora.digests() == before
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade weknora 1.1.0 -> 1.2.0-never-serving failed at" in text, text
    assert "docreader" in text and "unhealthy" in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = weknora.last("upgrade")
    assert entry["outcome"] == "rolled-back", entry
    assert weknora.current() == "1.1.0" and weknora.lock_free()


def test_half_applied_migration_is_rolled_back_with_every_table_equal(
    weknora: Replica, http_receiver: HttpCapture
) -> None:
    weknora.at("1.1.0", serving, via="upgrade")
    before = weknora.digests()

    result = weknora.dags_test(
        "upgrade", {"version": "1.3.0-broken-migration"}, slack_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    # Half-way: 000003 applied, 000004 failed and left schema_migrations (4, dirty).
    assert "3/u chunks" in out, out[-6000:]
    assert "migration failed in line 0: 000004_chunk_backfill.up.sql" in out, out[-6000:]
    assert serving(weknora, "1.1.0"), out[-6000:]
    after = weknora.digests()
    assert "public.chunks" not in after
    assert after == before
    assert schema_version(weknora) == (2, False)  # the dirty flag went with the restore
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade weknora 1.1.0 -> 1.3.0-broken-migration failed at migrate" in text, text
    assert 'column "summary" does not exist' in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = weknora.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert weknora.current() == "1.1.0" and weknora.lock_free()


def test_log_cleanup_removes_exactly_what_the_rules_name(weknora: Replica) -> None:
    """WeKnora logs to stdout: its ``logs`` section names no files, only Docker's json-file
    limits (required: 10m x 3) and the images of old releases (keep_images_releases: 3,
    default). Release tags beyond the newest three and the current and previous release go;
    every other image of the three built services stays."""
    weknora.at("1.1.0", serving, via="upgrade")
    app = f"{PREFIX}/weknora-app"
    old = load_old_releases(app)
    repositories = [f"{PREFIX}/{name}" for name in VERSIONED]
    before = {repository: image_tags(repository) for repository in repositories}
    prunable = {repository: beyond_the_kept(repository) for repository in repositories}
    assert set(old) <= prunable[app]

    result = weknora.dags_test("log_cleanup", {})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: weknora -> SUCCEEDED" in out, out[-4000:]
    for repository in repositories:
        assert image_tags(repository) == before[repository] - prunable[repository]
        for release in ("1.0.0", "1.1.0"):
            assert image_exists(f"{repository}:{release}")
    for service in SERVICES:  # each container's json-file log reported
        assert f"{weknora.project}-{service}-1: log " in out, service
    assert serving(weknora, "1.1.0")
