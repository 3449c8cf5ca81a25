"""Typed model of a stack file (``include/stacks/<name>.yaml``).

This module is the plain layer between YAML and Airflow objects: it imports no Airflow
code, so it is cheap to import at DAG-parse time and testable on its own. Every model
forbids unknown keys, so a typo in a stack file is an error rather than a silent default.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from opsflow.connections import ConnId
from opsflow.durations import Duration
from opsflow.health import ContainerCheck, HealthCheck

STACK_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$"
# Release versions end up in image tags and in argv; the same pattern guards the
# trigger form, so anything that could be read by a shell is refused early.
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# The same rule for the trigger form's JSON schema. Its validators search with ``$``, which
# also matches before a trailing newline; the lookahead means "end of input" in both the
# browser's (ECMA) and Python's regex dialects.
PARAM_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?![\s\S])"


def check_version(version: str) -> str:
    """Refuse anything but letters, digits, ``.``, ``_``, ``-`` (the trigger form's rule):
    a release version ends up in image tags and argv, and as a directory name."""
    if not isinstance(version, str) or not re.fullmatch(VERSION_PATTERN, version):
        raise ValueError(f"invalid version {version!r}: use letters, digits, '.', '_' and '-' only")
    return version


def known_timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone: {value!r}") from None
    return value


# Docker's image reference grammar (github.com/distribution/reference, regexp.go):
# [domain[:port]/]path-component[/path-component...][:tag][@digest], path lower case.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
_NAME_MAX = 255


def _image_reference(value: str) -> str:
    found = _IMAGE_REFERENCE.fullmatch(value) if len(value) <= 512 else None
    if found is None or len(found.group("name")) > _NAME_MAX:
        raise ValueError(
            "not a Docker image reference ([registry[:port]/]name[:tag][@digest]; the name "
            "in lower case, no spaces or options)"
        )
    return value


_PORT_RANGE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?", re.ASCII)
_PORT_SYNTAX = (
    "[[ip:]host:]container[/tcp|udp|sctp], e.g. '127.0.0.1:8080:80' or '9000-9001:9000-9001'"
)


def _port_range(text: str) -> tuple[int, int] | None:
    found = _PORT_RANGE.fullmatch(text)
    if found is None:
        return None
    low = int(found.group(1))
    high = int(found.group(2) or low)
    return (low, high) if 1 <= low <= high <= 65535 else None


def _split_port(body: str) -> tuple[str | None, str | None, str] | None:
    """``(ip, host, container)`` of ``[ip:][host:]container`` (IPv6 bracketed or bare)."""
    if body.startswith("["):  # [::1]:8080:80
        close = body.find("]")
        rest = body[close + 1 :]
        pieces = rest[1:].split(":")
        if close < 0 or not rest.startswith(":") or len(pieces) != 2:
            return None
        return body[1:close], pieces[0], pieces[1]
    parts = body.split(":")
    if len(parts) <= 2:
        return None, parts[0] if len(parts) == 2 else None, parts[-1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _compose_port(spec: str) -> str:
    """A published port in Compose's short syntax (what ``docker compose`` accepts)."""
    body, slash, protocol = spec.partition("/")
    split = _split_port(body)
    valid = split is not None and (not slash or protocol in ("tcp", "udp", "sctp"))
    if split is not None and valid:
        ip, host, container = split
        inner = _port_range(container)
        outer = _port_range(host) if host else None
        # "127.0.0.1::80": an address with a random host port.
        valid = inner is not None and (host is None or outer is not None or (not host and bool(ip)))
        if valid and ip is not None:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                valid = False
        if valid and inner and outer and inner[0] != inner[1]:
            # A container range needs a host range of the same length.
            valid = outer[1] - outer[0] == inner[1] - inner[0]
    if not valid:
        raise ValueError(f"not a Compose port ({_PORT_SYNTAX})")
    return spec


def _specific_pattern(pattern: str) -> str:
    """A ``down_safe_for`` glob must name something: ``*``, ``?*`` or ``[0-9]*`` name all."""
    literal = re.sub(r"\[[^\]]*\]", "", pattern).replace("*", "").replace("?", "")
    if not literal:
        raise ValueError(
            "matches every version; a pattern needs at least one literal character (e.g. '2.4.*')"
        )
    return pattern


Version = Annotated[str, Field(pattern=VERSION_PATTERN)]
Argv = Annotated[list[str], Field(min_length=1)]
ImageReference = Annotated[str, AfterValidator(_image_reference)]
ComposePort = Annotated[str, AfterValidator(_compose_port)]
VersionPattern = Annotated[str, AfterValidator(_specific_pattern)]


class Strict(BaseModel):
    """Base of every stack-file model: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"must be a relative path inside the stack's working dir: {value!r}")
    return value


RelativePath = Annotated[str, AfterValidator(_relative_path)]


def _absolute_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path: {value!r}")
    if ".." in path.parts:
        raise ValueError(f"must not contain '..': {value!r}")
    return value


def _no_parent(value: str) -> str:
    if not value or ".." in PurePosixPath(value).parts:
        raise ValueError(f"must be a path without '..': {value!r}")
    return value


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
PlainPath = Annotated[str, AfterValidator(_no_parent)]


def stack_rule_error(path: str, message: str, value: Any) -> PydanticCustomError:
    """A cross-field rule broken at ``path``; the loader reports it under that path.

    Model validators only know the whole stack, so without this the error would be
    reported at the top level with the entire file as its value.
    """
    return PydanticCustomError(
        "stack_rule", "{message}", {"path": path, "message": message, "value": value}
    )


# --------------------------------------------------------------------------- runtimes


class ConfigFromExample(Strict):
    """A config file a system ships only as an example (``cp config.example.yaml
    config.yaml``): it must exist before the release starts, and once it exists it is the
    operator's (edited, holding secrets), so it is created once and never overwritten."""

    file: RelativePath
    example: RelativePath

    @model_validator(mode="after")
    def _distinct(self) -> ConfigFromExample:
        if PurePosixPath(self.file) == PurePosixPath(self.example):
            raise stack_rule_error("example", "must be another file than `file`", self.example)
        return self


class ComposeRuntime(Strict):
    """A Docker Compose v2 project driven through the ``docker compose`` CLI."""

    kind: Literal["compose"]
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    working_dir: str = Field(description="relative to the stack file, or absolute")
    files: list[RelativePath] = Field(default_factory=lambda: ["docker-compose.yml"], min_length=1)
    env_file: PlainPath | None = None
    images: Literal["build", "pull"] = "build"
    version_variable: str = Field(default="OPSFLOW_VERSION", pattern=r"^[A-Z_][A-Z0-9_]*$")
    config_from_examples: list[ConfigFromExample] = Field(default_factory=list)
    # A guide whose upgrade starts with `docker-compose down`: the running release's
    # containers go (volumes stay) after the pre-upgrade backup, before the migration.
    down_before_upgrade: bool = False


class KubernetesRuntime(Strict):
    """A stack on a Kubernetes cluster, reached through the cncf-kubernetes provider's
    connection (kubeconfig or in-cluster)."""

    kind: Literal["kubernetes"]
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    kube_conn_id: ConnId = "kubernetes_default"
    working_dir: str = Field(default=".", description="relative to the stack file, or absolute")
    # Manifest files, or directories of them (their *.yaml/*.yml, by name), in the working
    # dir: together they are one release, rendered with the release's image tags.
    manifests: list[RelativePath] = Field(min_length=1)
    field_manager: str = Field(default="opsflow", pattern=r"^[a-z0-9][a-z0-9.-]{0,127}$")
    # Service -> its Deployment or StatefulSet, where the names differ.
    workloads: dict[str, str] = Field(default_factory=dict)
    # The image of the pods opsflow runs on the stack's claims (log cleanup of
    # ``logs.roots[].claim``, a Redis restore): any image with Python 3.10 or later; the
    # cluster's nodes pull it.
    claim_pod_image: ImageReference = "docker.io/library/python:3.12-slim-bookworm"
    claim_pod_timeout: Duration = timedelta(minutes=30)


Runtime = Annotated[ComposeRuntime | KubernetesRuntime, Field(discriminator="kind")]


# --------------------------------------------------------------------------- health


class HealthGate(Strict):
    """Stack-level gate: pass after ``consecutive`` all-green rounds, fail after ``timeout``."""

    consecutive: int = Field(default=3, ge=1, le=100)
    interval: Duration = timedelta(seconds=5)
    timeout: Duration = timedelta(minutes=5)


# --------------------------------------------------------------------------- services


class BuildSpec(Strict):
    context: str
    dockerfile: str | None = None


class Service(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    role: Literal[
        "app", "worker", "gateway", "frontend", "database", "cache", "object_store", "other"
    ] = "app"
    # Image repository without tag; the runtime tags it with the release version.
    image: ImageReference | None = None
    build: BuildSpec | None = None
    # Whether the image follows the release version (app code) or is pinned (postgres:15).
    versioned: bool = True
    ports: list[ComposePort] = Field(default_factory=list)
    health: list[HealthCheck] = Field(default_factory=list)
    # Services stopped while a restore rewrites the data they write.
    writes_data: bool = False


class Migration(Strict):
    """A one-off container of the release's image that brings the schema to the release."""

    tool: Literal["alembic", "golang-migrate", "yoyo", "sql-init", "custom"]
    service: str
    command: Argv
    # Command that undoes the release's migrations, when it is safe to use.
    down_command: list[str] | None = None
    # New-release versions (glob patterns) whose down_command is safe to run on rollback;
    # empty: a rollback across a migration always restores the pre-upgrade backup.
    down_safe_for: list[VersionPattern] = []
    timeout: Duration = timedelta(minutes=10)


# --------------------------------------------------------------------------- backups


SOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# The files source (compose files, env file, stack file, listed config paths) of every backup.
CONFIG_SOURCE = "config"


class PostgresSource(Strict):
    """One database, dumped with ``pg_dump -Fc`` and restored into a scratch server."""

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    conn_id: ConnId
    service: str | None = None
    database: str
    major_version: int | None = Field(default=None, ge=9, le=30)
    # Directory holding pg_dump/pg_restore; default: the newest /usr/lib/postgresql/*/bin.
    client_bin_dir: str | None = None
    # Image of the scratch server for restore verification; default: the service's image.
    verify_image: ImageReference | None = None


class RedisSource(Strict):
    """One Redis server, saved as an RDB snapshot."""

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    conn_id: ConnId
    service: str | None = None
    # Image of the scratch server that loads the RDB; default: the service's image, or the
    # host's redis-server when there is no service.
    verify_image: ImageReference | None = None


class BucketSource(Strict):
    """One S3-compatible bucket (MinIO in the seeds), mirrored with per-object checksums."""

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    conn_id: ConnId
    bucket: str
    prefix: str = ""


class BackupSources(Strict):
    postgres: list[PostgresSource] = Field(default_factory=list)
    redis: list[RedisSource] = Field(default_factory=list)
    buckets: list[BucketSource] = Field(default_factory=list)
    # Config files beyond the compose files, env file and stack file (always included).
    files: list[PlainPath] = Field(default_factory=list)


class S3Destination(Strict):
    """Offsite copy; the connection's ``endpoint_url`` extra allows any S3-compatible store."""

    conn_id: ConnId = "aws_default"
    bucket: str
    prefix: str = ""
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = None


class Retention(Strict):
    local_days: int = Field(default=7, ge=1)
    offsite_days: int = Field(default=30, ge=1)
    keep_last_verified: int = Field(default=3, ge=1)


class Backup(Strict):
    local_dir: AbsolutePath | None = None
    s3: S3Destination | None = None
    compression_level: int = Field(default=3, ge=1, le=19)
    retention: Retention = Retention()
    max_age: Duration = timedelta(hours=26)
    # Restore-verify every scheduled backup (a manual run can switch it off).
    verify: bool = True
    sources: BackupSources = BackupSources()

    @model_validator(mode="after")
    def _has_destination(self) -> Backup:
        has_sources = any(
            (self.sources.postgres, self.sources.redis, self.sources.buckets, self.sources.files)
        )
        if has_sources and not (self.local_dir or self.s3):
            raise ValueError("backup has sources but neither local_dir nor s3 destination")
        names = [source.name for source in self.database_sources] + [CONFIG_SOURCE]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"backup source names must be unique (and {CONFIG_SOURCE!r} is reserved "
                f"for the config files): {duplicates}"
            )
        return self

    @property
    def database_sources(self) -> list[PostgresSource | RedisSource | BucketSource]:
        return [*self.sources.postgres, *self.sources.redis, *self.sources.buckets]

    @property
    def enabled(self) -> bool:
        return bool(self.local_dir or self.s3)


# --------------------------------------------------------------------------- logs


class LogRoot(Strict):
    """A directory of log files: a host path, the host path of a named volume, or a
    PersistentVolumeClaim of a Kubernetes stack (cleaned through a pod that mounts it)."""

    # Absolute, or relative to the runtime's working dir (a checkout's ``logs/``), so a
    # stack file stays right on a machine where the checkout lives elsewhere.
    path: PlainPath | None = None
    # Docker volume names; a stack may only name its compose project's (``<project>_...``).
    volume: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    # A claim in the stack's namespace that the stack's objects own (checked at run time,
    # against the cluster, before a pod mounts it).
    claim: str | None = Field(
        default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    subdir: str = ""
    patterns: list[str] = Field(default_factory=lambda: ["*.log"], min_length=1)
    compress_after_days: int | None = Field(default=None, ge=0)
    delete_after_days: int | None = Field(default=None, ge=0)
    # Files an application rotates itself (RotatingFileHandler's app.log.1 ... app.log.10)
    # are never compressed here; without this, delete_after_days would never reach them.
    delete_uncompressed: bool = False
    max_total_size: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?\s*[KMGT]?i?B?$")
    compression: Literal["gzip", "zstd"] = "gzip"
    min_age_minutes: int = Field(default=10, ge=0)

    @model_validator(mode="after")
    def _one_location(self) -> LogRoot:
        if sum(where is not None for where in (self.path, self.volume, self.claim)) != 1:
            raise ValueError("a log root needs exactly one of path, volume or claim")
        subdir = PurePosixPath(self.subdir)
        if self.subdir and (subdir.is_absolute() or ".." in subdir.parts):
            raise stack_rule_error(
                "subdir",
                "must be a relative path inside its volume or path, without '..'",
                self.subdir,
            )
        for index, pattern in enumerate(self.patterns):
            if ".." in PurePosixPath(pattern).parts or pattern.startswith("/"):
                raise stack_rule_error(
                    f"patterns[{index}]", "a pattern must stay inside its root", pattern
                )
        if self.delete_uncompressed and self.delete_after_days is None:
            raise stack_rule_error(
                "delete_uncompressed",
                "needs delete_after_days (the age after which plain files are deleted)",
                self.delete_uncompressed,
            )
        return self


class ContainerLogLimits(Strict):
    required: bool = False
    max_size: str = Field(default="10m", pattern=r"^\d+[kmg]?$")
    max_file: int = Field(default=3, ge=1)


class Logs(Strict):
    roots: list[LogRoot] = Field(default_factory=list)
    container_limits: ContainerLogLimits = ContainerLogLimits()
    keep_images_releases: int = Field(default=3, ge=2)


# --------------------------------------------------------------------------- alerts


class SlackRoute(Strict):
    """Slack incoming webhook; the URL is the password of an Airflow connection."""

    kind: Literal["slack"]
    conn_id: ConnId
    channel: str | None = None


class EmailRoute(Strict):
    kind: Literal["email"]
    conn_id: ConnId = "smtp_default"
    to: list[str] = Field(min_length=1)

    @field_validator("to")
    @classmethod
    def _emails(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
                raise ValueError(f"not an email address: {address!r}")
        return addresses


class WebhookRoute(Strict):
    """Generic JSON POST to the URL of an Airflow HTTP connection."""

    kind: Literal["webhook"]
    conn_id: ConnId


AlertRoute = Annotated[SlackRoute | EmailRoute | WebhookRoute, Field(discriminator="kind")]


# --------------------------------------------------------------------------- schedules


class Schedules(Strict):
    """Cron expressions (or presets like ``@daily``) in the stack's timezone; null = manual.

    Deploy and upgrade are always manual: they need a version chosen by a person.
    """

    backup: str | None = "0 2 * * *"
    log_cleanup: str | None = "30 3 * * *"


# --------------------------------------------------------------------------- placement

# Queue names reach Airflow's executors and the edge worker's ``--queues`` argument.
QUEUE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Placement(Strict):
    """Where every task of the stack's DAGs runs: an edge worker on the stack's own host.

    Commands, dumps, log cleanup and Docker access happen there, so backups stream from
    its disks and log roots are its paths. Its health gates and waits run in that worker
    too (never in the central triggerer, which cannot reach the host's services).
    """

    queue: str = Field(pattern=QUEUE_PATTERN)
    executor: Literal["EdgeExecutor"] = "EdgeExecutor"


# --------------------------------------------------------------------------- stack


class Stack(Strict):
    name: str = Field(pattern=STACK_NAME_PATTERN)
    description: str = ""
    owner: str = "opsflow"
    timezone: str = "UTC"
    tags: list[str] = Field(default_factory=list)
    runtime: Runtime
    # Other runtimes the same stack is described for (ai-doc and Backend2 also ship
    # Kubernetes manifests). Recorded and validated; the workflows operate ``runtime``,
    # or the variant of the kind ``variant`` names (an overlay file selects it).
    variants: list[Runtime] = Field(default_factory=list)
    variant: Literal["compose", "kubernetes"] | None = None
    services: list[Service] = Field(min_length=1)
    migration: Migration | None = None
    health_gate: HealthGate = HealthGate()
    backup: Backup = Backup()
    logs: Logs = Logs()
    alerts: list[AlertRoute] = Field(default_factory=list)
    schedules: Schedules = Schedules()
    # None: tasks run where Airflow's default executor runs them (one machine).
    placement: Placement | None = None

    _known_timezone = field_validator("timezone")(known_timezone)

    @model_validator(mode="before")
    @classmethod
    def _select_variant(cls, data: Any) -> Any:
        """``variant: kubernetes`` makes the variant of that kind the operated runtime (the
        one it replaces becomes a variant), so one overlay line selects it."""
        if not isinstance(data, dict) or data.get("variant") is None:
            return data
        wanted, runtime = data["variant"], data.get("runtime")
        if isinstance(runtime, dict) and runtime.get("kind") == wanted:
            return data
        given = data.get("variants")
        variants: list[Any] = given if isinstance(given, list) else []
        found = [
            i for i, v in enumerate(variants) if isinstance(v, dict) and v.get("kind") == wanted
        ]
        if not found:
            kinds = [v.get("kind") for v in variants if isinstance(v, dict)]
            raise stack_rule_error(
                "variant", f"no variant of that kind is described (variants: {kinds})", wanted
            )
        swapped = [runtime if i == found[0] else v for i, v in enumerate(variants)]
        return {**data, "runtime": variants[found[0]], "variants": swapped}

    @model_validator(mode="after")
    def _references(self) -> Stack:
        seen: set[str] = set()
        for index, service in enumerate(self.services):
            if service.name in seen:
                raise stack_rule_error(
                    f"services[{index}].name", "duplicate service name", service.name
                )
            seen.add(service.name)
        referenced: list[tuple[str, str | None]] = []
        if self.migration:
            referenced.append(("migration.service", self.migration.service))
        for index, service in enumerate(self.services):
            for number, check in enumerate(service.health):
                where = f"services[{index}].health[{number}]"
                if isinstance(check, ContainerCheck):
                    referenced.append((f"{where}.service", check.service))
                endpoint = getattr(check, "endpoint", None)
                if endpoint is not None:
                    referenced.append((f"{where}.endpoint.service", endpoint.service))
        sources = self.backup.sources
        for index, database in enumerate(sources.postgres):
            referenced.append((f"backup.sources.postgres[{index}].service", database.service))
        for index, cache in enumerate(sources.redis):
            referenced.append((f"backup.sources.redis[{index}].service", cache.service))
        for where, name in referenced:
            if name is not None and name not in seen:
                raise stack_rule_error(
                    where, f"names an unknown service (known: {sorted(seen)})", name
                )
        for index, root in enumerate(self.logs.roots):
            if root.claim is not None and not isinstance(self.runtime, KubernetesRuntime):
                raise stack_rule_error(
                    f"logs.roots[{index}].claim",
                    "a claim log root needs the kubernetes runtime",
                    root.claim,
                )
            if root.volume is None:
                continue
            where = f"logs.roots[{index}].volume"
            if not isinstance(self.runtime, ComposeRuntime):
                raise stack_rule_error(
                    where, "a volume log root needs the compose runtime", root.volume
                )
            if not root.volume.startswith(f"{self.runtime.project}_"):
                raise stack_rule_error(
                    where,
                    "must be a named volume of the stack's compose project, named "
                    f"'{self.runtime.project}_<name>'",
                    root.volume,
                )
        kinds = [self.runtime.kind]
        for index, variant in enumerate(self.variants):
            if variant.kind in kinds:
                raise stack_rule_error(
                    f"variants[{index}].kind",
                    "a variant must use a runtime kind not already described",
                    variant.kind,
                )
            kinds.append(variant.kind)
        return self

    @property
    def checks(self) -> list[HealthCheck]:
        """Every health check of every service, in file order."""
        return [check for service in self.services for check in service.health]

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


class AirflowMaintenance(Strict):
    """Housekeeping of Airflow itself (``include/airflow-maintenance.yaml``)."""

    name: Literal["airflow"] = "airflow"
    owner: str = "opsflow"
    timezone: str = "UTC"
    # Task logs and DAG-processor logs older than this are deleted.
    log_retention_days: int = Field(default=30, ge=1)
    log_cleanup_schedule: str | None = "15 4 * * *"
    # Metadata DB rows older than this go with ``scripts/airflow-db-clean`` (outside tasks).
    db_retention_days: int = Field(default=90, ge=1)
    alerts: list[AlertRoute] = Field(default_factory=list)

    _known_timezone = field_validator("timezone")(known_timezone)
