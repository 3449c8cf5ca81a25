"""The stack model and loader: what a valid file means, and what a person sees when it is not.

Error messages are part of the interface (they end up in DAG import errors), so the tests
assert their content: the file, the field path and the offending value.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from opsflow.stack.loader import (
    STACKS_DIR_ENV,
    StackFileError,
    load_stack,
    load_stack_file,
    parse_stack,
    resolve_working_dir,
    stack_names,
    stacks_dir,
)
from opsflow.stack.model import (
    VERSION_PATTERN,
    ComposeRuntime,
    ContainerCheck,
    HttpCheck,
    KubernetesRuntime,
    Stack,
    Version,
    parse_duration,
)

BASE: dict[str, Any] = {
    "name": "shop",
    "runtime": {"kind": "compose", "project": "shop", "working_dir": "app"},
    "services": [
        {
            "name": "api",
            "build": {"context": "."},
            "ports": ["127.0.0.1:18080:8080"],
            "health": [
                {"kind": "http", "url": "http://127.0.0.1:18080/health"},
                {"kind": "container", "service": "db"},
            ],
        },
        {
            "name": "db",
            "role": "database",
            "image": "postgres:15",
            "versioned": False,
            "health": [{"kind": "postgres", "conn_id": "shop_postgres"}],
        },
    ],
    "migration": {"tool": "alembic", "service": "api", "command": ["alembic", "upgrade", "head"]},
    "backup": {
        "local_dir": "/var/backups/shop",
        "sources": {
            "postgres": [
                {"name": "shop", "conn_id": "shop_postgres", "service": "db", "database": "shop"}
            ]
        },
    },
}


def stack_data(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """A deep copy of BASE, edited in place by ``change``."""
    data = copy.deepcopy(BASE)
    if change is not None:
        change(data)
    return data


def write(directory: Path, name: str, content: dict[str, Any] | str) -> Path:
    path = directory / f"{name}.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> str:
    with pytest.raises(StackFileError) as info:
        load_stack_file(path)
    assert info.value.path == path
    message = str(info.value)
    assert message.startswith(f"invalid stack file {path}:")
    return message


# ------------------------------------------------------------------------------ valid files


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    data = {
        "name": "mini",
        "runtime": {"kind": "compose", "project": "mini", "working_dir": "."},
        "services": [{"name": "web"}],
    }
    stack = load_stack_file(write(tmp_path, "mini", data))

    assert stack.timezone == "UTC"
    assert stack.owner == "opsflow"
    assert stack.migration is None
    assert stack.variants == []
    assert isinstance(stack.runtime, ComposeRuntime)
    assert stack.runtime.files == ["docker-compose.yml"]
    assert stack.runtime.images == "build"
    assert stack.runtime.version_variable == "OPSFLOW_VERSION"
    assert stack.services[0].role == "app"
    assert stack.services[0].versioned is True
    assert stack.health_gate.consecutive == 3
    assert stack.health_gate.interval == timedelta(seconds=5)
    assert stack.health_gate.timeout == timedelta(minutes=5)
    assert stack.backup.retention.local_days == 7
    assert stack.backup.retention.offsite_days == 30
    assert stack.backup.max_age == timedelta(hours=26)
    assert stack.logs.container_limits.required is False
    assert (stack.logs.container_limits.max_size, stack.logs.container_limits.max_file) == (
        "10m",
        3,
    )
    assert stack.schedules.backup == "0 2 * * *"
    assert stack.schedules.log_cleanup == "30 3 * * *"


def test_full_file_is_typed_and_navigable(tmp_path: Path) -> None:
    stack = load_stack_file(write(tmp_path, "shop", stack_data()))

    assert [type(c) for c in stack.checks][:2] == [HttpCheck, ContainerCheck]
    assert stack.service("db").role == "database"
    with pytest.raises(KeyError):
        stack.service("nope")
    assert stack.backup.sources.postgres[0].database == "shop"


def test_models_are_frozen() -> None:
    stack = parse_stack(stack_data(), Path("shop.yaml"))
    with pytest.raises(ValidationError):
        stack.name = "other"  # type: ignore[misc]


def test_single_expected_status_becomes_a_list() -> None:
    def change(d: dict[str, Any]) -> None:
        d["services"][0]["health"][0]["expect_status"] = 204

    stack = parse_stack(stack_data(change), Path("shop.yaml"))
    check = stack.services[0].health[0]
    assert isinstance(check, HttpCheck)
    assert check.expect_status == [204]


def test_kubernetes_variant_is_accepted_beside_compose() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variants"] = [{"kind": "kubernetes", "namespace": "shop", "deployments": ["api"]}]

    stack = parse_stack(stack_data(change), Path("shop.yaml"))
    assert isinstance(stack.runtime, ComposeRuntime)
    variant = stack.variants[0]
    assert isinstance(variant, KubernetesRuntime)
    assert (variant.namespace, variant.kube_conn_id) == ("shop", "kubernetes_default")


# ------------------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1.5)),
        ("30", timedelta(seconds=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("45s", timedelta(seconds=45)),
        (" 5m ", timedelta(minutes=5)),
        ("1.5h", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_durations_parse(value: Any, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "5 weeks", "1y", "-1s", "m5", True, None, [5]])
def test_bad_durations_name_the_value(value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_duration(value)


def test_durations_in_a_file_become_timedeltas() -> None:
    def change(d: dict[str, Any]) -> None:
        d["health_gate"] = {"interval": "2s", "timeout": 90}
        d["migration"]["timeout"] = "15m"

    stack = parse_stack(stack_data(change), Path("shop.yaml"))
    assert stack.health_gate.interval == timedelta(seconds=2)
    assert stack.health_gate.timeout == timedelta(seconds=90)
    assert stack.migration is not None
    assert stack.migration.timeout == timedelta(minutes=15)


# ------------------------------------------------------------------------------ versions


@pytest.mark.parametrize("version", ["1.4.2", "v2.0.0-rc.1", "2024_06_01", "a" * 128])
def test_good_versions(version: str) -> None:
    assert TypeAdapter(Version).validate_python(version) == version
    assert re.fullmatch(VERSION_PATTERN, version)


@pytest.mark.parametrize(
    "version", ["", "-1.0", ".hidden", "1.0; rm -rf /", "$(id)", "1.0 beta", "a/b", "a" * 129]
)
def test_versions_that_could_reach_a_shell_are_refused(version: str) -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Version).validate_python(version)
    (error,) = info.value.errors()
    assert error["type"] == "string_pattern_mismatch"
    assert error["input"] == version
    assert not re.fullmatch(VERSION_PATTERN, version)


# ------------------------------------------------------------------------------ bad values


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets a dotted path (``services.0.name``) in the data."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return change


BAD_VALUES: list[tuple[str, Callable[[dict[str, Any]], object], list[str]]] = [
    ("unknown top-level key", _set("bogus", 1), ["bogus: Extra inputs are not permitted (got 1)"]),
    (
        "unknown nested key",
        _set("services.0.imgae", "x"),
        ["services[0].imgae: Extra inputs are not permitted (got 'x')"],
    ),
    (
        "unknown key in a health check (the union tag is not in the path)",
        _set("services.0.health.0.timout", "5s"),
        ["services[0].health[0].timout: Extra inputs are not permitted (got '5s')"],
    ),
    (
        "port out of range",
        _set("services.1.health.0", {"kind": "tcp", "port": 70000}),
        ["services[1].health[0].port:", "less than or equal to 65535", "(got 70000)"],
    ),
    (
        "unknown health check kind",
        _set("services.1.health.0", {"kind": "smtp", "conn_id": "x"}),
        ["services[1].health[0]:", "'smtp'", "'http', 'tcp', 'postgres', 'redis', 'grpc'"],
    ),
    (
        "http url without scheme",
        _set("services.0.health.0.url", "127.0.0.1/health"),
        ["services[0].health[0].url:", "(got '127.0.0.1/health')"],
    ),
    (
        "bad duration",
        _set("backup.max_age", "3 weeks"),
        ["backup.max_age: not a duration", "'3 weeks'"],
    ),
    (
        "bad version variable",
        _set("runtime.version_variable", "app-version"),
        ["runtime.version_variable:", "(got 'app-version')"],
    ),
    (
        "absolute compose file",
        _set("runtime.files", ["compose.yml", "/etc/compose.yml"]),
        ["runtime.files[1]: must be a relative path", "'/etc/compose.yml'"],
    ),
    (
        "compose file outside the working dir",
        _set("runtime.files", ["../other/compose.yml"]),
        ["runtime.files[0]: must be a relative path", "'../other/compose.yml'"],
    ),
    (
        "unknown runtime kind",
        _set("runtime.kind", "nomad"),
        ["runtime:", "'nomad'"],
    ),
    (
        "migration names an unknown service",
        _set("migration.service", "ghost"),
        ["migration.service: names an unknown service", "['api', 'db']", "(got 'ghost')"],
    ),
    (
        "container check names an unknown service",
        _set("services.0.health.1.service", "cache"),
        ["services[0].health[1].service: names an unknown service", "(got 'cache')"],
    ),
    (
        "backup source names an unknown service",
        _set("backup.sources.postgres.0.service", "pg"),
        ["backup.sources.postgres[0].service: names an unknown service", "(got 'pg')"],
    ),
    (
        "duplicate services",
        _set("services.1.name", "api"),
        ["services[1].name: duplicate service name (got 'api')"],
    ),
    (
        "variant repeating the runtime kind",
        _set("variants", [{"kind": "compose", "project": "x", "working_dir": "."}]),
        ["variants[0].kind: a variant must use a runtime kind", "(got 'compose')"],
    ),
    (
        "unknown timezone",
        _set("timezone", "Mars/Olympus"),
        ["timezone: unknown timezone: 'Mars/Olympus'"],
    ),
    (
        "bad stack name",
        _set("name", "Shop_1"),
        ["name: String should match pattern", "(got 'Shop_1')"],
    ),
    (
        "service name with a space",
        _set("services.0.name", "my api"),
        ["services[0].name:", "(got 'my api')"],
    ),
    (
        "backup without destination",
        _set("backup.local_dir", None),
        ["backup: backup has sources but neither local_dir nor s3 destination"],
    ),
    (
        "log root with both path and volume",
        _set("logs", {"roots": [{"path": "/var/log/shop", "volume": "logs"}]}),
        ["logs.roots[0]: a log root needs exactly one of path or volume"],
    ),
    (
        "log pattern escaping its root",
        _set("logs", {"roots": [{"path": "/var/log/shop", "patterns": ["../*.log"]}]}),
        ["logs.roots[0].patterns[0]: a pattern must stay inside its root (got '../*.log')"],
    ),
    (
        "bad log size",
        _set("logs", {"roots": [{"path": "/var/log/shop", "max_total_size": "lots"}]}),
        ["logs.roots[0].max_total_size:", "(got 'lots')"],
    ),
    (
        "bad email address",
        _set("alerts", [{"kind": "email", "to": ["ops-at-example.com"]}]),
        ["alerts[0].to: not an email address: 'ops-at-example.com'"],
    ),
    (
        "negative retention",
        _set("backup.retention", {"local_days": 0}),
        ["backup.retention.local_days:", "(got 0)"],
    ),
    (
        "services missing",
        lambda d: d.pop("services"),
        ["services: Field required"],
    ),
    (
        "empty service list",
        _set("services", []),
        ["services: List should have at least 1 item"],
    ),
    (
        "wrong type",
        _set("services.0.ports", "8080"),
        ["services[0].ports: Input should be a valid list (got '8080')"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [pytest.param(change, expected, id=case) for case, change, expected in BAD_VALUES],
)
def test_bad_values_are_reported_with_file_path_and_value(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], expected: list[str]
) -> None:
    message = problems_of(write(tmp_path, "shop", stack_data(change)))

    assert "shop.yaml" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_missing_field_does_not_dump_the_parent() -> None:
    with pytest.raises(StackFileError) as info:
        parse_stack(stack_data(lambda d: d.pop("services")), Path("shop.yaml"))
    assert info.value.problems == ["services: Field required"]


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["timezone"] = "Nowhere/City"
        d["services"][0]["health"][0]["timeout"] = "soon"
        d["logs"] = {"container_limits": {"max_file": 0}}

    path = write(tmp_path, "shop", stack_data(change))
    with pytest.raises(StackFileError) as info:
        load_stack_file(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any(p.startswith("timezone:") and "'Nowhere/City'" in p for p in problems)
    assert any(p.startswith("services[0].health[0].timeout:") and "'soon'" in p for p in problems)
    assert any(p.startswith("logs.container_limits.max_file:") for p in problems)
    for problem in problems:
        assert f"  - {problem}" in str(info.value)


def test_long_values_are_shortened() -> None:
    with pytest.raises(StackFileError) as info:
        parse_stack(stack_data(_set("description", ["x" * 500])), Path("shop.yaml"))
    (problem,) = info.value.problems
    assert problem.startswith("description: Input should be a valid string (got ['xxx")
    assert problem.endswith("...)")
    assert len(problem) < 300


# ------------------------------------------------------------------------------ file-level


def test_name_must_match_the_file_name(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "store", stack_data()))
    assert "store.yaml" in message
    assert "name: must equal the file name 'store' (got 'shop')" in message


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "shop", "name: shop\nservices:\n  - name: [api\n")
    message = problems_of(path)
    assert "not valid YAML" in message
    assert re.search(r"line \d+", message), message


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(stack_data(), sort_keys=False) + "name: shop\n"
    message = problems_of(write(tmp_path, "shop", text))
    assert "not valid YAML" in message
    assert "found duplicate key 'name'" in message


def test_unhashable_yaml_key_is_a_yaml_error(tmp_path: Path) -> None:
    message = problems_of(write(tmp_path, "shop", "? [a, b]\n: 1\n"))
    assert "not valid YAML" in message
    assert "unhashable key" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- name: shop\n", "(top level): expected a mapping, got list"),
        ("just a string\n", "(top level): expected a mapping, got str"),
        ("42\n", "(top level): expected a mapping, got int"),
        ("# only a comment\n", "(top level): the file is empty"),
    ],
)
def test_non_mapping_file(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems_of(write(tmp_path, "shop", text))


def test_missing_file_is_a_stack_file_error(tmp_path: Path) -> None:
    message = problems_of(tmp_path / "ghost.yaml")
    assert "ghost.yaml" in message
    assert "cannot read" in message


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    text = "name: !!python/object/apply:os.system ['true']\n"
    assert "not valid YAML" in problems_of(write(tmp_path, "shop", text))


# ------------------------------------------------------------------------------ directory


def test_stacks_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STACKS_DIR_ENV, str(tmp_path))
    write(tmp_path, "shop", stack_data())
    (tmp_path / "notes.txt").write_text("not a stack")

    assert stacks_dir() == tmp_path
    assert stack_names() == ["shop"]
    stack = load_stack("shop")
    assert stack.name == "shop"
    # A relative working dir is taken from the stack file's directory.
    assert resolve_working_dir(stack) == (tmp_path / "app").resolve()


def test_default_stacks_dir_is_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STACKS_DIR_ENV, raising=False)
    assert stacks_dir() == Path(__file__).resolve().parents[2] / "include" / "stacks"


def test_a_broken_file_does_not_prevent_loading_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STACKS_DIR_ENV, str(tmp_path))
    write(tmp_path, "shop", stack_data())
    write(tmp_path, "broken", "name: broken\nservices: [\n")
    write(tmp_path, "invalid", stack_data(_set("name", "invalid")) | {"timezone": "Nope/Nope"})

    loaded: dict[str, Stack] = {}
    errors: dict[str, StackFileError] = {}
    for name in stack_names():
        try:
            loaded[name] = load_stack(name)
        except StackFileError as exc:
            errors[name] = exc

    assert sorted(loaded) == ["shop"]
    assert sorted(errors) == ["broken", "invalid"]
    assert errors["broken"].path == tmp_path / "broken.yaml"
    assert "not valid YAML" in str(errors["broken"])
    assert errors["invalid"].path == tmp_path / "invalid.yaml"
    assert errors["invalid"].problems == ["timezone: unknown timezone: 'Nope/Nope'"]
