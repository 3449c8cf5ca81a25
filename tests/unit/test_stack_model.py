"""The stack model and loader: what a valid file means, and what a person sees when it is not.

Error messages are part of the interface (they end up in DAG import errors), so the tests
assert their content: the file, the field path and the offending value.
"""

from __future__ import annotations

import copy
import re
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from opsflow.durations import parse_duration
from opsflow.health import ContainerCheck, HttpCheck
from opsflow.stack.loader import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_PROBLEM_CHARS,
    MAX_PROBLEMS,
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
    KubernetesRuntime,
    Stack,
    Version,
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
        "local_dir": "/var/backups/opsflow/shop",
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


KUBE_VARIANT = {"kind": "kubernetes", "namespace": "shop", "manifests": ["k8s"]}


def test_kubernetes_variant_is_accepted_beside_compose() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variants"] = [dict(KUBE_VARIANT)]

    stack = parse_stack(stack_data(change), Path("shop.yaml"))
    assert isinstance(stack.runtime, ComposeRuntime)
    variant = stack.variants[0]
    assert isinstance(variant, KubernetesRuntime)
    assert (variant.namespace, variant.kube_conn_id) == ("shop", "kubernetes_default")
    assert (variant.working_dir, variant.field_manager) == (".", "opsflow")


def test_variant_selects_the_operated_runtime() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variants"] = [dict(KUBE_VARIANT)]
        d["variant"] = "kubernetes"

    stack = parse_stack(stack_data(change), Path("shop.yaml"))
    assert isinstance(stack.runtime, KubernetesRuntime)
    assert stack.runtime.manifests == ["k8s"]
    assert [v.kind for v in stack.variants] == ["compose"]


def test_variant_of_a_kind_not_described_names_the_field() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variant"] = "kubernetes"

    with pytest.raises(StackFileError) as caught:
        parse_stack(stack_data(change), Path("shop.yaml"))
    assert "variant: no variant of that kind is described (variants: [])" in str(caught.value)


def test_kubernetes_manifests_must_stay_inside_the_working_dir() -> None:
    def change(d: dict[str, Any]) -> None:
        d["variants"] = [{**KUBE_VARIANT, "manifests": ["../other/k8s"]}]

    with pytest.raises(StackFileError, match=r"variants\[0\]\.manifests\[0\]"):
        parse_stack(stack_data(change), Path("shop.yaml"))


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
        ["logs.roots[0]: a log root needs exactly one of path, volume or claim"],
    ),
    (
        "log root with both volume and claim",
        _set("logs", {"roots": [{"volume": "shop_logs", "claim": "logs"}]}),
        ["logs.roots[0]: a log root needs exactly one of path, volume or claim"],
    ),
    (
        "claim log root on compose",
        _set("logs", {"roots": [{"claim": "applogs"}]}),
        ["logs.roots[0].claim: a claim log root needs the kubernetes runtime", "(got 'applogs')"],
    ),
    (
        "claim name that is no Kubernetes name",
        _set("logs", {"roots": [{"claim": "App_Logs"}]}),
        ["logs.roots[0].claim: String should match pattern", "(got 'App_Logs')"],
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
        "log root deleting plain files without an age",
        _set("logs", {"roots": [{"path": "/var/log/shop", "delete_uncompressed": True}]}),
        ["logs.roots[0].delete_uncompressed: needs delete_after_days", "(got True)"],
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
    # Values that could do harm or can never work (issue 10, item 7).
    (
        "gate timeout of zero",
        _set("health_gate", {"timeout": "0s"}),
        ["health_gate.timeout: must be longer than 0 (use e.g. 30s, 5m) (got '0s')"],
    ),
    (
        "gate interval of zero",
        _set("health_gate", {"interval": 0}),
        ["health_gate.interval: must be longer than 0 (use e.g. 30s, 5m) (got 0)"],
    ),
    (
        "negative gate interval",
        _set("health_gate", {"interval": -5}),
        ["health_gate.interval: must be longer than 0", "(got -5)"],
    ),
    (
        "negative check timeout",
        _set("services.0.health.0.timeout", -1),
        ["services[0].health[0].timeout: must be longer than 0", "(got -1)"],
    ),
    (
        "image with an option in it",
        _set("services.0.image", "api --privileged"),
        ["services[0].image: not a Docker image reference", "(got 'api --privileged')"],
    ),
    (
        "image with a newline",
        _set("services.1.image", "postgres:15\n"),
        ["services[1].image: not a Docker image reference", "(got 'postgres:15\\n')"],
    ),
    (
        "verify image that is no reference",
        _set("backup.sources.postgres.0.verify_image", "UPPER CASE"),
        ["backup.sources.postgres[0].verify_image: not a Docker image reference"],
    ),
    (
        "conn_id that is a path",
        _set("services.1.health.0.conn_id", "../../x"),
        ["services[1].health[0].conn_id: not a plain Airflow connection id", "(got '../../x')"],
    ),
    (
        "conn_id of a backup source starting with a dot",
        _set("backup.sources.postgres.0.conn_id", ".hidden"),
        ["backup.sources.postgres[0].conn_id: not a plain Airflow connection id"],
    ),
    (
        "conn_id of an alert route with a template",
        _set("alerts", [{"kind": "webhook", "conn_id": "{{ var.value.x }}"}]),
        ["alerts[0].conn_id: not a plain Airflow connection id"],
    ),
    (
        "port that is a word",
        _set("services.0.ports", ["eighty"]),
        ["services[0].ports[0]: not a Compose port", "(got 'eighty')"],
    ),
    (
        "published port out of range",
        _set("services.0.ports", ["8080:80", "127.0.0.1:70000:80"]),
        ["services[0].ports[1]: not a Compose port", "(got '127.0.0.1:70000:80')"],
    ),
    (
        "port with an unknown protocol",
        _set("services.0.ports", ["53:53/dns"]),
        ["services[0].ports[0]: not a Compose port", "(got '53:53/dns')"],
    ),
    (
        "down_safe_for that matches every version",
        _set("migration.down_safe_for", ["2.4.*", "*"]),
        ["migration.down_safe_for[1]: matches every version", "(got '*')"],
    ),
    (
        "down_safe_for of wildcards only",
        _set("migration.down_safe_for", ["**", "?*", "[0-9]*"]),
        [
            "migration.down_safe_for[0]: matches every version",
            "migration.down_safe_for[1]: matches every version",
            "migration.down_safe_for[2]: matches every version",
        ],
    ),
    (
        "health URL at the metadata address",
        _set("services.0.health.0.url", "http://169.254.169.254/latest/meta-data/"),
        [
            "services[0].health[0].url: 169.254.169.254 is link-local",
            "(got 'http://169.254.169.254/latest/meta-data/')",
        ],
    ),
    (
        "health URL at the metadata address spelled as a number",
        _set("services.0.health.0.url", "http://2852039166/"),
        ["services[0].health[0].url: 2852039166 is link-local"],
    ),
    (
        "health URL at an IPv6 link-local address",
        _set("services.0.health.0.url", "http://[fe80::1]:8080/health"),
        ["services[0].health[0].url: fe80::1 is link-local"],
    ),
    (
        "tcp check of a link-local host",
        _set("services.1.health", [{"kind": "tcp", "host": "169.254.10.1", "port": 80}]),
        ["services[1].health[0].host: 169.254.10.1 is link-local", "(got '169.254.10.1')"],
    ),
    (
        "grpc check of a link-local target",
        _set("services.1.health", [{"kind": "grpc", "target": "169.254.169.254:50051"}]),
        ["services[1].health[0].target: 169.254.169.254 is link-local"],
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("services.0.ports", ["80", "127.0.0.1::5000", "[::1]:8080:80", "6831:6831/udp",
                              "9000-9001:9000-9001", "9090-9091:8080/tcp"]),
        ("services.1.image", "registry.example.com:5000/team/postgres:15.4-alpine"),
        ("services.1.image", "pgvector/pgvector@sha256:" + "a" * 64),
        ("services.1.health.0.conn_id", "shop.postgres-primary_1"),
        ("migration.down_safe_for", ["2.4.*", "*-hotfix", "2.5.?"]),
        ("services.0.health.0.url", "http://db.internal:8080/health"),
        ("health_gate", {"interval": "250ms", "timeout": 1}),
    ],
)  # fmt: skip
def test_ordinary_values_stay_accepted(field: str, value: Any) -> None:
    stack = parse_stack(stack_data(_set(field, value)), Path("shop.yaml"))
    assert stack.name == "shop"


# ------------------------------------------------------------------------------ limits


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Turn a hang into a failure after 10 s (how fast is for the benchmarks to say)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("loading the stack file hung for 10 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def billion_laughs() -> str:
    """Nine levels of ten aliases, anchored in one flow list: 10**9 strings once expanded,
    about 600 bytes as written. ``*i`` names the last level."""
    levels = ["&a [" + ", ".join(['"lol"'] * 10) + "]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        levels.append(f"&{level} [{', '.join([f'*{previous}'] * 10)}]")
    return "[" + ", ".join(levels) + "]"


def bounded(message: str) -> None:
    assert len(message) < 500 + MAX_PROBLEMS * (MAX_PROBLEM_CHARS + 5), len(message)


@pytest.mark.usefixtures("hang_guard")
def test_an_alias_bomb_in_an_extra_key_is_refused_before_validation(tmp_path: Path) -> None:
    text = yaml.safe_dump(stack_data(), sort_keys=False) + f"x-lol: {billion_laughs()}\n"
    message = problems_of(write(tmp_path, "shop", text))
    assert f"(top level): more than {MAX_NODES} values once aliases are expanded" in message
    assert "line " in message
    bounded(message)


@pytest.mark.usefixtures("hang_guard")
def test_an_alias_bomb_in_tags_is_refused_before_validation(tmp_path: Path) -> None:
    text = yaml.safe_dump(stack_data(), sort_keys=False) + f"tags: [{billion_laughs()}, *i]\n"
    message = problems_of(write(tmp_path, "shop", text))
    assert f"more than {MAX_NODES} values once aliases are expanded" in message
    bounded(message)


@pytest.mark.usefixtures("hang_guard")
def test_a_50_mb_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    with path.open("wb") as out:
        out.write(yaml.safe_dump(stack_data(), sort_keys=False).encode())
        out.write(b"description: '" + b"x" * 50_000_000 + b"'\n")
    message = problems_of(path)
    assert f"(top level): the file is {path.stat().st_size} bytes, over the {MAX_FILE_BYTES}" in (
        message
    )


@pytest.mark.usefixtures("hang_guard")
def test_a_deeply_nested_file_is_refused(tmp_path: Path) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    text = yaml.safe_dump(stack_data(), sort_keys=False) + f"description: {nested}\n"
    message = problems_of(write(tmp_path, "shop", text))
    assert f"(top level): nested deeper than {MAX_DEPTH} levels (line " in message
    bounded(message)


@pytest.mark.usefixtures("hang_guard")
def test_aliases_that_nest_deeper_than_the_limit_or_contain_themselves_are_refused(
    tmp_path: Path,
) -> None:
    chain = "x0: &a0 [1]\n" + "".join(f"x{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100))
    base = yaml.safe_dump(stack_data(), sort_keys=False)
    deep = problems_of(write(tmp_path, "shop", base + chain))
    assert f"nested deeper than {MAX_DEPTH} levels once aliases are expanded" in deep
    looped = problems_of(write(tmp_path, "shop", base + "tags: &r [*r]\n"))
    assert "(top level): an alias refers to a value that contains it" in looped


def test_a_file_that_is_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    head = yaml.safe_dump(stack_data(), sort_keys=False).encode()
    path = tmp_path / "shop.yaml"
    path.write_bytes(head + b"description: caf\xe9\n")
    with pytest.raises(StackFileError) as info:
        load_stack_file(path)
    (problem,) = info.value.problems
    offset = len(head) + len(b"description: caf")
    assert problem.startswith(f"(top level): not UTF-8: byte 0xe9 at byte offset {offset} (line ")
    assert str(path) in str(info.value)


@pytest.mark.usefixtures("hang_guard")
def test_thousands_of_bad_values_give_a_bounded_message(tmp_path: Path) -> None:
    data = stack_data(_set("tags", [[n] for n in range(5000)]))
    data["description"] = ["x" * 100_000]
    with pytest.raises(StackFileError) as info:
        load_stack_file(write(tmp_path, "shop", data))
    problems = info.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == f"... and {5001 - MAX_PROBLEMS} more problems"
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in problems)
    bounded(str(info.value))


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


# ------------------------------------------------------------------ checks by service endpoint


def _api_check(data: dict[str, Any], check: dict[str, Any]) -> None:
    data["services"][0]["health"] = [check]


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"kind": "http", "url": "http://127.0.0.1:8080/", "endpoint": {"service": "api",
          "port": 8080}}, "give either url or endpoint ({service, port}), not both"),
        ({"kind": "http"}, "give either url or endpoint ({service, port}), not both"),
        ({"kind": "http", "url": "http://127.0.0.1:8080/", "path": "/health"},
         "path and scheme go with endpoint; a url carries its own"),
        ({"kind": "tcp", "port": 80, "endpoint": {"service": "api", "port": 8080}},
         "give either port or endpoint"),
        ({"kind": "grpc"}, "give either target or endpoint"),
        ({"kind": "tcp", "endpoint": {"service": "api", "port": 0}},
         "services[0].health[0].endpoint.port: Input should be greater than or equal to 1"),
        ({"kind": "http", "endpoint": {"service": "cache", "port": 6379}},
         "services[0].health[0].endpoint.service: names an unknown service"),
    ],
)  # fmt: skip
def test_endpoint_checks_are_refused_with_the_field(
    tmp_path: Path, check: dict[str, Any], problem: str
) -> None:
    path = write(tmp_path, "shop", stack_data(lambda d: _api_check(d, check)))
    assert problem in problems_of(path)


def test_an_endpoint_check_travels_as_data_and_back(tmp_path: Path) -> None:
    from opsflow.health import check_from_data, check_name, check_to_data

    endpoint = {"kind": "http", "endpoint": {"service": "api", "port": 8080}, "path": "/ready"}
    path = write(tmp_path, "shop", stack_data(lambda d: _api_check(d, endpoint)))
    [check] = load_stack_file(path).service("api").health
    data = check_to_data(check)
    assert data == {**endpoint, "method": "GET", "expect_status": [200], "expect_json": {},
                    "timeout": 5.0}  # fmt: skip
    assert check_from_data(data) == check
    assert check_name(check) == "http GET http://api:8080/ready"


def test_a_sensor_without_a_runtime_refuses_an_endpoint_check() -> None:
    from opsflow.sensors.health import HealthGateSensor

    with pytest.raises(ValueError, match="names a service endpoint and needs the stack's runtime"):
        HealthGateSensor(task_id="gate", checks=[{"kind": "tcp",
                         "endpoint": {"service": "api", "port": 80}}])  # fmt: skip
