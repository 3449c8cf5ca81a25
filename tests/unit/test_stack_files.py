"""Every stack file shipped in include/stacks validates, and the five real systems say
what their deployment guides say.

The parametrization globs the directory, so a new stack file is covered without editing
this test.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from opsflow.health import ContainerCheck, GrpcCheck, HttpCheck, PostgresCheck, RedisCheck, TcpCheck
from opsflow.stack.loader import load_stack, load_stack_file, parse_stack, stack_names
from opsflow.stack.model import ComposeRuntime, KubernetesRuntime, Stack
from opsflow.stack.safety import ALLOWED_ROOTS_ENV, DEFAULT_ALLOWED_ROOTS

STACKS_DIR = Path(__file__).resolve().parents[2] / "include" / "stacks"
STACK_FILES = sorted(STACKS_DIR.glob("*.yaml"))
REAL_SYSTEMS = ["ai-doc", "backend2", "echomind", "kratos", "weknora"]


def test_the_directory_holds_the_five_real_systems() -> None:
    assert set(REAL_SYSTEMS) <= {path.stem for path in STACK_FILES}
    assert set(REAL_SYSTEMS) <= set(stack_names(STACKS_DIR))


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda path: path.stem)
def test_stack_file_validates_and_is_named_after_its_file(path: Path) -> None:
    stack = load_stack_file(path)
    assert stack.name == path.stem
    assert load_stack(path.stem, STACKS_DIR) == stack


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda path: path.stem)
def test_stack_file_touches_only_what_it_owns_by_default(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default allow-list, every log root, backup dir and config file of a shipped
    stack lies in its working dir, its volumes or the default allowed roots."""
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)
    stack = load_stack_file(path)
    owned = (f"{stack.runtime.working_dir}/", *(f"{root}/" for root in DEFAULT_ALLOWED_ROOTS))
    if stack.backup.local_dir:
        assert stack.backup.local_dir.startswith(owned)
    for root in stack.logs.roots:
        if root.volume:
            assert isinstance(stack.runtime, ComposeRuntime)
            assert root.volume.startswith(f"{stack.runtime.project}_")


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda path: path.stem)
def test_stack_file_keeps_secrets_in_connections(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # No credentials in URLs and no password-like keys: they belong in Airflow connections.
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)
    assert not re.search(r"^\s*[\w-]*(password|secret|token|api_key)[\w-]*\s*:", text, re.I | re.M)
    stack = load_stack_file(path)
    for check in stack.checks:
        if isinstance(check, HttpCheck):
            assert not urlsplit(check.url).password


# ------------------------------------------------------------------------------ real systems


def _real(name: str) -> Stack:
    return load_stack_file(STACKS_DIR / f"{name}.yaml")


def _host_ports(stack: Stack) -> set[int]:
    """Host-side TCP ports the services publish (``[ip:]host:container[/proto]``)."""
    ports: set[int] = set()
    for service in stack.services:
        for mapping in service.ports:
            spec, _, proto = mapping.partition("/")
            if proto and proto != "tcp":
                continue
            parts = spec.split(":")
            ports.add(int(parts[-2] if len(parts) >= 2 else parts[-1]))
    return ports


def _checked_ports(stack: Stack) -> set[int]:
    ports: set[int] = set()
    for check in stack.checks:
        # Checks by service endpoint find their port through the runtime: nothing to match.
        if isinstance(check, HttpCheck) and check.url:
            url = urlsplit(check.url)
            ports.add(url.port or (443 if url.scheme == "https" else 80))
        elif isinstance(check, TcpCheck) and check.port:
            ports.add(check.port)
        elif isinstance(check, GrpcCheck) and check.target:
            ports.add(int(check.target.rsplit(":", 1)[1]))
    return ports


@pytest.mark.parametrize("name", REAL_SYSTEMS)
def test_real_system_is_complete(name: str) -> None:
    stack = _real(name)
    text = (STACKS_DIR / f"{name}.yaml").read_text(encoding="utf-8")

    assert text.startswith("#"), "the file starts with a comment naming its source guide"
    assert "Source:" in text.split("\nname:")[0]
    assert isinstance(stack.runtime, ComposeRuntime)
    # Every port a check probes is one the stack publishes (catches a typo in either).
    assert _checked_ports(stack) <= _host_ports(stack)
    # Every service is checked, databases through an Airflow connection.
    for service in stack.services:
        assert service.health, f"{service.name} has no health check"
        if service.role == "database" and service.image and "neo4j" not in service.image:
            assert any(isinstance(c, PostgresCheck) for c in service.health), service.name
        if service.role == "cache":
            assert any(isinstance(c, RedisCheck) for c in service.health), service.name
    # Nightly backup of every PostgreSQL database, restored through the same connection.
    assert stack.backup.sources.postgres
    assert stack.backup.local_dir
    postgres_conns = {c.conn_id for c in stack.checks if isinstance(c, PostgresCheck)}
    assert {s.conn_id for s in stack.backup.sources.postgres} <= postgres_conns
    assert stack.backup.retention.local_days == 7
    assert stack.alerts


def test_echomind() -> None:
    stack = _real("echomind")
    assert isinstance(stack.runtime, ComposeRuntime)
    assert stack.runtime.images == "pull"
    assert stack.runtime.files == ["deploy/docker-compose.prod.yml"]
    assert "6380:6379" in stack.service("redis").ports
    backend = stack.service("server").health[0]
    assert isinstance(backend, HttpCheck) and backend.path == "/health"
    assert backend.endpoint is not None
    assert (backend.endpoint.service, backend.endpoint.port) == ("server", 8080)
    assert [(c.file, c.example) for c in stack.runtime.config_from_examples] == [
        ("backend/configs/config.yaml", "backend/configs/config.example.yaml"),
        ("backend/configs/logger.yaml", "backend/configs/logger.example.yaml"),
    ]
    assert stack.backup.sources.postgres[0].database == "echomind_db"
    assert stack.backup.sources.redis
    (root,) = stack.logs.roots
    assert root.delete_after_days == 30
    assert stack.migration is not None and stack.migration.service == "server"


def test_kratos() -> None:
    stack = _real("kratos")
    app = stack.service("app")
    assert app.ports == ["8000:8000", "9000:9000"]
    healthz = app.health[0]
    assert isinstance(healthz, HttpCheck) and healthz.path == "/healthz"
    assert healthz.endpoint is not None and (healthz.endpoint.service, healthz.endpoint.port) == (
        "app", 8000,
    )  # fmt: skip
    assert healthz.expect_status == [200]
    assert stack.migration is not None and stack.migration.service == "app"
    assert stack.service("db").image == "postgres:14"
    assert stack.backup.sources.postgres[0].major_version == 14


def test_ai_doc() -> None:
    stack = _real("ai-doc")
    assert stack.schedules.backup == "0 2 * * *"
    assert stack.timezone == "Asia/Shanghai"
    assert stack.backup.s3 is not None
    assert (stack.backup.retention.local_days, stack.backup.retention.offsite_days) == (7, 30)
    assert stack.migration is not None and stack.migration.tool == "sql-init"
    assert {s.name for s in stack.services} >= {"nginx", "backend", "backend2", "python-parser"}
    gateway = [c for c in stack.service("nginx").health if isinstance(c, HttpCheck)]
    assert gateway[0].expect_json == {"status": "healthy"}
    (variant,) = stack.variants
    assert isinstance(variant, KubernetesRuntime)
    assert variant.namespace == "ai-doc"
    assert variant.workloads == {"backend": "ai-doc-backend", "backend2": "ai-doc-backend"}
    nginx_logs = stack.logs.roots[0]
    assert (nginx_logs.compress_after_days, nginx_logs.delete_after_days) == (1, 14)


def test_backend2() -> None:
    stack = _real("backend2")
    assert stack.migration is not None
    assert (stack.migration.tool, stack.migration.service) == ("alembic", "api")
    assert stack.migration.command == ["alembic", "upgrade", "head"]
    workers = [s.name for s in stack.services if s.role == "worker"]
    assert workers == ["worker-standard", "worker-lumina"]
    assert all(isinstance(c, ContainerCheck) for w in workers for c in stack.service(w).health)
    assert stack.backup.sources.postgres[0].database == "backend"
    assert stack.backup.sources.redis
    (variant,) = stack.variants
    assert isinstance(variant, KubernetesRuntime)
    assert variant.workloads == {"api": "backend-api", "worker-standard": "backend-worker-standard"}


def test_weknora() -> None:
    stack = _real("weknora")
    limits = stack.logs.container_limits
    assert (limits.required, limits.max_size, limits.max_file) == (True, "10m", 3)
    assert stack.migration is not None and stack.migration.tool == "golang-migrate"
    assert stack.migration.command[-1] == "up"
    docreader = [c for c in stack.service("docreader").health if isinstance(c, GrpcCheck)]
    assert docreader and docreader[0].endpoint is not None
    assert (docreader[0].endpoint.service, docreader[0].endpoint.port) == ("docreader", 50051)
    # The guide's upgrade: `docker-compose down` before the new images start.
    assert isinstance(stack.runtime, ComposeRuntime) and stack.runtime.down_before_upgrade
    assert stack.backup.sources.buckets, "MinIO is mirrored"
    assert "config/config.yaml" in stack.backup.sources.files
    assert stack.backup.s3 is not None
    assert stack.backup.sources.postgres[0].major_version == 17


def test_the_documented_example_is_a_valid_stack_file() -> None:
    """docs/stack-file.md's complete example stays in step with the model."""
    doc = (STACKS_DIR.parents[1] / "docs" / "stack-file.md").read_text(encoding="utf-8")
    section = doc.split("## A complete example", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    stack = parse_stack(yaml.safe_load(example), Path("shop.yaml"))

    assert stack.name == "shop"
    assert [s.name for s in stack.services] == ["api", "worker", "db", "cache"]
    # Every optional section is exercised, so a renamed field breaks this test.
    assert stack.backup.s3 and stack.backup.sources.buckets and stack.logs.roots[1].volume
    assert {route.kind for route in stack.alerts} == {"slack", "email", "webhook"}
