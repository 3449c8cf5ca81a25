"""Stack files that ``extends`` another: the shipped WeKnora file moved to another machine
in a few lines, the merge rules one by one, and errors that name both files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opsflow.stack.loader import StackFileError, load_stack_file, stack_source
from opsflow.stack.run_snapshot import load_run_stack

REPO = Path(__file__).resolve().parents[2]
WEKNORA = REPO / "include" / "stacks" / "weknora.yaml"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stacks dir of its own; paths under the temp dir are the stack's to use."""
    monkeypatch.setenv("OPSFLOW_ALLOWED_ROOTS", f"{tmp_path}:/var/log/opsflow:/var/backups/opsflow")
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(tmp_path / "stacks"))
    monkeypatch.setenv("OPSFLOW_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "stacks").mkdir()
    (tmp_path / "checkout").mkdir()
    return tmp_path / "stacks"


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def test_the_shipped_file_moves_to_another_machine_in_a_few_lines(here: Path) -> None:
    overlay = write(here / "weknora.yaml", f"""
extends: {WEKNORA}
runtime:
  project: weknora-replica
  working_dir: {here.parent / "checkout"}
services:
  - name: app
    ports: ["127.0.0.1:18080:8080"]
    health:
      - kind: http
        url: http://127.0.0.1:18080/health
backup:
  local_dir: {here.parent / "backups"}
""")  # fmt: skip
    base = load_stack_file(WEKNORA)
    stack = load_stack_file(overlay)

    assert (stack.name, stack.runtime.project) == ("weknora", "weknora-replica")
    assert stack.runtime.working_dir == str(here.parent / "checkout")
    assert stack.runtime.env_file == base.runtime.env_file  # inherited
    # Services merge by name: app's own lists replace the base's, the others are the base's.
    app = next(s for s in stack.services if s.name == "app")
    assert app.ports == ["127.0.0.1:18080:8080"]
    assert [check.kind for check in app.health] == ["http"]
    assert app.build == next(s for s in base.services if s.name == "app").build
    assert [s.name for s in stack.services] == [s.name for s in base.services]
    assert stack.services[0] == base.services[0]
    assert stack.backup.local_dir == str(here.parent / "backups")
    assert stack.backup.sources == base.backup.sources


def test_new_services_are_added_and_null_brings_a_default_back(here: Path) -> None:
    base = write(here / "base.yaml", {
        "name": "base", "runtime": {"kind": "compose", "project": "p", "working_dir": "/opt/x"},
        "description": "the base", "tags": ["a"],
        "services": [{"name": "api", "health": [{"kind": "tcp", "port": 80}]}],
    })  # fmt: skip
    overlay = write(here / "staging.yaml", {
        "extends": "base.yaml", "description": None, "tags": ["b"],
        "services": [{"name": "worker", "health": [{"kind": "tcp", "port": 81}]}],
    })  # fmt: skip
    stack = load_stack_file(overlay)
    assert stack.name == "staging"  # the overlay's own file name, not the base's
    assert [s.name for s in stack.services] == ["api", "worker"]
    assert stack.description == load_stack_file(base).model_fields["description"].default
    assert stack.tags == ["b"]


def test_a_relative_working_dir_stays_relative_to_the_file_that_wrote_it(
    here: Path, tmp_path: Path
) -> None:
    (tmp_path / "shipped" / "stacks").mkdir(parents=True)
    (tmp_path / "shipped" / "app").mkdir()
    write(tmp_path / "shipped" / "stacks" / "shop.yaml", {
        "name": "shop", "runtime": {"kind": "compose", "project": "shop", "working_dir": "../app"},
        "services": [{"name": "api", "health": [{"kind": "tcp", "port": 80}]}],
    })  # fmt: skip
    overlay = write(here / "shop.yaml", {"extends": "../shipped/stacks/shop.yaml"})
    assert load_stack_file(overlay).runtime.working_dir == str(tmp_path / "shipped" / "app")


def test_a_run_keeps_the_merged_document_not_the_overlay_text(here: Path) -> None:
    write(here / "base.yaml", {
        "name": "base", "runtime": {"kind": "compose", "project": "p", "working_dir": "/opt/x"},
        "services": [{"name": "api", "health": [{"kind": "tcp", "port": 80}]}],
    })  # fmt: skip
    write(here / "shop.yaml", {"extends": "base.yaml", "description": "v1"})
    first = load_run_stack("shop", "shop__upgrade", "manual__1")
    # The base is edited while the run goes on: the run keeps what its first task read.
    write(here / "base.yaml", {
        "name": "base", "runtime": {"kind": "compose", "project": "p", "working_dir": "/opt/x"},
        "services": [{"name": "api", "health": [{"kind": "tcp", "port": 9999}]}],
    })  # fmt: skip
    assert load_run_stack("shop", "shop__upgrade", "manual__1") == first
    assert first.services[0].health[0].port == 80  # type: ignore[union-attr]
    assert load_run_stack("shop", "shop__upgrade", "manual__2").services[0].health[0].port == 9999  # type: ignore[union-attr]
    assert b"extends" not in stack_source(here / "shop.yaml").split(b"\n", 1)[1]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.yaml": {"extends": "missing.yaml"}},
         ["a.yaml", "extends ", "missing.yaml: cannot read: No such file or directory"]),
        ({"a.yaml": {"extends": "b.yaml"}, "b.yaml": {"extends": "a.yaml"}},
         ["extends: the files extend each other:", "a.yaml -> ", "b.yaml -> "]),
        ({"a.yaml": {"extends": "a.yaml"}}, ["a stack file cannot extend itself"]),
        ({"a.yaml": {"extends": 3}}, ["extends: must be the path of a stack file (.yaml)"]),
        ({"a.yaml": {"extends": "b.yaml"}, "b.yaml": "name: [unclosed\n"},
         ["extends ", "b.yaml: not valid YAML"]),
        ({"a.yaml": {"extends": "b.yaml", "runtime": {"project": "Bad Name!"}},
          "b.yaml": {"name": "b", "runtime": {"kind": "compose", "project": "b",
                                               "working_dir": "/opt/b"},
                     "services": [{"name": "api", "health": [{"kind": "tcp", "port": 1}]}]}},
         ["a.yaml (extends ", "b.yaml):", "runtime.project:", "'Bad Name!'"]),
    ],
)  # fmt: skip
def test_errors_name_both_files(here: Path, files: dict[str, object], expected: list[str]) -> None:
    for name, data in files.items():
        write(here / name, data)
    with pytest.raises(StackFileError) as caught:
        load_stack_file(here / "a.yaml")
    message = str(caught.value)
    assert message.startswith(f"invalid stack file {here / 'a.yaml'}"), message
    for part in expected:
        assert part in message, message


def test_a_chain_has_a_limit(here: Path) -> None:
    base = {"name": "f0", "runtime": {"kind": "compose", "project": "p", "working_dir": "/opt/x"},
            "services": [{"name": "api", "health": [{"kind": "tcp", "port": 80}]}]}  # fmt: skip
    write(here / "f0.yaml", base)
    for number in range(1, 6):
        write(here / f"f{number}.yaml", {"extends": f"f{number - 1}.yaml"})
    assert load_stack_file(here / "f3.yaml").name == "f3"
    with pytest.raises(StackFileError, match="more than 4 files in one chain"):
        load_stack_file(here / "f5.yaml")
