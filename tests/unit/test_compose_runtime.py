"""The compose runtime's commands and the process runner, on real processes."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from opsflow.operators.maintenance import root_path
from opsflow.runtimes.compose import ComposeProject, parse_ps
from opsflow.runtimes.process import CommandFailed, ProcessRunner
from opsflow.stack.loader import parse_stack
from opsflow.stack.model import check_version

STACK = {
    "name": "shop",
    "runtime": {
        "kind": "compose",
        "project": "opsflow-shop",
        "working_dir": "/srv/shop",
        "files": ["compose.yml", "compose.prod.yml"],
        "env_file": ".env",
    },
    "services": [
        {"name": "api", "build": {"context": "."}},
        {"name": "db", "role": "database", "versioned": False},
    ],
    "migration": {"tool": "alembic", "service": "api", "command": ["alembic", "upgrade", "head"]},
}


@pytest.fixture
def project(tmp_path: Path) -> ComposeProject:
    stack = parse_stack(STACK, tmp_path / "shop.yaml")
    return ComposeProject.for_stack(stack, tmp_path)


def test_every_command_names_the_project_and_its_files(project: ComposeProject) -> None:
    base = [
        "docker", "compose", "--project-name", "opsflow-shop",
        "--project-directory", "/srv/shop",
        "--file", "/srv/shop/compose.yml", "--file", "/srv/shop/compose.prod.yml",
        "--env-file", "/srv/shop/.env",
    ]  # fmt: skip
    for argv in (project.build_argv(), project.up_argv(), project.ps_argv(), project.stop_argv()):
        assert argv[: len(base)] == base


def test_down_removes_the_containers_and_keeps_the_volumes(project: ComposeProject) -> None:
    (down,) = project.commands("down", "1.2.3")
    assert down[: len(project.base_argv())] == project.base_argv()
    assert down[len(project.base_argv()) :] == ["down", "--remove-orphans"]


def test_relative_paths_of_the_stack_file_lie_under_the_working_dir(tmp_path: Path) -> None:
    """A checkout's ``logs/`` and config files follow the checkout to another machine."""
    working = tmp_path / "shop"
    roots = [
        {"path": "logs/nginx"},
        {"path": "logs", "subdir": "api"},
        {"path": "/var/log/opsflow/shop"},
    ]
    stack = parse_stack(
        {
            **STACK,
            "runtime": {**STACK["runtime"], "working_dir": str(working)},  # type: ignore[dict-item]
            "logs": {"roots": roots},
            "backup": {
                "local_dir": "/var/backups/opsflow/shop",
                "sources": {"files": ["conf/a.yaml"]},
            },
        },
        tmp_path / "shop.yaml",
    )
    assert [root_path(stack, root) for root in stack.logs.roots] == [
        working / "logs" / "nginx", working / "logs" / "api", Path("/var/log/opsflow/shop"),
    ]  # fmt: skip
    paths = dict(ComposeProject.for_stack(stack).config_paths())
    assert paths["config/conf/a.yaml"] == working / "conf" / "a.yaml"


def test_release_commands(project: ComposeProject) -> None:
    assert project.build_argv()[-1] == "build"
    assert project.migrate_argv()[-6:] == ["--rm", "--no-TTY", "api", "alembic", "upgrade", "head"]
    up = project.up_argv()
    assert up[up.index("up") :] == [
        "up", "--detach", "--no-build", "--pull", "never", "--remove-orphans",
    ]  # fmt: skip
    assert project.env("1.2.3-rc_1") == {"OPSFLOW_VERSION": "1.2.3-rc_1"}


def test_pull_mode_pulls_instead_of_building(tmp_path: Path) -> None:
    data = {**STACK, "runtime": {**STACK["runtime"], "images": "pull"}}  # type: ignore[dict-item]
    project = ComposeProject.for_stack(parse_stack(data, tmp_path / "shop.yaml"), tmp_path)
    assert project.fetch_argv()[-2:] == ["pull", "--quiet"]


@pytest.mark.parametrize(
    "bad", ["1.0.0; rm -rf /", "$(id)", "`id`", "1.0 0", "", "-rf", "../x", "1.0\n", "a|b", "é1"]
)
def test_versions_with_shell_or_path_characters_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        check_version(bad)


def test_parse_ps_reads_both_output_shapes() -> None:
    lines = '{"Service":"api","State":"running"}\n{"Service":"db","State":"exited"}\n'
    array = '[{"Service":"api","State":"running"},{"Service":"db","State":"exited"}]'
    assert parse_ps(lines) == parse_ps(array)
    assert [row["Service"] for row in parse_ps(lines)] == ["api", "db"]
    assert parse_ps("  \n") == []


def test_runner_streams_output_and_keeps_the_tail(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.runner")
    caplog.set_level(logging.INFO, logger="test.runner")
    script = "import sys\nfor i in range(60): print('line', i)\nsys.exit(3)"
    with pytest.raises(CommandFailed) as failed:
        ProcessRunner(log=log).run([sys.executable, "-c", script])
    result = failed.value.result
    assert result.returncode == 3
    assert result.tail[-1] == "line 59"
    assert "exited with 3" in str(failed.value)
    assert "line 59" in str(failed.value)
    assert "  line 0" in caplog.text


def test_runner_passes_environment_without_a_shell(tmp_path: Path) -> None:
    log = logging.getLogger("test.runner")
    runner = ProcessRunner(log=log, env={"OPSFLOW_VERSION": "$(touch pwned)"}, cwd=tmp_path)
    result = runner.run([sys.executable, "-c", "import os; print(os.environ['OPSFLOW_VERSION'])"])
    assert result.tail == ["$(touch pwned)"]
    assert not (tmp_path / "pwned").exists()


def test_runner_timeout_kills_the_process_group() -> None:
    log = logging.getLogger("test.runner")
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        ProcessRunner(log=log).run(["sh", "-c", "sleep 30 & sleep 30"], timeout=1)
    assert time.monotonic() - started < 15
