"""Redis RDB backups against a real redis-server: dump, check, verify by loading, restore.

The data set is a few thousand keys of every common type in two databases, some with a
TTL. Verification loads the artifact into the host's redis-server and into the demo image
opsflow-demo/redis:7 (conftest's redis_image builds it when missing); restore writes dump.rdb
into a data dir a fresh redis-server then starts from.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import BackupError, SourceBackup
from opsflow.backup.redis import check_rdb, dump_redis, restore_redis, verify_redis
from opsflow.connections import Endpoint
from opsflow.stack.model import RedisSource
from support.backup import ListLog, consistent_artifact, flip_byte, scratch_containers
from support.servers import RedisServer

pytestmark = pytest.mark.integration
BACKUP_ID = "20260101T000000Z-abcdef"


def _redis(**kwargs: Any) -> Any:
    import redis

    return redis.Redis(**kwargs)


def _ctx(staging: Path, log: ListLog | None = None) -> RunContext:
    staging.mkdir(parents=True, exist_ok=True)
    return RunContext(stack="demo", backup_id=BACKUP_ID, staging=staging, log=log or ListLog())


def _fill(server: RedisServer) -> dict[int, int]:
    """Keys of every type in db0 and db3; db3 also has keys with a TTL. Returns keys per db."""
    db0 = _redis(host=server.host, port=server.port, password=server.password, db=0)
    db3 = _redis(host=server.host, port=server.port, password=server.password, db=3)
    db0.flushall()
    pipe = db0.pipeline(transaction=False)
    for index in range(2000):
        pipe.set(f"str:{index}", f"value-{index}")
    for index in range(200):
        pipe.hset(f"hash:{index}", mapping={"name": f"n{index}", "count": index})
    for index in range(100):
        pipe.rpush(f"list:{index}", *[f"item{n}" for n in range(index % 7 + 1)])
        pipe.sadd(f"set:{index}", *[f"member{n}" for n in range(index % 5 + 1)])
        pipe.zadd(f"zset:{index}", {f"m{n}": n * 1.5 for n in range(index % 4 + 1)})
    for index in range(10):
        pipe.xadd(f"stream:{index}", {"event": "created", "n": str(index)})
    pipe.set("big:blob", os.urandom(300_000))
    pipe.execute()
    pipe = db3.pipeline(transaction=False)
    for index in range(1000):
        pipe.set(f"session:{index}", f"s{index}")
    for index in range(50):
        pipe.set(f"volatile:{index}", "v", ex=3600)
    pipe.execute()
    return {0: int(db0.dbsize()), 3: int(db3.dbsize())}


@pytest.fixture(scope="module")
def filled(redis_server: RedisServer) -> Iterator[tuple[RedisServer, dict[int, int]]]:
    counts = _fill(redis_server)
    client = _redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    # Redis 7 waits 5 s for more replicas before a diskless sync (what --rdb asks for).
    delay = str(client.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"])
    client.config_set("repl-diskless-sync-delay", 0)
    yield redis_server, counts
    client.config_set("repl-diskless-sync-delay", delay)
    client.flushall()


@pytest.fixture(scope="module")
def dumped(
    filled: tuple[RedisServer, dict[int, int]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[SourceBackup, RunContext]:
    server, _counts = filled
    ctx = _ctx(tmp_path_factory.mktemp("redis-dump") / "staging")
    endpoint = Endpoint(host=server.host, port=server.port, password=server.password)
    return dump_redis(RedisSource(name="cache", conn_id="demo_redis"), endpoint, ctx), ctx


# ---------------------------------------------------------------------------------- dump


def test_dump_fingerprint_matches_the_server(
    dumped: tuple[SourceBackup, RunContext], filled: tuple[RedisServer, dict[int, int]]
) -> None:
    backup, ctx = dumped
    server, counts = filled
    assert backup.kind == "redis"
    assert [a.name for a in backup.artifacts] == ["cache.rdb.zst"]
    artifact = ctx.staging / "cache.rdb.zst"
    assert stat.S_IMODE(artifact.stat().st_mode) == 0o600
    assert sorted(p.name for p in ctx.staging.iterdir()) == ["cache.rdb.zst"], "tmp RDB removed"
    fingerprint = backup.fingerprint
    assert fingerprint["keys"] == sum(counts.values()) > 3000
    assert fingerprint["expires"] == 50
    assert fingerprint["databases"] == {
        "db0": {"keys": counts[0], "expires": 0},
        "db3": {"keys": counts[3], "expires": 50},
    }
    version = _redis(host=server.host, port=server.port, password=server.password).info("server")[
        "redis_version"
    ]
    assert backup.server_version == fingerprint["redis_version"] == version
    assert isinstance(fingerprint["rdb_version"], int) and fingerprint["rdb_version"] >= 9
    assert backup.tool_version.startswith("redis-cli ")
    log = ctx.log
    assert isinstance(log, ListLog)
    assert not any(server.password in line for line in log.lines), "password never logged"
    assert any("--rdb" in line for line in log.lines)


def test_wrong_password_is_a_backup_error(
    filled: tuple[RedisServer, dict[int, int]], tmp_path: Path
) -> None:
    server, _ = filled
    ctx = _ctx(tmp_path / "staging")
    endpoint = Endpoint(host=server.host, port=server.port, password="not-the-password")
    with pytest.raises(BackupError, match="cache"):
        dump_redis(RedisSource(name="cache", conn_id="x"), endpoint, ctx)
    assert list(ctx.staging.iterdir()) == []


def test_corrupt_rdb_is_rejected_by_the_check(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    backup, ctx = dumped
    rdb = tmp_path / "dump.rdb"
    raw = subprocess.run(
        ["zstd", "-d", "-c", str(ctx.staging / backup.artifacts[0].name)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    rdb.write_bytes(raw)
    assert check_rdb(rdb, ListLog())["keys"] == backup.fingerprint["keys"]
    rdb.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BackupError, match=r"redis-check-rdb rejected dump.rdb: .*(EOF|Short)"):
        check_rdb(rdb, ListLog())
    rdb.write_bytes(flip_byte(raw, -20))  # inside the data, before the CRC64: checksum error
    with pytest.raises(BackupError, match="redis-check-rdb rejected"):
        check_rdb(rdb, ListLog())


# ---------------------------------------------------------------------------------- verify


def test_verify_on_the_host_server(dumped: tuple[SourceBackup, RunContext]) -> None:
    backup, ctx = dumped
    verification = verify_redis(SourceBackup.from_dict(backup.to_dict()), ctx.staging, None, ctx)
    assert verification.passed, verification.differences
    assert verification.details["keyspace"] == {
        db: stats["keys"] for db, stats in backup.fingerprint["databases"].items()
    }
    assert sorted(p.name for p in ctx.staging.iterdir()) == ["cache.rdb.zst"], "work dir removed"


def test_verify_in_the_demo_image(
    dumped: tuple[SourceBackup, RunContext], redis_image: str
) -> None:
    backup, ctx = dumped
    try:
        verification = verify_redis(backup, ctx.staging, redis_image, ctx)
        assert verification.passed, verification.differences
        assert verification.details["image"] == redis_image
        assert sum(verification.details["keyspace"].values()) == backup.fingerprint["keys"]
    finally:
        assert scratch_containers(f"demo.{BACKUP_ID}") == [], "scratch container removed"


def test_key_count_difference_names_the_key_space(dumped: tuple[SourceBackup, RunContext]) -> None:
    backup, ctx = dumped
    copy = SourceBackup.from_dict(backup.to_dict())
    copy.fingerprint["databases"]["db0"]["keys"] += 5
    copy.fingerprint["keys"] += 5
    verification = verify_redis(copy, ctx.staging, None, ctx)
    assert verification.status == "failed"
    want = copy.fingerprint["databases"]["db0"]["keys"]
    assert verification.differences == [f"db0: {want - 5} keys after loading, {want} in the backup"]

    # Without per-database counts (an RDB lacking RESIZEDB records) the totals are compared.
    # Keys with a TTL may have expired since the snapshot: up to 50 fewer is accepted.
    del copy.fingerprint["databases"]
    loaded = backup.fingerprint["keys"]
    copy.fingerprint["keys"] = loaded + 49
    assert verify_redis(copy, ctx.staging, None, ctx).passed
    copy.fingerprint["keys"] = loaded + 51
    verification = verify_redis(copy, ctx.staging, None, ctx)
    assert verification.differences == [
        f"keys: {loaded} after loading, {loaded + 51} in the backup"
    ]


def test_flipped_byte_and_truncated_artifact_fail(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    backup, original = dumped
    ctx = _ctx(tmp_path / "staging")
    good = (original.staging / backup.artifacts[0].name).read_bytes()
    artifact = ctx.staging / backup.artifacts[0].name

    artifact.write_bytes(flip_byte(good, mask=0x10))
    verification = verify_redis(backup, ctx.staging, None, ctx)
    assert verification.status == "failed"
    assert len(verification.differences) == 1 and "sha256" in verification.differences[0]

    artifact.write_bytes(good[: len(good) // 2])
    verification = verify_redis(backup, ctx.staging, None, ctx)
    assert verification.status == "failed"
    assert "truncated" in verification.differences[0]
    assert sorted(p.name for p in ctx.staging.iterdir()) == [artifact.name]


def test_dump_the_server_refuses_fails_verification(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    """A consistent artifact (sha256 matches) holding an RDB redis-server cannot load."""
    backup, original = dumped
    ctx = _ctx(tmp_path / "staging")
    raw = subprocess.run(
        ["zstd", "-d", "-c", str(original.staging / backup.artifacts[0].name)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    copy = SourceBackup.from_dict(backup.to_dict())
    copy.artifacts = [
        consistent_artifact(ctx, ctx.staging / "cache.rdb.zst", raw[: len(raw) // 2], level=1)
    ]
    verification = verify_redis(copy, ctx.staging, None, ctx, timeout=20)
    assert verification.status == "failed"
    assert verification.differences[0].startswith("redis-server exited with 1")


# ---------------------------------------------------------------------------------- restore


def _start_redis_on(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            if _redis(port=port).info("persistence")["loading"] == 0:
                return process, port
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server on the restored data dir did not start")
        time.sleep(0.05)


def test_restore_into_a_data_dir_then_start_on_it(
    dumped: tuple[SourceBackup, RunContext],
    filled: tuple[RedisServer, dict[int, int]],
    tmp_path: Path,
) -> None:
    backup, ctx = dumped
    server, counts = filled
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    old = data_dir / "dump.rdb"
    old.write_bytes(b"an older snapshot")
    old.chmod(0o640)

    result = restore_redis(backup, ctx.staging / backup.artifacts[0].name, data_dir, ctx)

    assert result["keys"] == backup.fingerprint["keys"]
    assert result["bytes"] == (data_dir / "dump.rdb").stat().st_size
    assert stat.S_IMODE((data_dir / "dump.rdb").stat().st_mode) == 0o640, "mode kept"
    assert sorted(p.name for p in data_dir.iterdir()) == ["dump.rdb"]
    process, port = _start_redis_on(data_dir)
    try:
        source = _redis(host=server.host, port=server.port, password=server.password)
        restored = _redis(port=port)
        restored3 = _redis(port=port, db=3)
        assert restored.dbsize() == counts[0]
        assert restored3.dbsize() == counts[3]
        assert restored.get("str:1234") == b"value-1234"
        assert restored.hgetall("hash:17") == {b"name": b"n17", b"count": b"17"}
        assert restored.lrange("list:5", 0, -1) == source.lrange("list:5", 0, -1)
        assert restored.zrange("zset:3", 0, -1, withscores=True) == source.zrange(
            "zset:3", 0, -1, withscores=True
        )
        assert restored.xlen("stream:4") == 1
        assert restored.get("big:blob") == source.get("big:blob")
        assert 0 < restored3.ttl("volatile:7") <= 3600
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_restore_refuses_a_corrupt_artifact(
    dumped: tuple[SourceBackup, RunContext], tmp_path: Path
) -> None:
    backup, original = dumped
    artifact = tmp_path / "cache.rdb.zst"
    good = (original.staging / backup.artifacts[0].name).read_bytes()
    artifact.write_bytes(flip_byte(good, -1, 0x01))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dump.rdb").write_bytes(b"current")
    with pytest.raises(BackupError, match="sha256"):
        restore_redis(backup, artifact, data_dir, _ctx(tmp_path / "staging"))
    assert (data_dir / "dump.rdb").read_bytes() == b"current"
    assert sorted(p.name for p in data_dir.iterdir()) == ["dump.rdb"]
