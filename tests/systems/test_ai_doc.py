"""ai-doc (AI technical document library), proven end to end: the shipped
include/stacks/ai-doc.yaml run through ``airflow dags test`` against the real engine and
the replica in include/replicas/ai-doc (nginx gateway, two backends, gRPC parser,
PostgreSQL initialised from numbered SQL files, moto standing in for MinIO).

The tests run in file order and each starts from the release it names (``at`` rebuilds
that state when an earlier test left something else). Every failed upgrade must leave the
old release healthy by the system's own signal (``/health`` through the gateway answering
``{"status": "healthy"}``, both backends live), every table equal by plain SQL digests,
a failed run and one alert on the stack's route (its Slack webhook, to a real receiver).
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
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
from support.services import get_json

pytestmark = pytest.mark.systems

RELEASES = ["1.0.0", "1.1.0", "1.2.0-never-live", "1.3.0-broken-migration"]
PREFIX = system_project("ai-doc")
SLACK_TOKEN = "T0AIDOC/B0AIDOC/aiDocWebhookToken"
SERVICES = {"nginx", "backend", "backend2", "python-parser", "postgres", "minio"}
DAY = 86400


@pytest.fixture(scope="module")
def ai_doc(
    engine: None, tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[Replica]:
    """The replica under its own project, ports and images; every release built once."""
    root = tmp_path_factory.mktemp("ai-doc")
    workdir = workdir_of("ai-doc", root)
    ports = free_ports(
        "http", "backend", "backend2", "parser", "postgres", "minio", "minio_console"
    )
    db_password = password()
    dotenv = {
        "POSTGRES_PASSWORD": db_password,
        "MINIO_ROOT_PASSWORD": password(),
        "JWT_SECRET": password(),
        "AI_DOC_IMAGE_PREFIX": PREFIX,
        "AI_DOC_HTTP_PORT": str(ports["http"]),
        "AI_DOC_BACKEND_PORT": str(ports["backend"]),
        "AI_DOC_BACKEND2_PORT": str(ports["backend2"]),
        "AI_DOC_PARSER_PORT": str(ports["parser"]),
        "AI_DOC_POSTGRES_PORT": str(ports["postgres"]),
        "AI_DOC_MINIO_PORT": str(ports["minio"]),
        "AI_DOC_MINIO_CONSOLE_PORT": str(ports["minio_console"]),
        # The guide's 30 s healthchecks and 40 s start period, shortened for a test run.
        "AI_DOC_HEALTHCHECK_INTERVAL": "2s",
        "AI_DOC_START_PERIOD": "6s",
    }
    overlay = {
        # What differs on this machine: image names, where the backups are, and a gate
        # quick enough for a test. The shipped log roots are relative to the working dir
        # (the replica's copy), so the shipped rules apply here unchanged.
        "services": [
            {"name": "nginx", "image": f"{PREFIX}/nginx:1.22"},
            {"name": "backend", "image": f"{PREFIX}/backend"},
            {"name": "backend2", "image": f"{PREFIX}/backend"},
            {"name": "python-parser", "image": f"{PREFIX}/python-parser"},
            {"name": "postgres", "image": f"{PREFIX}/postgres:15"},
            {"name": "minio", "image": f"{PREFIX}/minio:moto-5.2.5"},
        ],
        "backup": {"local_dir": str(root / "backups")},
        "health_gate": {"consecutive": 2, "interval": "1s", "timeout": "20s"},
    }
    connections = {
        "ai_doc_postgres": {
            "conn_type": "postgres", "host": "127.0.0.1", "port": ports["postgres"],
            "login": "ai_doc", "password": db_password, "schema": "ai_doc",
        },
        "ai_doc_minio": {
            "conn_type": "aws", "login": "ai-doc", "password": dotenv["MINIO_ROOT_PASSWORD"],
            "extra": {"endpoint_url": f"http://127.0.0.1:{ports['minio']}",
                      "region_name": "us-east-1"},
        },
        "ai_doc_s3": json.loads(s3_server.connection()),
    }  # fmt: skip
    s3_server.create_bucket("ai-doc-backups")
    with replica(
        "ai-doc",
        root,
        ports=ports,
        dotenv=dotenv,
        overlay=overlay,
        connections=connections,
        allowed_root=tmp_path_factory.getbasetemp(),
    ) as deployed:
        assert deployed.workdir == workdir
        # Bind-mounted directories the non-root backends (uid 1000) write to.
        for name in ("logs/nginx", "logs/backend", "logs/backend2", "storage", "backups"):
            (workdir / name).mkdir(parents=True, exist_ok=True)
            (workdir / name).chmod(0o777)
        fetch_moto_wheels(workdir / "minio")
        for version in RELEASES:  # the DAGs' own builds are cache hits from here on
            deployed.build(version)
        yield deployed


def slack_env(receiver: HttpCapture) -> dict[str, str]:
    """A real endpoint for the shipped route, ai_doc_slack."""
    return slack_connection("ai_doc_slack", receiver, SLACK_TOKEN)


def version(ai_doc: Replica) -> str | None:
    status, body = ai_doc.answer("http", "/api/version")
    return str(body["version"]) if status == 200 else None


def serving(ai_doc: Replica, release: str) -> bool:
    """The gateway's /health is healthy, both backends live, and they run ``release``."""
    status, body = ai_doc.answer("http", "/health")
    if status != 200 or body.get("status") != "healthy" or version(ai_doc) != release:
        return False
    for port in ("backend", "backend2"):
        status, body = ai_doc.answer(port, "/health/live")
        if status != 200 or body.get("version") != release:
            return False
    return True


def post_document(ai_doc: Replica, document: dict[str, str]) -> dict[str, Any]:
    """A document through the gateway: parsed over gRPC, stored in the bucket and the DB."""
    return post_json(ai_doc.url("http", "/api/documents"), document, timeout=10)


def parser_call(port: int, method: str, payload: bytes) -> tuple[str, bytes]:
    """The status and answer of a gRPC call to the parser (raw bytes, no stubs)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/ai_doc.parser.DocumentParser/{method}")
        try:
            return "OK", bytes(call(payload, timeout=5))
        except grpc.RpcError as err:
            return str(err.code().name), b""


def age(path: Path, seconds: float) -> None:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ------------------------------------------------------------------------------ tests


def test_deploy_1_0_0_and_every_service_is_healthy_by_its_own_signal(ai_doc: Replica) -> None:
    ai_doc.reset()
    result = ai_doc.dags_test("deploy", {"version": "1.0.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    # The guide's last step: curl http://localhost/health through the gateway.
    status, body = ai_doc.answer("http", "/health")
    assert status == 200 and body["status"] == "healthy", body
    assert version(ai_doc) == "1.0.0"
    nodes = set()
    for port in ("backend", "backend2"):
        status, body = ai_doc.answer(port, "/health/live")
        assert status == 200 and body["status"] == "alive", body
        nodes.add(body["node"])
        status, body = ai_doc.answer(port, "/health/ready")
        assert status == 200 and body["checks"] == {
            "database": "up", "parser": "up", "storage": "up",
        }, body  # fmt: skip
    assert nodes == {"backend-1", "backend-2"}
    assert parser_call(ai_doc.ports["parser"], "Parse", b"two words") == (
        "OK", b'{"words": 2, "lines": 1, "title": "two words"}',
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", ai_doc.ports["parser"]), timeout=5):
        pass  # the guide's socket check, from outside
    for service in SERVICES - {"minio"}:  # minio has no healthcheck in the guide
        assert ai_doc.container_health(service) == "healthy", service
    with urllib.request.urlopen(ai_doc.url("minio", "/minio/health/live"), timeout=5) as live:
        assert live.status == 200  # MinIO's liveness probe (an empty 200)
    assert "ai-doc" in {b["Name"] for b in ai_doc.bucket().list_buckets()["Buckets"]}
    # The schema came from the numbered init files, on the volume's first start.
    with ai_doc.pg() as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables "
                                                 "WHERE schemaname = 'public'")}  # fmt: skip
        admins = list(conn.execute("SELECT username FROM users WHERE role = 'admin'"))
    assert tables == {"documents", "document_embeddings", "users", "mcp_api_keys"}
    assert admins == [("admin",)]
    assert "postgres is not running yet" in out  # the migration left the first start alone
    # The gate ran the shipped checks, the ports found through the engine; the monitoring
    # profile stays off.
    for name in ("http GET http://nginx:80/health", "http GET http://backend:8080/health/live",
                 "http GET http://backend2:8080/health/live", "tcp python-parser:50051",
                 "http GET http://minio:9000/minio/health/live"):  # fmt: skip
        assert name in out, name
    assert set(ai_doc.running_images()) == SERVICES
    assert "GET /health " in (ai_doc.workdir / "logs" / "nginx" / "access.log").read_text()
    entry = ai_doc.last("deploy")
    assert (entry["version"], entry["outcome"]) == ("1.0.0", "succeeded")
    assert ai_doc.lock_free()


def test_backup_ends_verified_with_every_source_of_the_stack_file(
    ai_doc: Replica, s3_server: S3Server
) -> None:
    ai_doc.at("1.0.0", serving)
    stored = post_document(ai_doc, {"title": "in the backup", "content": "backed up words"})

    manifest, sources = ai_doc.verified_backup({"ai_doc", "documents", "config"})

    # The bucket's objects, each with its sha256, the document just stored among them.
    documents = sources["documents"]
    assert stored["object_key"] in documents["fingerprint"]["sha256"]
    with ai_doc.artifact(manifest, documents) as tar:
        member = tar.extractfile(stored["object_key"])
        assert member is not None and member.read() == b"backed up words"
    with ai_doc.artifact(manifest, sources["config"]) as tar:
        names = tar.getnames()
    assert any(name.endswith("nginx.conf") for name in names), names
    # The offsite copy (the stack's s3 destination) holds the same backup, manifest too.
    offsite = s3_server.client().list_objects_v2(
        Bucket="ai-doc-backups", Prefix=f"ai-doc/ai-doc/{manifest['backup_id']}/"
    )
    keys = {item["Key"].rsplit("/", 1)[-1] for item in offsite.get("Contents", [])}
    assert "manifest.json" in keys and documents["artifacts"][0]["name"] in keys, keys


def test_upgrade_to_1_1_0_keeps_the_data_written_before(ai_doc: Replica) -> None:
    ai_doc.at("1.0.0", serving)
    stored = post_document(ai_doc, {"title": "before the upgrade", "content": "three old words"})
    query = "SELECT id, title, object_key, size_bytes, word_count, created_at FROM documents"
    with ai_doc.pg() as conn:
        before = list(conn.execute(query + " ORDER BY id"))

    result = ai_doc.dags_test("upgrade", {"version": "1.1.0"})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert serving(ai_doc, "1.1.0")
    # The new numbered file reached the running database through the migration.
    assert "applying /docker-entrypoint-initdb.d/006_document_categories.sql" in out
    with ai_doc.pg() as conn:
        assert list(conn.execute(query + " ORDER BY id")) == before
        categories = {row[0] for row in conn.execute("SELECT name FROM categories")}
    assert categories == {"uncategorized", "guide", "api"}
    listed = get_json(ai_doc.url("http", "/api/documents"))[1]["documents"]
    old = next(doc for doc in listed if doc["id"] == stored["id"])
    assert old["category"] == "uncategorized"  # the migration's backfill
    body = ai_doc.bucket().get_object(Bucket="ai-doc", Key=stored["object_key"])["Body"]
    assert body.read() == b"three old words"
    # 1.1.0 writes what 1.0.0 could not: the category.
    new = post_document(ai_doc, {"title": "after", "content": "x", "category": "guide"})
    with ai_doc.pg() as conn:
        row = conn.execute("SELECT category FROM documents WHERE id = %s", (new["id"],))
        assert row.fetchone() == ("guide",)
    entry = ai_doc.last("upgrade")
    assert (entry["from_version"], entry["version"], entry["outcome"]) == (
        "1.0.0", "1.1.0", "succeeded",
    )  # fmt: skip
    assert entry["backup_id"] and ai_doc.lock_free()


def test_never_live_release_is_rolled_back_with_every_table_equal(
    ai_doc: Replica, http_receiver: HttpCapture
) -> None:
    ai_doc.at("1.1.0", serving)
    post_document(ai_doc, {"title": "before the never-live upgrade", "content": "a b c"})
    before = ai_doc.digests()

    result = ai_doc.dags_test("upgrade", {"version": "1.2.0-never-live"}, slack_env(http_receiver))
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    # The new backends never left start-up (the parser has no Embed method): Docker still
    # had them `starting`, and the gateway, whose healthcheck goes through them, was the
    # first service Docker called unhealthy.
    assert '"status": "starting", "waiting_for": "parser method Embed"' in out, out[-6000:]
    assert serving(ai_doc, "1.1.0"), out[-6000:]
    assert ai_doc.digests() == before
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade ai-doc 1.1.0 -> 1.2.0-never-live failed at verify" in text, text
    assert "conclusive evidence from the runtime" in text and "unhealthy" in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = ai_doc.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "verify")
    assert ai_doc.current() == "1.1.0" and ai_doc.lock_free()


def test_half_applied_migration_is_rolled_back_with_every_table_equal(
    ai_doc: Replica, http_receiver: HttpCapture
) -> None:
    ai_doc.at("1.1.0", serving)
    before = ai_doc.digests()

    result = ai_doc.dags_test(
        "upgrade", {"version": "1.3.0-broken-migration"}, slack_env(http_receiver)
    )
    out = out_of(result)

    assert result.returncode != 0, out[-6000:]
    # Half-way: 007 applied before 008 failed.
    assert "applying /docker-entrypoint-initdb.d/007_document_chunks.sql" in out
    assert "applying /docker-entrypoint-initdb.d/008_chunk_backfill.sql" in out
    assert serving(ai_doc, "1.1.0"), out[-6000:]
    after = ai_doc.digests()
    assert "public.document_chunks" not in after
    assert after == before
    text = one_alert(http_receiver, SLACK_TOKEN)
    assert "upgrade ai-doc 1.1.0 -> 1.3.0-broken-migration failed at migrate" in text, text
    assert 'column "summary" does not exist' in text, text
    assert "rolled back to 1.1.0; healthy" in text, text
    entry = ai_doc.last("upgrade")
    assert (entry["outcome"], entry["failed_task"]) == ("rolled-back", "migrate")
    assert ai_doc.current() == "1.1.0" and ai_doc.lock_free()


def test_log_cleanup_removes_exactly_what_the_rules_name(ai_doc: Replica) -> None:
    """nginx's logs under logrotate's naming (compressed from the second rotation on) and
    the backends' per-instance logs, cleaned by the shipped rules: rotated nginx files
    (``*.log.*``) and backend ``*.log`` files compressed after 1 day, compressed ones
    deleted after 14 (a plain file is compressed first, never deleted unread); the live
    logs, recent files and anything the patterns do not name stay."""
    ai_doc.at("1.1.0", serving)
    logs = ai_doc.workdir / "logs"
    nginx, backend, backend2 = logs / "nginx", logs / "backend", logs / "backend2"
    live = {"access.log", "error.log"} & listing(nginx)
    assert "access.log" in live
    files = {
        nginx / "access.log.1": 2 * DAY,  # delaycompress left it plain: compressed now
        nginx / "access.log.2.gz": 3 * DAY,  # kept
        nginx / "access.log.15.gz": 15 * DAY,  # past rotate 14: deleted
        nginx / "error.log.16.gz": 20 * DAY,  # deleted
        nginx / "mcp.log.1": 3600,  # rotated an hour ago: not a day old, kept as is
        nginx / "README": 30 * DAY,  # not a log file: no rule names it
        backend / "app-2026-10-01.log": 30 * DAY,  # plain: compressed (deleted next time)
        backend / "app-2026-10-02.log.gz": 20 * DAY,  # deleted
        backend / "app-2026-11-28.log": 3 * DAY,  # compressed
        backend2 / "app-2026-11-29.log": 2 * DAY,  # compressed
        backend2 / "notes.txt": 30 * DAY,  # not *.log: kept
    }
    for path, seconds in files.items():
        content = f"{path.name} line\n".encode() * 50
        path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
        age(path, seconds)
    before = {d: listing(d) for d in (nginx, backend, backend2)}
    repositories = [f"{PREFIX}/backend", f"{PREFIX}/python-parser"]
    images_before = {repository: image_tags(repository) for repository in repositories}
    prunable = {repository: beyond_the_kept(repository) for repository in repositories}

    result = ai_doc.dags_test("log_cleanup", {})
    out = out_of(result)

    assert result.returncode == 0, out[-6000:]
    assert "opsflow log cleanup summary: ai-doc -> SUCCEEDED" in out, out[-4000:]
    after = {d: listing(d) for d in (nginx, backend, backend2)}
    removed = {d: before[d] - after[d] for d in before}
    added = {d: after[d] - before[d] for d in before}
    assert removed == {
        nginx: {"access.log.1", "access.log.15.gz", "error.log.16.gz"},
        backend: {"app-2026-10-01.log", "app-2026-10-02.log.gz", "app-2026-11-28.log"},
        backend2: {"app-2026-11-29.log"},
    }, removed
    compressed = {
        nginx: ["access.log.1"],
        backend: ["app-2026-10-01.log", "app-2026-11-28.log"],
        backend2: ["app-2026-11-29.log"],
    }
    for directory, names in compressed.items():
        assert len(added[directory]) == len(names), added
        for name in names:
            (new,) = [n for n in added[directory] if n.startswith(name + ".")]
            assert new.endswith(".gz"), added
            expected = f"{name} line\n".encode() * 50
            assert gzip.decompress((directory / new).read_bytes()) == expected
    assert live <= after[nginx]
    # Images: only release tags beyond the newest three and the current and previous
    # release go (the parser's four images share one creation time under BuildKit, so the
    # name breaks the tie and 1.3.0-broken-migration's goes; with distinct times none does).
    for repository in repositories:
        assert image_tags(repository) == images_before[repository] - prunable[repository]
        for release in ("1.0.0", "1.1.0"):
            assert image_exists(f"{repository}:{release}")
    assert serving(ai_doc, "1.1.0")
