"""Redis as an RDB snapshot, checked with ``redis-check-rdb`` and proven by loading it.

``redis-cli --rdb`` asks the server for the snapshot a replica would get (a fork, so it
is one point in time), into a temporary file next to the artifacts. ``redis-check-rdb``
must accept it before it is compressed; its report gives the key count, and the RESIZEDB
record after each ``SELECT`` gives the keys and TTL keys per database, all as of the
snapshot. Verification loads the artifact into a throwaway server and compares.

Keys with a TTL may legitimately expire between the snapshot and the load, so a database
holding such keys passes when it has at least its keys without a TTL and at most all of
them; a database without TTL keys must match exactly.

``redis-cli`` and redis-py reach the server as the connection says (TLS included, see
:mod:`opsflow.connections`). The password reaches ``redis-cli`` through ``REDISCLI_AUTH``
and the scratch servers through a 0600 config file or the container's environment, never
argv.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from opsflow.backup.context import RunContext
from opsflow.backup.files import require_artifact, single_artifact
from opsflow.backup.manifest import (
    Artifact,
    BackupError,
    SourceBackup,
    Verification,
    conclude,
    now_iso,
)
from opsflow.backup.stream import CHUNK, ArtifactCorrupt, check_artifact
from opsflow.connections import Endpoint, RedisParams, redis_params
from opsflow.paths import fsync_dir
from opsflow.runtimes.process import CommandFailed, LineLogger, ProcessRunner
from opsflow.stack.model import RedisSource

CONTAINER_PORT = 6379
_KEYS_READ = re.compile(r"\[info\] (\d+) keys read")
_EXPIRES = re.compile(r"\[info\] (\d+) expires")
_ALREADY_EXPIRED = re.compile(r"\[info\] (\d+) already expired")
_REDIS_VER = re.compile(r"AUX FIELD redis-ver = '([^']*)'")
_SELECT_DB = re.compile(r"\[offset (\d+)\] Selecting DB ID (\d+)")
_RESIZEDB = 0xFB


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed on this worker (Debian package redis-tools)")
    return found


def _client(params: RedisParams) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        **params.client_kwargs(),
        socket_timeout=10,
        socket_connect_timeout=5,
        # redis-py retries with backoff by default, a wrong password too; our callers poll.
        retry=Retry(NoBackoff(), 0),
    )


# ---------------------------------------------------------------------------------- check


def _read_length(handle: IO[bytes]) -> int | None:
    """One RDB length encoding (6, 14, 32 or 64 bit); ``None`` for a special encoding."""
    first = handle.read(1)
    if not first:
        return None
    kind, value = first[0] >> 6, first[0] & 0x3F
    if kind == 0:
        return value
    if kind == 1:
        second = handle.read(1)
        return (value << 8) | second[0] if second else None
    if first[0] == 0x80:
        return int.from_bytes(handle.read(4), "big")
    if first[0] == 0x81:
        return int.from_bytes(handle.read(8), "big")
    return None


def _databases(path: Path, selects: list[tuple[int, int]]) -> dict[str, dict[str, int]] | None:
    """Keys and TTL keys per database from the RESIZEDB record after each SELECTDB."""
    databases: dict[str, dict[str, int]] = {}
    with path.open("rb") as handle:
        for offset, db in selects:
            handle.seek(offset)
            if handle.read(1) != bytes([_RESIZEDB]):
                return None
            keys, expires = _read_length(handle), _read_length(handle)
            if keys is None or expires is None:
                return None
            databases[f"db{db}"] = {"keys": keys, "expires": expires}
    return databases


def _error_line(lines: list[str]) -> str:
    for index, line in enumerate(lines):
        if "RDB ERROR DETECTED" in line:
            rest = [text.strip() for text in lines[index + 1 : index + 3] if text.strip()]
            return " ".join(rest) or line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def check_rdb(path: Path, log: LineLogger) -> dict[str, Any]:
    """Run ``redis-check-rdb``; return the fingerprint or raise with its error line."""
    result = subprocess.run(
        [_tool("redis-check-rdb"), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    for line in lines:
        log.info("  redis-check-rdb: %s", line)
    text = "\n".join(lines)
    if result.returncode != 0 or "RDB looks OK" not in text:
        raise BackupError(f"redis-check-rdb rejected {path.name}: {_error_line(lines)}")
    keys = _KEYS_READ.search(text)
    if keys is None:
        raise BackupError(f"redis-check-rdb {path.name}: no key count in its output")
    with path.open("rb") as handle:
        magic = handle.read(9)
    fingerprint: dict[str, Any] = {
        "keys": int(keys.group(1)),
        "expires": int(m.group(1)) if (m := _EXPIRES.search(text)) else 0,
        "already_expired": int(m.group(1)) if (m := _ALREADY_EXPIRED.search(text)) else 0,
        "rdb_version": int(magic[5:]) if magic[:5] == b"REDIS" and magic[5:].isdigit() else None,
        "redis_version": m.group(1) if (m := _REDIS_VER.search(text)) else "",
    }
    selects = [(int(m.group(1)), int(m.group(2))) for m in _SELECT_DB.finditer(text)]
    databases = _databases(path, selects)
    if databases is not None and sum(d["keys"] for d in databases.values()) == fingerprint["keys"]:
        fingerprint["databases"] = databases
    else:
        log.info("redis: no per-database key counts in %s; comparing totals only", path.name)
    return fingerprint


# ---------------------------------------------------------------------------------- dump


def dump_redis(source: RedisSource, endpoint: Endpoint, ctx: RunContext) -> SourceBackup:
    """Snapshot one Redis server into ``<name>.rdb.zst`` in ``ctx.staging``."""
    started = now_iso()
    cli = _tool("redis-cli")
    _tool("redis-check-rdb")
    params = redis_params(endpoint)
    try:
        info = _client(params).info("server")
    except Exception as err:
        raise BackupError(f"redis {source.name} at {params.host}:{params.port}: {err}") from None
    server_version = str(info.get("redis_version", ""))
    tool_version = subprocess.run(
        [cli, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    tmp = ctx.staging / f".{source.name}.rdb.tmp"
    tmp.unlink(missing_ok=True)
    # redis-cli creates its file 0644 and does not truncate: an empty 0600 file keeps it private.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    argv = [*params.cli_argv(cli), "--rdb", str(tmp)]
    env = params.cli_env()
    try:
        try:
            ProcessRunner(ctx.log, env=env).run(argv)
        except CommandFailed as err:
            raise BackupError(f"redis {source.name}: redis-cli --rdb {err.summary}") from None
        if tmp.stat().st_size == 0:
            raise BackupError(f"redis {source.name}: redis-cli --rdb wrote nothing")
        fingerprint = check_rdb(tmp, ctx.log)
        artifact = ctx.pipeline.compress_to_file(
            ctx.staging / f"{source.name}.rdb.zst", level=ctx.level, argv=["cat", str(tmp)]
        )
    finally:
        tmp.unlink(missing_ok=True)
    ctx.log.info("redis %s: %d keys (%s)", source.name, fingerprint["keys"], server_version)
    return SourceBackup(
        name=source.name,
        kind="redis",
        artifacts=[artifact],
        started_at=started,
        ended_at=now_iso(),
        tool_version=tool_version,
        server_version=server_version,
        fingerprint=fingerprint,
    )


# ---------------------------------------------------------------------------------- verify


def _decompress_to(ctx: RunContext, src: Path, artifact: Artifact, dest: Path) -> int:
    """Decompress ``src`` into a new 0600 file ``dest``; return its size."""
    written = [0]

    def reader(stream: IO[bytes]) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := stream.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                written[0] += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)

    ctx.pipeline.decompress_file(src, artifact, reader=reader)
    return written[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# (host, port, a check returning why the server died, with its last log lines, or "")
_Scratch = tuple[str, int, Callable[[], str]]


@contextlib.contextmanager
def _host_server(workdir: Path, password: str) -> Iterator[_Scratch]:
    port = _free_port()
    conf = workdir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            f"port {port}\nbind 127.0.0.1\nprotected-mode yes\ndir {workdir}\n"
            'dbfilename dump.rdb\nsave ""\nappendonly no\ndaemonize no\n'
            f'requirepass "{password}"\n'
        )
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [_tool("redis-server"), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def dead() -> str:
        if process.poll() is None:
            return ""
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        return f"redis-server exited with {process.returncode}: " + " | ".join(tail)

    try:
        yield "127.0.0.1", port, dead
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@contextlib.contextmanager
def _container_server(
    image: str, workdir: Path, password: str, ctx: RunContext
) -> Iterator[_Scratch]:
    from opsflow.backup.scratch import start_scratch

    container = start_scratch(
        image,
        label=ctx.scratch_label,
        role="redis",
        container_port=CONTAINER_PORT,
        # The demo image's entrypoint writes REDIS_PASSWORD into a 0600 config file and
        # passes our arguments on to redis-server, after that file: they win.
        environment={"REDIS_PASSWORD": password},
        command=["--dir", "/data", "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"],
        binds={str(workdir): {"bind": "/data", "mode": "rw"}},
        # Our own uid reads the 0700 work dir: no chown, whatever user the image prefers.
        user=f"{os.getuid()}:{os.getgid()}",
    )

    def dead() -> str:
        code = container.exit_code()
        if code is None:
            return ""
        tail = " | ".join(container.logs(8).strip().splitlines()[-5:])
        return f"scratch redis from {image} exited with {code}: {tail}"

    try:
        yield container.host, container.port, dead
    finally:
        container.remove()


def _wait_loaded(scratch: _Scratch, password: str, timeout: float) -> tuple[dict[str, Any], str]:
    """INFO keyspace once the dump is loaded, or ``({}, why the server died)``."""
    import redis

    host, port, dead = scratch
    deadline = time.monotonic() + timeout
    while True:
        why = dead()
        if why:
            return {}, why
        try:
            client = _client(RedisParams(host=host, port=port, password=password))
            try:
                if int(client.info("persistence").get("loading", 1)) == 0:
                    return dict(client.info("keyspace")), ""
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            pass
        if time.monotonic() > deadline:
            raise BackupError(f"scratch redis did not finish loading within {timeout:.0f}s")
        time.sleep(0.2)


def compare_keyspace(fingerprint: dict[str, Any], keyspace: dict[str, Any]) -> list[str]:
    """One line per database whose loaded key count is outside what the snapshot allows."""
    loaded = {
        db: int(stats.get("keys", 0))
        for db, stats in keyspace.items()
        if db.startswith("db") and isinstance(stats, dict)
    }
    differences: list[str] = []
    expected: dict[str, dict[str, int]] = fingerprint.get("databases") or {}
    per_database = set(expected) | set(loaded) if expected else set()
    for db in sorted(per_database, key=lambda name: int(name[2:])):
        want = expected.get(db, {"keys": 0, "expires": 0})
        got = loaded.get(db, 0)
        if not want["keys"] - want["expires"] <= got <= want["keys"]:
            ttl = f" ({want['expires']} with a TTL)" if want["expires"] else ""
            differences.append(f"{db}: {got} keys after loading, {want['keys']} in the backup{ttl}")
    total, keys = sum(loaded.values()), int(fingerprint.get("keys", 0))
    if not expected and not keys - int(fingerprint.get("expires", 0)) <= total <= keys:
        differences.append(f"keys: {total} after loading, {keys} in the backup")
    return differences


def verify_redis(
    backup: SourceBackup,
    artifact_dir: Path,
    image: str | None,
    ctx: RunContext,
    timeout: float = 60,
) -> Verification:
    """Load the artifact into a scratch server (``image``, or the host's redis-server).

    A corrupt artifact, a dump the server refuses and a key count outside the snapshot's
    are failed verifications; a missing image or a load timeout raise (nothing proven).
    """
    started = time.monotonic()
    artifact = single_artifact(backup)
    differences: list[str] = []
    details: dict[str, Any] = {"image": image or "host redis-server"}
    ctx.staging.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".verify-{backup.name}-", dir=ctx.staging))
    try:
        try:
            require_artifact(artifact_dir / artifact.name, artifact)
            details["bytes"] = _decompress_to(
                ctx, artifact_dir / artifact.name, artifact, workdir / "dump.rdb"
            )
        except ArtifactCorrupt as err:
            differences.append(str(err))
        if not differences:
            password = secrets.token_urlsafe(24)
            server = (
                _container_server(image, workdir, password, ctx)
                if image
                else _host_server(workdir, password)
            )
            with server as scratch:
                keyspace, why = _wait_loaded(scratch, password, timeout)
            if why:
                differences.append(why)
            else:
                details["keyspace"] = {
                    db: stats.get("keys") for db, stats in keyspace.items() if db.startswith("db")
                }
                differences.extend(compare_keyspace(backup.fingerprint, keyspace))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return conclude(backup.name, differences, details, started, ctx.log)


# ---------------------------------------------------------------------------------- restore


def restore_redis(
    backup: SourceBackup, artifact_path: Path, data_dir: Path, ctx: RunContext
) -> dict[str, Any]:
    """Replace ``data_dir/dump.rdb`` with the backup's (Redis must be stopped meanwhile).

    The new file takes the owner and mode of the dump it replaces (or the directory's
    owner and 0600 when there is none), so the server's user can read it.
    """
    artifact = single_artifact(backup)
    check_artifact(artifact_path, artifact)
    if not data_dir.is_dir():
        raise BackupError(f"redis data dir {data_dir} does not exist")
    target = data_dir / "dump.rdb"
    try:
        existing = target.stat()
        uid, gid, mode = existing.st_uid, existing.st_gid, existing.st_mode & 0o7777
    except FileNotFoundError:
        owner = data_dir.stat()
        uid, gid, mode = owner.st_uid, owner.st_gid, 0o600
    tmp = data_dir / f".dump.rdb.restore-{secrets.token_hex(4)}"
    try:
        size = _decompress_to(ctx, artifact_path, artifact, tmp)
        with contextlib.suppress(PermissionError):
            os.chown(tmp, uid, gid)
        tmp.chmod(mode)
        tmp.replace(target)
        fsync_dir(data_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if (data_dir / "appendonlydir").exists() or (data_dir / "appendonly.aof").exists():
        ctx.log.info(
            "redis: %s also holds an AOF; a server with appendonly yes loads that, not dump.rdb",
            data_dir,
        )
    keys = int(backup.fingerprint.get("keys", 0))
    ctx.log.info("redis %s: restored %s (%d bytes, %d keys)", backup.name, target, size, keys)
    return {"bytes": size, "keys": keys}
