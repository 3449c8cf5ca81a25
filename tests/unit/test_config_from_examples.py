"""``runtime.config_from_examples``: config files a system ships only as ``*.example.yaml``
(EchoMind's guide: ``cp backend/configs/config.example.yaml backend/configs/config.yaml``)
are created before a release starts, once, and never overwritten."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from opsflow.runtimes.base import RuntimeFailure
from opsflow.runtimes.compose import ComposeProject
from opsflow.stack.loader import StackFileError, parse_stack

EXAMPLE = 'database:\n  dsn: "host=postgres password=${DB_PASSWORD}"\n'


def stack_data(working_dir: Path, examples: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "name": "mail",
        "runtime": {
            "kind": "compose",
            "project": "mail",
            "working_dir": str(working_dir),
            "config_from_examples": examples,
        },
        "services": [{"name": "server"}],
    }


PAIR = {"file": "configs/config.yaml", "example": "configs/config.example.yaml"}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A system's checkout: the example is there, the config file is not (yet)."""
    work = tmp_path / "mail"
    (work / "configs").mkdir(parents=True)
    example = work / "configs" / "config.example.yaml"
    example.write_text(EXAMPLE)
    example.chmod(0o640)
    return work


def project(work: Path, examples: list[dict[str, str]] | None = None) -> ComposeProject:
    stack = parse_stack(stack_data(work, [PAIR] if examples is None else examples),
                        work.parent / "mail.yaml")  # fmt: skip
    return ComposeProject.for_stack(stack, work.parent)


def test_a_missing_config_file_is_created_from_its_example_with_its_mode(checkout: Path) -> None:
    lines = project(checkout).prepare_config()

    created = checkout / "configs" / "config.yaml"
    assert created.read_text() == EXAMPLE
    assert created.stat().st_mode & 0o777 == 0o640
    assert lines == ["configs/config.yaml: created from configs/config.example.yaml (mode 640)"]
    assert sorted(p.name for p in created.parent.iterdir()) == [
        "config.example.yaml", "config.yaml",
    ]  # fmt: skip


def test_an_existing_config_file_is_the_operators_and_is_kept(checkout: Path) -> None:
    edited = checkout / "configs" / "config.yaml"
    edited.write_text("database:\n  dsn: edited by the operator\n")
    edited.chmod(0o600)

    lines = project(checkout).prepare_config()

    assert edited.read_text() == "database:\n  dsn: edited by the operator\n"
    assert edited.stat().st_mode & 0o777 == 0o600
    assert lines == ["configs/config.yaml: exists, kept as it is"]


def test_a_dry_run_says_what_it_would_create_and_creates_nothing(checkout: Path) -> None:
    lines = project(checkout).prepare_config(dry_run=True)

    assert not (checkout / "configs" / "config.yaml").exists()
    assert lines == [
        "configs/config.yaml: missing, would be created from configs/config.example.yaml"
    ]


def test_a_missing_example_names_both_paths(checkout: Path) -> None:
    (checkout / "configs" / "config.example.yaml").unlink()

    with pytest.raises(RuntimeFailure) as info:
        project(checkout).prepare_config()

    message = str(info.value)
    assert message.startswith("runtime.config_from_examples[0]: ")
    assert str(checkout / "configs" / "config.yaml") in message
    assert str(checkout / "configs" / "config.example.yaml") in message


def test_a_directory_that_became_a_link_into_a_system_directory_is_refused(
    checkout: Path, tmp_path: Path
) -> None:
    runtime = project(checkout)  # loaded while configs/ was a plain directory
    moved = tmp_path / "configs-moved"
    (checkout / "configs").rename(moved)
    (checkout / "configs").symlink_to("/etc", target_is_directory=True)

    with pytest.raises(RuntimeFailure, match=re.escape("config_from_examples[0].file: refused")):
        runtime.prepare_config()
    assert not Path("/etc/config.yaml").exists()


def test_every_listed_file_is_prepared_and_a_second_run_changes_nothing(
    checkout: Path,
) -> None:
    (checkout / "configs" / "logger.example.yaml").write_text("level: INFO\n")
    logger = {"file": "configs/logger.yaml", "example": "configs/logger.example.yaml"}
    runtime = project(checkout, [PAIR, logger])

    first = runtime.prepare_config()
    second = runtime.prepare_config()

    assert [line.split(":")[0] for line in first] == ["configs/config.yaml", "configs/logger.yaml"]
    assert all("created from" in line for line in first)
    assert second == ["configs/config.yaml: exists, kept as it is",
                      "configs/logger.yaml: exists, kept as it is"]  # fmt: skip
    assert (checkout / "configs" / "logger.yaml").read_text() == "level: INFO\n"


@pytest.mark.parametrize(
    ("pair", "problem"),
    [
        ({"file": "configs/a.yaml", "example": "configs/a.yaml"}, "must be another file than"),
        ({"file": "../a.yaml", "example": "a.example.yaml"}, "must be a relative path inside"),
        ({"file": "/etc/a.yaml", "example": "a.example.yaml"}, "must be a relative path inside"),
        ({"file": "a.yaml"}, "config_from_examples[0].example: Field required"),
    ],
)
def test_the_stack_file_refuses_pairs_that_cannot_work(
    tmp_path: Path, pair: dict[str, str], problem: str
) -> None:
    with pytest.raises(StackFileError) as info:
        parse_stack(stack_data(tmp_path, [pair]), tmp_path / "mail.yaml")
    assert problem in str(info.value)
    assert "runtime.config_from_examples[0]" in str(info.value)
