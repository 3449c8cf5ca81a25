"""What a stack may touch on the host: refused at load time with the field and the value,
and again at run time where the path really leads (symlinks resolved).

Every stack file here is real and loaded through the loader; the paths it names are real
directories and symlinks under tmp_path, or the machine's own system directories (which
are only looked at, never changed).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from opsflow.addresses import literal_ip
from opsflow.stack.loader import StackFileError, load_stack_file
from opsflow.stack.safety import (
    ALLOWED_ROOTS_ENV,
    DEFAULT_ALLOWED_ROOTS,
    PathRefused,
    allowed_roots,
    run_time_problem,
)


@pytest.fixture(autouse=True)
def default_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the documented default, whatever the caller's environment."""
    monkeypatch.delenv(ALLOWED_ROOTS_ENV, raising=False)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The stack's compose working dir, with a logs dir, a config file and a link to /."""
    working = tmp_path / "app"
    (working / "logs").mkdir(parents=True)
    (working / "config.yaml").write_text("a: 1\n")
    (working / "rootlink").symlink_to("/", target_is_directory=True)
    return working


def write_stack(app: Path, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "name": "shop",
        "runtime": {"kind": "compose", "project": "shop", "working_dir": str(app)},
        "services": [{"name": "api"}],
        **sections,
    }
    path = app.parent / "shop.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(StackFileError) as info:
        load_stack_file(path)
    return info.value.problems


def log_roots(*roots: dict[str, Any]) -> dict[str, Any]:
    return {"logs": {"roots": list(roots)}}


def files_backup(*files: str, local_dir: str = "/var/backups/opsflow/shop") -> dict[str, Any]:
    return {"backup": {"local_dir": local_dir, "sources": {"files": list(files)}}}


# ------------------------------------------------------------------------------ accepted


def test_what_the_stack_owns_is_accepted(app: Path) -> None:
    path = write_stack(
        app,
        **files_backup("config.yaml", str(app / "config.yaml")),
        **log_roots(
            {"path": str(app / "logs")},
            {"path": str(app), "subdir": "logs"},
            {"path": "/var/log/opsflow/shop"},
            {"volume": "shop_logs", "subdir": "nginx/access"},
            {"path": "logs"},  # relative: under the working dir
        ),
    )
    stack = load_stack_file(path)
    assert [root.path or root.volume for root in stack.logs.roots] == [
        str(app / "logs"), str(app), "/var/log/opsflow/shop", "shop_logs", "logs",
    ]  # fmt: skip
    assert stack.backup.local_dir == "/var/backups/opsflow/shop"


def test_the_operator_allows_roots_in_one_environment_variable(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    path = write_stack(
        app, **files_backup(local_dir=str(shared / "backups")), **log_roots({"path": str(shared)})
    )
    refused = problems(path)
    assert [p.split(":")[0] for p in refused] == ["backup.local_dir", "logs.roots[0].path"]
    assert "is outside what the stack owns" in refused[0]
    assert f"its working dir {app}" in refused[0]
    assert f"{ALLOWED_ROOTS_ENV}: /var/log/opsflow, /var/backups/opsflow" in refused[0]

    monkeypatch.setenv(ALLOWED_ROOTS_ENV, f"/var/log/opsflow:{shared}")
    stack = load_stack_file(path)
    assert stack.logs.roots[0].path == str(shared)


def test_default_allow_list_is_documented() -> None:
    assert allowed_roots({}) == tuple(PurePosixPath(p) for p in DEFAULT_ALLOWED_ROOTS)
    assert DEFAULT_ALLOWED_ROOTS == ("/var/log/opsflow", "/var/backups/opsflow")
    assert allowed_roots({ALLOWED_ROOTS_ENV: ""}) == ()
    docs = (Path(__file__).resolve().parents[2] / "docs" / "stack-file.md").read_text()
    assert ALLOWED_ROOTS_ENV in docs and all(root in docs for root in DEFAULT_ALLOWED_ROOTS)


# ------------------------------------------------------------------------------ log roots


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ({"path": "/"}, "logs.roots[0].path: is the root directory; "),
        ({"path": "/etc"}, "logs.roots[0].path: is the system directory /etc; "),
        ({"path": "/proc"}, "logs.roots[0].path: is the system directory /proc; "),
        ({"path": "/usr/share/doc"}, "logs.roots[0].path: lies in the system directory /usr; "),
        ({"path": "/var"}, "logs.roots[0].path: contains the system directory /var/"),
        ({"path": "/var/log/postgresql"}, "lies in the system directory /var/log; "),
        ({"path": "/var/lib/docker/volumes/other_logs/_data"}, "system directory /var/lib;"),
        ({"path": ".."}, "logs.roots[0].path: must be a path without '..': '..'"),
        ({"path": "logs/../../etc"}, "logs.roots[0].path: must be a path without '..'"),
        ({"path": "/opt/shop/../../etc"}, "logs.roots[0].path: must be a path without '..'"),
        ({"path": "rootlink/etc"}, "logs.roots[0].path: resolves to /etc, which is the system"),
        ({"path": "/tmp/elsewhere"}, "logs.roots[0].path: is outside what the stack owns"),
        (
            {"volume": "shop_logs", "subdir": "../../../etc"},
            "logs.roots[0].subdir: must be a relative path inside its volume or path, "
            "without '..' (got '../../../etc')",
        ),
        (
            {"volume": "shop_logs", "subdir": "/etc"},
            "logs.roots[0].subdir: must be a relative path inside",
        ),
        (
            {"volume": "other_logs"},
            "logs.roots[0].volume: must be a named volume of the stack's compose project, "
            "named 'shop_<name>' (got 'other_logs')",
        ),
    ],
)
def test_log_roots_outside_the_stack_are_refused_at_load(
    app: Path, root: dict[str, Any], expected: str
) -> None:
    (problem,) = problems(write_stack(app, **log_roots(root)))
    assert expected in problem
    value = root.get("subdir") if "subdir" in root and "volume" in root else root.popitem()[1]
    assert repr(value) in problem


def test_a_log_root_through_a_symlink_to_root_is_refused_at_load(app: Path) -> None:
    path = write_stack(
        app,
        **log_roots(
            {"path": str(app / "rootlink")},
            {"path": str(app / "rootlink" / "usr" / "share" / "doc")},
            {"path": str(app), "subdir": "rootlink/etc"},
        ),
    )
    assert problems(path) == [
        f"logs.roots[0].path: resolves to /, which is the root directory; system "
        f"directories are never touched (got '{app}/rootlink')",
        f"logs.roots[1].path: resolves to /usr/share/doc, which lies in the system directory "
        f"/usr; allow a directory beneath it in {ALLOWED_ROOTS_ENV} if it really belongs to "
        f"the stack (got '{app}/rootlink/usr/share/doc')",
        f"logs.roots[2].path: resolves to /etc, which is the system directory /etc; system "
        f"directories are never touched (got '{app}')",
    ]


# ------------------------------------------------------------------------------ backups


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("/etc/shadow", "lies in the system directory /etc"),
        ("/root/.ssh/id_rsa", "lies in the system directory /root"),
        ("../../../../etc/passwd", "must be a path without '..'"),
        ("rootlink/etc/passwd", "resolves to /etc/passwd, which lies in the system directory"),
        ("/tmp/other-stack/config.yaml", "is outside what the stack owns"),
    ],
)
def test_backup_files_outside_the_stack_are_refused_at_load(
    app: Path, listed: str, expected: str
) -> None:
    (problem,) = problems(write_stack(app, **files_backup(listed)))
    assert problem.startswith("backup.sources.files[0]: ")
    assert expected in problem
    assert repr(listed) in problem


@pytest.mark.parametrize(
    ("local_dir", "expected"),
    [
        ("/", "backup.local_dir: is the root directory; "),
        ("/etc", "backup.local_dir: is the system directory /etc; "),
        ("/var/backups", "backup.local_dir: is the system directory /var/backups; "),
        ("/srv/backups", "backup.local_dir: is outside what the stack owns"),
        ("/var/backups/opsflow/../../../etc", "backup.local_dir: must not contain '..'"),
    ],
)
def test_backup_local_dir_outside_the_stack_is_refused_at_load(
    app: Path, local_dir: str, expected: str
) -> None:
    (problem,) = problems(write_stack(app, **files_backup(local_dir=local_dir)))
    assert problem.startswith(expected)
    assert repr(local_dir) in problem


def test_env_file_and_compose_files_must_stay_in_the_stack(app: Path) -> None:
    (app / "compose.yml").symlink_to("/etc/hostname")
    path = write_stack(app)
    data = yaml.safe_load(path.read_text())
    data["runtime"] |= {"env_file": "/etc/shadow", "files": ["compose.yml"]}
    path.write_text(yaml.safe_dump(data))
    assert problems(path) == [
        "runtime.files[0]: resolves to /etc/hostname, which lies in the system directory /etc;"
        f" allow a directory beneath it in {ALLOWED_ROOTS_ENV} if it really belongs to the "
        "stack (got 'compose.yml')",
        "runtime.env_file: lies in the system directory /etc; allow a directory beneath it in "
        f"{ALLOWED_ROOTS_ENV} if it really belongs to the stack (got '/etc/shadow')",
    ]


def test_a_working_dir_that_is_a_system_directory_owns_nothing(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "app", **files_backup("etc/shadow"))
    data = yaml.safe_load(path.read_text())
    data["runtime"]["working_dir"] = "/"
    path.write_text(yaml.safe_dump(data))
    refused = problems(path)
    assert refused[0] == (
        "runtime.working_dir: is the root directory; system directories are never touched (got '/')"
    )
    assert refused[1].startswith("backup.sources.files[0]: a relative path needs")


# ------------------------------------------------------------------------------ allow-list


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/", "is or contains the system directory /"),
        ("/var/log/opsflow:/etc", "is or contains the system directory /etc"),
        ("/var", "is or contains the system directory /var/"),
        ("var/log/opsflow", "each entry must be an absolute path without '..'"),
        ("/var/log/opsflow/../..", "each entry must be an absolute path without '..'"),
    ],
)
def test_an_allow_list_that_would_allow_system_directories_is_refused(
    app: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, value)
    with pytest.raises(PathRefused, match=expected):
        allowed_roots()
    (problem,) = problems(write_stack(app))
    assert problem.startswith(f"{ALLOWED_ROOTS_ENV}: ")
    assert expected in problem


def test_a_root_beneath_a_system_directory_can_be_allowed_explicitly(
    app: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_stack(app, **log_roots({"path": "/var/log/shop"}))
    assert "lies in the system directory /var/log" in problems(path)[0]
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, "/var/log/shop")
    assert load_stack_file(path).logs.roots[0].path == "/var/log/shop"


# ------------------------------------------------------------------------------ run time


def test_run_time_check_follows_symlinks(app: Path) -> None:
    assert run_time_problem(app / "logs") is None
    problem = run_time_problem(app / "rootlink")
    assert problem == f"{app}/rootlink resolves to /, which is the root directory; system " \
        "directories are never touched"  # fmt: skip
    assert run_time_problem("/") is not None
    assert "lies in the system directory /etc" in (run_time_problem(app / "rootlink/etc/ssh") or "")


def test_run_time_check_accepts_a_volume_only_inside_that_volume() -> None:
    data = "/var/lib/docker/volumes/shop_logs/_data"
    assert run_time_problem(f"{data}/nginx", real=f"{data}/nginx") is None
    escaped = run_time_problem(f"{data}/nginx", real="/var/lib/docker/volumes/other/_data")
    assert escaped is not None and "lies in the system directory /var/lib" in escaped
    assert run_time_problem(f"{data}/nginx", real="/etc") is not None
    assert run_time_problem("/var/lib/docker/volumes", real="/var/lib/docker/volumes")


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("[fe80::1]", "fe80::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("2852039166", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("::ffff:169.254.169.254", "::ffff:a9fe:a9fe"),
        ("db", None),
        ("cafe", None),
    ],
)
def test_literal_addresses_in_every_spelling(host: str, address: str | None) -> None:
    found = literal_ip(host)
    assert (str(found) if found is not None else None) == address
