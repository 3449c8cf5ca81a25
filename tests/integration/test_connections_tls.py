"""A connection that says TLS is honoured by the probes and the backups alike, against real
servers that accept nothing else.

PostgreSQL 15 and Redis 7 of the host run here with certificates from a CA made for the
test, and both require a client certificate from it: a client that ignores the
connection's ``sslrootcert``/``sslcert``/``sslkey`` (PostgreSQL) or ``ssl``/``ssl_ca_certs``/
``ssl_certfile``/``ssl_keyfile`` (Redis) cannot connect at all. The connections are real
Airflow connections (``AIRFLOW_CONN_*``), read as the tasks and the triggerer read them.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import BackupError
from opsflow.backup.postgres.dump import dump_postgres
from opsflow.backup.postgres.restore import restore_postgres
from opsflow.backup.redis import dump_redis
from opsflow.connections import endpoint
from opsflow.health import CheckResult, PostgresCheck, RedisCheck, run_check
from opsflow.stack.model import PostgresSource, RedisSource
from support.backup import ListLog
from support.services import free_port, service_missing, wait_for_redis

pytestmark = pytest.mark.integration
PASSWORD = "tls-Secret-0psflow"
ROWS = 2500
KEYS = 40


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """PEM files: the test CA, a server and a client certificate it signed, and another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, server: bool = False
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from cryptography.hazmat.primitives import serialization

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def pem(cert: Any) -> bytes:
        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _certificate("opsflow test CA", ca_key, "opsflow test CA", ca_key, ca=True)
    other = _certificate("another CA", other_key, "another CA", other_key, ca=True)
    server = _certificate("localhost", server_key, "opsflow test CA", ca_key, ca=False,
                          server=True)  # fmt: skip
    client = _certificate("opsflow", client_key, "opsflow test CA", ca_key, ca=False)
    return Pki(
        ca=_write(directory / "ca.pem", pem(ca)),
        server_cert=_write(directory / "server.pem", pem(server)),
        server_key=_write(directory / "server.key", pem_key(server_key), 0o600),
        client_cert=_write(directory / "client.pem", pem(client)),
        client_key=_write(directory / "client.key", pem_key(client_key), 0o600),
        other_ca=_write(directory / "other-ca.pem", pem(other)),
    )


# --------------------------------------------------------------------------- servers


def _postgres_bin(name: str) -> str | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return shutil.which(name) or (str(candidates[-1]) if candidates else None)


@pytest.fixture(scope="module")
def pg_tls_port(pki: Pki) -> Iterator[int]:
    """A PostgreSQL cluster that accepts TLS with a client certificate of the test CA only."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        service_missing("PostgreSQL server (initdb, pg_ctl; Debian package postgresql-15)")
    assert initdb and pg_ctl
    port = free_port()
    # The server runs as postgres: its files live outside pytest's root-private tmp dir.
    root = Path(tempfile.mkdtemp(prefix="opsflow-pgtls-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def own(path: Path) -> Path:
        if as_postgres:
            shutil.chown(path, "postgres", "postgres")
        return path

    own(root)
    own(_write(root / "pwfile", f"{PASSWORD}\n".encode()))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    own(sockets)
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-U", "postgres", "--pwfile", str(root / "pwfile"),
         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for name, source, mode in (("server.crt", pki.server_cert, 0o644),
                               ("server.key", pki.server_key, 0o600),
                               ("ca.crt", pki.ca, 0o644)):  # fmt: skip
        own(_write(data / name, source.read_bytes(), mode))
    hba = ["local all all trust", "hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca"]
    (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
    options = (
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on "
        "-c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt"
    )
    pg = [*as_postgres, pg_ctl, "-D", str(data)]
    subprocess.run(
        [*pg, "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start"],
        check=True, capture_output=True, timeout=90,
    )  # fmt: skip
    try:
        yield port
    finally:
        subprocess.run([*pg, "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_tls_port(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Redis server on a TLS port only, requiring a client certificate of the test CA."""
    binary = shutil.which("redis-server")
    if not binary or not shutil.which("redis-cli"):
        service_missing("redis-server and redis-cli (Debian packages redis-server, redis-tools)")
    assert binary
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis-tls"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(pki.ca),
        ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
    )  # fmt: skip
    try:
        wait_for_redis(client, process, "TLS redis-server")
        client.mset({f"key:{number}": f"value {number}" for number in range(KEYS)})
        yield port
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------- helpers


def define(monkeypatch: pytest.MonkeyPatch, conn_id: str, connection: dict[str, Any]) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    return conn_id


def pg_tls(pki: Pki, **extra: str) -> dict[str, str]:
    """libpq's TLS parameters for the test CA (an empty value leaves one out)."""
    settings = {
        "sslmode": "verify-full",
        "sslrootcert": str(pki.ca),
        "sslcert": str(pki.client_cert),
        "sslkey": str(pki.client_key),
        **extra,
    }
    return {key: value for key, value in settings.items() if value}


def pg_connection(port: int, pki: Pki, **extra: str) -> dict[str, Any]:
    return {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": port,
        "login": "postgres",
        "password": PASSWORD,
        "schema": "shop",
        "extra": pg_tls(pki, **extra),
    }


def redis_connection(port: int, pki: Pki, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ssl": True,
        "ssl_ca_certs": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
        **extra,
    }
    return {
        "conn_type": "redis",
        "host": "127.0.0.1",
        "port": port,
        "password": PASSWORD,
        "extra": settings,
    }


def probe(check: PostgresCheck | RedisCheck) -> CheckResult:
    return asyncio.run(run_check(check))


def run_context(tmp_path: Path) -> RunContext:
    return RunContext(stack="tls", backup_id="20260101T000000Z-7f7f7f", staging=tmp_path,
                      log=ListLog())  # fmt: skip


@pytest.fixture(scope="module")
def shop_database(pg_tls_port: int, pki: Pki) -> str:
    """The ``shop`` database with ROWS rows, created over the TLS connection itself."""
    import psycopg

    base = {"host": "127.0.0.1", "port": pg_tls_port, "user": "postgres", "password": PASSWORD}
    base.update(pg_tls(pki))
    with psycopg.connect(**base, dbname="postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop")
    with psycopg.connect(**base, dbname="shop", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
        conn.execute(
            "INSERT INTO orders (item) SELECT 'item ' || n FROM generate_series(1, %s) n", (ROWS,)
        )
    return "shop"


# --------------------------------------------------------------------------- postgresql


def test_the_postgres_probe_uses_the_connections_certificates(
    pg_tls_port: int, pki: Pki, shop_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = define(monkeypatch, "tls_pg", pg_connection(pg_tls_port, pki))
    result = probe(PostgresCheck(kind="postgres", conn_id=conn_id))
    assert result.ok, result.detail
    assert result.detail.startswith("SELECT 1 ok (server 15")

    without = pg_connection(pg_tls_port, pki, sslcert="", sslkey="")
    bare = define(monkeypatch, "tls_pg_no_cert", without)
    refused = probe(PostgresCheck(kind="postgres", conn_id=bare))
    assert not refused.ok
    assert "certificate" in refused.detail, refused.detail


def test_backup_dumps_and_restores_through_the_connections_tls(
    pg_tls_port: int,
    pki: Pki,
    shop_database: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """psycopg (snapshot, fingerprint), pg_dump and pg_restore all connect with the
    connection's root certificate and client certificate; without them none could."""
    point = endpoint(define(monkeypatch, "tls_pg", pg_connection(pg_tls_port, pki)))
    ctx = run_context(tmp_path)
    source = PostgresSource(name="shop", conn_id="tls_pg", database=shop_database)

    backup = dump_postgres(source, point, ctx)
    assert backup.fingerprint["tables"]["public.orders"]["rows"] == ROWS

    restored = restore_postgres(
        backup, tmp_path / backup.artifacts[0].name, point, "shop_copy", ctx
    )
    assert (restored["database"], restored["replaced"], restored["rows"]) == (
        "shop_copy", False, ROWS,
    )  # fmt: skip


def test_a_root_certificate_the_server_does_not_match_is_refused_by_probe_and_backup(
    pg_tls_port: int,
    pki: Pki,
    shop_database: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    connection = pg_connection(pg_tls_port, pki, sslrootcert=str(pki.other_ca))
    conn_id = define(monkeypatch, "tls_pg_wrong_ca", connection)

    result = probe(PostgresCheck(kind="postgres", conn_id=conn_id))
    assert not result.ok
    assert "certificate verify failed" in result.detail, result.detail

    source = PostgresSource(name="shop", conn_id=conn_id, database=shop_database)
    with pytest.raises(BackupError, match="certificate verify failed"):
        dump_postgres(source, endpoint(conn_id), run_context(tmp_path))


# --------------------------------------------------------------------------- redis


def test_the_redis_probe_uses_the_connections_tls(
    redis_tls_port: int, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn_id = define(monkeypatch, "tls_redis", redis_connection(redis_tls_port, pki))
    assert probe(RedisCheck(kind="redis", conn_id=conn_id)) == CheckResult(
        "redis tls_redis", True, "PONG"
    )
    wrong = redis_connection(redis_tls_port, pki, ssl_ca_certs=str(pki.other_ca))
    refused = probe(RedisCheck(kind="redis", conn_id=define(monkeypatch, "tls_redis_ca", wrong)))
    assert not refused.ok
    assert "certificate verify failed" in refused.detail, refused.detail


def test_redis_backup_snapshots_through_the_connections_tls(
    redis_tls_port: int, pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """redis-py (INFO) and ``redis-cli --tls --cacert --cert --key --rdb`` alike."""
    point = endpoint(define(monkeypatch, "tls_redis", redis_connection(redis_tls_port, pki)))
    source = RedisSource(name="cache", conn_id="tls_redis")

    backup = dump_redis(source, point, run_context(tmp_path))

    assert backup.fingerprint["keys"] == KEYS
    assert backup.server_version.startswith("7.")
    assert (tmp_path / backup.artifacts[0].name).stat().st_size > 0
