"""One reading of an Airflow connection for every client: what psycopg, pg_dump/pg_restore,
redis-py and redis-cli are given for a connection, exactly.

Every connection here is a real Airflow ``Connection``, defined the way operators define
them (``AIRFLOW_CONN_<ID>`` as JSON or as a URI) and read through Airflow's own lookup.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from opsflow.backup.postgres.client import client_env, params
from opsflow.connections import (
    ConnectionProblem,
    Endpoint,
    aendpoint,
    endpoint,
    postgres_params,
    redis_params,
)

PASSWORD = "s3cret-Pa55word"


def define(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict[str, Any] | str) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)
    return conn_id


PG_TLS = {
    "conn_type": "postgres",
    "host": "db.internal",
    "port": 6543,
    "login": "app",
    "password": PASSWORD,
    "schema": "shop",
    "extra": {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/opsflow/ca.pem",
        "sslcert": "/etc/opsflow/client.pem",
        "sslkey": "/etc/opsflow/client.key",
        "options": "-c search_path=shop,public",
        "application_name": "shop-ops",
        "target_session_attrs": "read-write",
        "cursor": "dictcursor",  # the postgres hook's own key, not a libpq parameter
    },
}


# --------------------------------------------------------------------------- postgresql


def test_a_postgres_connection_gives_every_libpq_parameter_it_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = endpoint(define(monkeypatch, "shop_pg", PG_TLS))
    pg = postgres_params(point)

    assert pg.connect_kwargs() == {
        "host": "db.internal",
        "port": 6543,
        "dbname": "shop",
        "user": "app",
        "password": PASSWORD,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/opsflow/ca.pem",
        "sslcert": "/etc/opsflow/client.pem",
        "sslkey": "/etc/opsflow/client.key",
        "options": "-c search_path=shop,public",
        "application_name": "shop-ops",
        "target_session_attrs": "read-write",
    }
    assert PASSWORD not in repr(point) and PASSWORD not in repr(pg)


def test_pg_dump_and_pg_restore_get_the_same_connection_in_their_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment of the backup's pg_dump and pg_restore: TLS files, options and the
    connection's own application name; the backup's defaults only where it names none."""
    point = endpoint(define(monkeypatch, "shop_pg", PG_TLS))

    assert client_env(point, "orders") == {
        "PGHOST": "db.internal",
        "PGPORT": "6543",
        "PGDATABASE": "orders",
        "PGUSER": "app",
        "PGPASSWORD": PASSWORD,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/opsflow/ca.pem",
        "PGSSLCERT": "/etc/opsflow/client.pem",
        "PGSSLKEY": "/etc/opsflow/client.key",
        "PGOPTIONS": "-c search_path=shop,public",
        "PGAPPNAME": "shop-ops",
        "PGTARGETSESSIONATTRS": "read-write",
        "PGCONNECT_TIMEOUT": "10",
    }
    # psycopg in the backup (fingerprint, restore admin) connects with the same values.
    assert params(point, "orders").connect_kwargs() == {
        "host": "db.internal",
        "port": 6543,
        "dbname": "orders",
        "user": "app",
        "password": PASSWORD,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/opsflow/ca.pem",
        "sslcert": "/etc/opsflow/client.pem",
        "sslkey": "/etc/opsflow/client.key",
        "options": "-c search_path=shop,public",
        "application_name": "shop-ops",
        "target_session_attrs": "read-write",
        "connect_timeout": "10",
    }


def test_a_plain_postgres_uri_gets_the_backup_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    point = endpoint(define(monkeypatch, "plain_pg", "postgres://bob:pw-1234@10.0.0.5/app"))

    assert client_env(point, "app") == {
        "PGHOST": "10.0.0.5",
        "PGPORT": "5432",
        "PGDATABASE": "app",
        "PGUSER": "bob",
        "PGPASSWORD": "pw-1234",
        "PGAPPNAME": "opsflow-backup",
        "PGCONNECT_TIMEOUT": "10",
    }


def test_uri_query_parameters_are_extras_too(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "postgres://bob:pw-1234@db:5433?sslmode=require&sslrootcert=%2Fca.pem&dbname=ops"
    pg = postgres_params(endpoint(define(monkeypatch, "uri_pg", uri)))

    assert pg.connect_kwargs() == {
        "host": "db",
        "port": 5433,
        "dbname": "ops",  # no schema: the dbname extra, else postgres
        "user": "bob",
        "password": "pw-1234",
        "sslmode": "require",
        "sslrootcert": "/ca.pem",
    }


def test_the_probe_bound_wins_over_the_connection_and_defaults_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = {"connect_timeout": 30, "application_name": "mine"}
    point = endpoint(define(monkeypatch, "slow_pg", {"conn_type": "postgres", "extra": extra}))
    pg = postgres_params(point)

    assert pg.with_settings(connect_timeout=2).settings == {
        "connect_timeout": "2",
        "application_name": "mine",
    }
    assert pg.with_defaults(connect_timeout=10, application_name="opsflow-backup").settings == {
        "connect_timeout": "30",
        "application_name": "mine",
    }
    assert pg.connect_kwargs()["host"] == "127.0.0.1" and pg.connect_kwargs()["port"] == 5432
    unknown = r"not libpq parameters opsflow passes on: \['sslpassword'\]"
    with pytest.raises(ValueError, match=unknown):
        pg.with_settings(sslpassword="x")


def test_the_async_path_reads_the_same_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    conn_id = define(monkeypatch, "shop_pg", PG_TLS)
    assert asyncio.run(aendpoint(conn_id)) == endpoint(conn_id)


# --------------------------------------------------------------------------- redis

REDIS_TLS = {
    "conn_type": "redis",
    "host": "cache.internal",
    "port": 6380,
    "login": "ops",
    "password": PASSWORD,
    "extra": {
        "db": 2,
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/opsflow/ca.pem",
        "ssl_certfile": "/etc/opsflow/client.pem",
        "ssl_keyfile": "/etc/opsflow/client.key",
        "ssl_check_hostname": True,
    },
}


def test_a_redis_connection_with_tls_reaches_redis_py_and_redis_cli_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis = redis_params(endpoint(define(monkeypatch, "cache", REDIS_TLS)))

    assert redis.client_kwargs() == {
        "host": "cache.internal",
        "port": 6380,
        "username": "ops",
        "password": PASSWORD,
        "db": 2,
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/opsflow/ca.pem",
        "ssl_certfile": "/etc/opsflow/client.pem",
        "ssl_keyfile": "/etc/opsflow/client.key",
        "ssl_check_hostname": True,
    }
    assert redis.cli_argv("/usr/bin/redis-cli") == [
        "/usr/bin/redis-cli", "-h", "cache.internal", "-p", "6380", "--user", "ops",
        "--tls", "--cacert", "/etc/opsflow/ca.pem", "--cert", "/etc/opsflow/client.pem",
        "--key", "/etc/opsflow/client.key",
    ]  # fmt: skip
    assert redis.cli_env() == {"REDISCLI_AUTH": PASSWORD}
    assert PASSWORD not in repr(redis)


def test_a_plain_redis_connection_stays_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    redis = redis_params(endpoint(define(monkeypatch, "plain", "redis://:pw-1234@cache/3")))

    assert redis.client_kwargs() == {
        "host": "cache", "port": 6379, "username": None, "password": "pw-1234", "db": 3,
    }  # fmt: skip
    assert redis.cli_argv("redis-cli") == ["redis-cli", "-h", "cache", "-p", "6379"]


@pytest.mark.parametrize(
    ("query", "ssl", "insecure"),
    [("ssl=true&ssl_cert_reqs=none", True, True), ("ssl=false", False, False),
     ("ssl=True&ssl_cert_reqs=optional", True, False)],
)  # fmt: skip
def test_uri_flags_are_read_as_words(
    monkeypatch: pytest.MonkeyPatch, query: str, ssl: bool, insecure: bool
) -> None:
    redis = redis_params(endpoint(define(monkeypatch, "flags", f"redis://cache:6379?{query}")))

    assert redis.ssl is ssl
    assert ("--tls" in redis.cli_argv("redis-cli")) is ssl
    assert ("--insecure" in redis.cli_argv("redis-cli")) is insecure


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ssl": "maybe"}, "connection odd: extra ssl must be true or false, got 'maybe'"),
        ({"ssl": True, "ssl_cert_reqs": "strict"},
         "connection odd: extra ssl_cert_reqs must be one of required, optional, none, got "
         "'strict'"),
        ({"db": "first"}, "connection odd: extra db must be a number, got 'first'"),
    ],
)  # fmt: skip
def test_unusable_extras_name_the_connection_key_and_value(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], message: str
) -> None:
    point = endpoint(define(monkeypatch, "odd", {"conn_type": "redis", "extra": extra}))
    with pytest.raises(ConnectionProblem) as info:
        redis_params(point)
    assert str(info.value) == message


def test_an_endpoint_built_in_code_needs_no_connection() -> None:
    """Scratch servers are reached through the same parameters, without Airflow."""
    point = Endpoint(host="127.0.0.1", port=55432, login="opsflow", password=PASSWORD)
    assert postgres_params(point).client_env() == {
        "PGHOST": "127.0.0.1", "PGPORT": "55432", "PGDATABASE": "postgres",
        "PGUSER": "opsflow", "PGPASSWORD": PASSWORD,
    }  # fmt: skip
