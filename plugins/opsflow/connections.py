"""How an Airflow connection reaches PostgreSQL and Redis: one reading for every client.

The health probes, the backup's dumps and restores and the scratch servers all connect
through the parameters built here, so a connection that says TLS (``sslrootcert``,
``ssl_ca_certs``...) is honoured by ``psycopg``, ``pg_dump``/``pg_restore`` (libpq's
environment), ``redis-py`` and ``redis-cli`` alike. Extras are read as the Airflow postgres
and redis providers name them; extras that are not connection parameters (the postgres
hook's ``cursor``, ``iam``...) are ignored, as those hooks ignore each other's.

No Airflow import at module level: the stack model imports :data:`ConnId` from here at
DAG-parse time. Passwords never appear in a repr or an argv: libpq gets ``PGPASSWORD``,
``redis-cli`` gets ``REDISCLI_AUTH``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import AfterValidator

from opsflow.errors import OpsflowError

DEFAULT_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
REDIS_PORT = 6379


class ConnectionProblem(OpsflowError, ValueError):
    """A connection's field or extra cannot be used; names the connection, key and value."""


# --------------------------------------------------------------------------- connection ids

# Airflow connection ids: the id of a row, never a path (``../../x``) or a template.
_CONN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,249}")


def _conn_id(value: str) -> str:
    if not _CONN_ID.fullmatch(value):
        raise ValueError(
            "not a plain Airflow connection id (letters, digits, '_', '-', '.'; "
            "not starting with '.'; at most 250 characters)"
        )
    return value


ConnId = Annotated[str, AfterValidator(_conn_id)]
"""A field naming an Airflow connection (stack files and health checks)."""


# --------------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class Endpoint:
    """An Airflow connection as plain values (no Airflow object travels further)."""

    host: str
    port: int
    login: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # For messages only: which connection these values came from.
    conn_id: str = ""

    def where(self) -> str:
        return f"connection {self.conn_id}" if self.conn_id else f"{self.host}:{self.port}"


def endpoint_of(conn_id: str, connection: Any, extra: Mapping[str, Any]) -> Endpoint:
    """The plain values of an Airflow ``Connection`` (and its already decoded extras)."""
    try:
        port = int(connection.port or 0)
    except (TypeError, ValueError):
        raise ConnectionProblem(
            f"connection {conn_id}: port must be a number, got {connection.port!r}"
        ) from None
    return Endpoint(
        host=connection.host or DEFAULT_HOST,
        port=port,
        login=connection.login or "",
        password=connection.password or "",
        schema=connection.schema or "",
        extra=dict(extra or {}),
        conn_id=conn_id,
    )


def endpoint(conn_id: str) -> Endpoint:
    """The Airflow connection ``conn_id`` as plain values (in a task)."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    return endpoint_of(conn_id, connection, connection.extra_dejson)


async def aendpoint(conn_id: str) -> Endpoint:
    """The same through the SDK's async path (safe in the triggerer's event loop)."""
    from airflow.sdk import BaseHook

    connection = await BaseHook.aget_connection(conn_id)
    getter = getattr(connection, "aextra_dejson", None)
    extra = await getter() if getter is not None else connection.extra_dejson
    return endpoint_of(conn_id, connection, extra)


def _flag(point: Endpoint, key: str, default: bool = False) -> bool:
    """A boolean extra; the UI stores JSON booleans, hand-written URIs give strings."""
    value = point.extra.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConnectionProblem(f"{point.where()}: extra {key} must be true or false, got {value!r}")


def _text(point: Endpoint, key: str) -> str | None:
    value = point.extra.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list, bool)):
        raise ConnectionProblem(f"{point.where()}: extra {key} must be a string, got {value!r}")
    return str(value)


# --------------------------------------------------------------------------- postgresql

# libpq parameters a connection's extras may set, each with the environment variable that
# carries it to pg_dump and pg_restore (libpq, "Environment Variables"). Parameters libpq
# reads from no environment variable (sslpassword, keepalives...) could not reach the
# tools, so they are not honoured anywhere rather than by half the clients.
LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "passfile": "PGPASSFILE",
}


@dataclass(frozen=True)
class PostgresParams:
    """Where and how to reach one PostgreSQL database, for psycopg and for libpq tools."""

    host: str
    port: int
    dbname: str
    user: str = ""
    password: str = field(default="", repr=False)
    # Every other libpq parameter (a key of LIBPQ_ENV), as text.
    settings: Mapping[str, str] = field(default_factory=dict)

    def with_dbname(self, dbname: str) -> PostgresParams:
        return replace(self, dbname=dbname)

    def with_defaults(self, **settings: str | int) -> PostgresParams:
        """``settings`` for what the connection does not say (its own values win)."""
        merged = {key: str(value) for key, value in settings.items()}
        return replace(self, settings={**_known(merged), **self.settings})

    def with_settings(self, **settings: str | int) -> PostgresParams:
        """``settings`` over whatever the connection says (a caller's own bound)."""
        merged = {key: str(value) for key, value in settings.items()}
        return replace(self, settings={**self.settings, **_known(merged)})

    def connect_kwargs(self) -> dict[str, Any]:
        """Keywords of ``psycopg.connect``."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": self.dbname}
        if self.user:
            kwargs["user"] = self.user
        if self.password:
            kwargs["password"] = self.password
        kwargs.update(self.settings)
        return kwargs

    def client_env(self) -> dict[str, str]:
        """libpq's environment for ``pg_dump``/``pg_restore``; the password never in argv.

        ``PGDATABASE`` is never parsed as a connection string (unlike ``-d``).
        """
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.dbname,
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }
        env.update({LIBPQ_ENV[key]: value for key, value in self.settings.items()})
        return {key: value for key, value in env.items() if value}


def _known(settings: Mapping[str, str]) -> dict[str, str]:
    unknown = sorted(set(settings) - set(LIBPQ_ENV))
    if unknown:
        raise ValueError(f"not libpq parameters opsflow passes on: {unknown}")
    return dict(settings)


def postgres_params(point: Endpoint) -> PostgresParams:
    """A postgres connection as libpq parameters: host, port, login, password, schema as
    the database (else extra ``dbname``, else ``postgres``) and the libpq extras."""
    settings = {}
    for key in LIBPQ_ENV:
        value = _text(point, key)
        if value is not None:
            settings[key] = value
    return PostgresParams(
        host=point.host or DEFAULT_HOST,
        port=point.port or POSTGRES_PORT,
        dbname=point.schema or _text(point, "dbname") or "postgres",
        user=point.login,
        password=point.password,
        settings=settings,
    )


# --------------------------------------------------------------------------- redis

# ssl_cert_reqs as the redis provider offers them; "none" skips the certificate check.
REDIS_CERT_REQS = ("required", "optional", "none")


@dataclass(frozen=True)
class RedisParams:
    """Where and how to reach one Redis server, for redis-py and for ``redis-cli``.

    TLS fields left ``None`` keep the client's own default (redis-py checks the
    certificate and the host name; ``redis-cli`` checks the certificate).
    """

    host: str
    port: int
    username: str = ""
    password: str = field(default="", repr=False)
    db: int = 0
    ssl: bool = False
    ssl_cert_reqs: str | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keywords of ``redis.Redis`` / ``redis.asyncio.Redis``."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username or None,
            "password": self.password or None,
            "db": self.db,
        }
        if self.ssl:
            kwargs["ssl"] = True
            tls = {
                "ssl_cert_reqs": self.ssl_cert_reqs,
                "ssl_ca_certs": self.ssl_ca_certs,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
                "ssl_check_hostname": self.ssl_check_hostname,
            }
            kwargs.update({key: value for key, value in tls.items() if value is not None})
        return kwargs

    def cli_argv(self, cli: str) -> list[str]:
        """``redis-cli`` bound to the server (the database is not selected: ``--rdb``
        takes them all); the password goes in :meth:`cli_env`."""
        argv = [cli, "-h", self.host, "-p", str(self.port)]
        if self.username:
            argv += ["--user", self.username]
        if self.ssl:
            argv.append("--tls")
            if self.ssl_ca_certs:
                argv += ["--cacert", self.ssl_ca_certs]
            if self.ssl_certfile:
                argv += ["--cert", self.ssl_certfile]
            if self.ssl_keyfile:
                argv += ["--key", self.ssl_keyfile]
            if self.ssl_cert_reqs == "none":
                argv.append("--insecure")
        return argv

    def cli_env(self) -> dict[str, str]:
        return {"REDISCLI_AUTH": self.password} if self.password else {}


def redis_params(point: Endpoint) -> RedisParams:
    """A redis connection: host, port, login, password, extra ``db`` (else a numeric
    schema) and the TLS extras ``ssl``, ``ssl_cert_reqs``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``."""
    db: Any = point.extra.get("db")
    if db is None and point.schema.isdigit():
        db = point.schema
    try:
        number = int(db or 0)
    except (TypeError, ValueError):
        raise ConnectionProblem(f"{point.where()}: extra db must be a number, got {db!r}") from None
    cert_reqs = _text(point, "ssl_cert_reqs")
    if cert_reqs is not None and cert_reqs.lower() not in REDIS_CERT_REQS:
        raise ConnectionProblem(
            f"{point.where()}: extra ssl_cert_reqs must be one of {', '.join(REDIS_CERT_REQS)}, "
            f"got {cert_reqs!r}"
        )
    check_hostname = (
        _flag(point, "ssl_check_hostname") if "ssl_check_hostname" in point.extra else None
    )
    return RedisParams(
        host=point.host or DEFAULT_HOST,
        port=point.port or REDIS_PORT,
        username=point.login,
        password=point.password,
        db=number,
        ssl=_flag(point, "ssl"),
        ssl_cert_reqs=cert_reqs.lower() if cert_reqs is not None else None,
        ssl_ca_certs=_text(point, "ssl_ca_certs"),
        ssl_certfile=_text(point, "ssl_certfile"),
        ssl_keyfile=_text(point, "ssl_keyfile"),
        ssl_check_hostname=check_hostname,
    )
