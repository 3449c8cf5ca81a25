"""`make replica SYSTEM=<name>` writes the right files for each of the five replicas.

No container starts: scripts/replica.py generates a replica's .env, overlay stack file,
connections and Airflow settings into a temp dir, and the test proves that opsflow's own
loader accepts the overlay (with every host path inside what the stack owns) and that
``docker compose config`` of the replica resolves with the generated .env alone, in a
scrubbed environment, so a variable of the caller's shell cannot make it pass.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import replica as replicas

from opsflow.runtimes.compose import compose_base_argv
from opsflow.stack.loader import load_stack_file
from opsflow.stack.model import ComposeRuntime
from opsflow.stack.safety import stack_path_problems
from support import REPO_ROOT
from support.services import service_unavailable

SYSTEMS = ["ai-doc", "backend2", "echomind", "kratos", "weknora"]
DEMO_PORTS = {18080, 15432, 16379, 8080}


def generated(system: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> replicas.Layout:
    """The replica's files under ``root``, and the paths its Airflow allows set here: the
    loader refuses a stack whose env file or backup dir lies outside them."""
    layout = replicas.generate(system, root)
    settings = replicas.airflow_settings(replicas.load_spec(system), layout)
    monkeypatch.setenv("OPSFLOW_ALLOWED_ROOTS", settings["OPSFLOW_ALLOWED_ROOTS"])
    return layout


def compose_config(runtime: ComposeRuntime, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` of the replica with only the generated .env."""
    if shutil.which("docker") is None:
        service_unavailable("docker is not installed (scripts/setup-docker.sh)")
    env = {key: os.environ[key] for key in ("PATH", "HOME", "DOCKER_HOST") if key in os.environ}
    env["OPSFLOW_VERSION"] = "1.0.0"
    argv = compose_base_argv(runtime.project, workdir, runtime.files, runtime.env_file)
    return subprocess.run(
        [*argv, "config", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def conn_ids(value: Any) -> set[str]:
    """Every ``conn_id`` value anywhere in a stack's data."""
    if isinstance(value, dict):
        own = {str(v) for k, v in value.items() if k == "conn_id" and v}
        return own.union(*(conn_ids(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(conn_ids(v) for v in value))
    return set()


def test_the_five_systems_have_a_replica_file() -> None:
    assert replicas.systems() == SYSTEMS


@pytest.mark.parametrize("system", SYSTEMS)
def test_generated_overlay_loads_and_compose_resolves(
    system: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = generated(system, tmp_path, monkeypatch)
    stack = load_stack_file(layout.stack_file)
    assert stack.name == system
    runtime = stack.runtime
    assert isinstance(runtime, ComposeRuntime)
    assert runtime.project == f"opsflow-{system}"
    assert Path(runtime.working_dir) == REPO_ROOT / "include" / "replicas" / system
    assert runtime.env_file == str(layout.env_file)
    assert stack.backup.local_dir == str(layout.root / "backups")
    settings = replicas.airflow_settings(replicas.load_spec(system), layout)
    assert stack_path_problems(stack, layout.stacks) == []

    done = compose_config(runtime, Path(runtime.working_dir))
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    published = {
        int(port["published"])
        for spec in services.values()
        for port in spec.get("ports", [])
        if port.get("published")
    }
    assert published and not published & DEMO_PORTS, published
    assert int(settings["AIRFLOW__API__PORT"]) not in published | DEMO_PORTS
    # A release's images are the ones the stack file names: ids are recorded, pruned by them.
    for service in stack.services:
        if service.versioned:
            image = services[service.name]["image"]
            assert image.rsplit(":", 1)[0] == service.image, (service.name, image)


@pytest.mark.parametrize("system", SYSTEMS)
def test_connections_follow_the_env_and_secrets_stay_private(
    system: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = generated(system, tmp_path, monkeypatch)
    env = replicas.read_env(layout.env_file)
    connections = json.loads(layout.connections_file.read_text())
    stack = load_stack_file(layout.stack_file)
    # Every connection a check or a backup source names; alert routes are the user's to
    # create, as for the demo.
    named = conn_ids({k: v for k, v in stack.model_dump().items() if k != "alerts"})
    assert named and named <= set(connections), named - set(connections)
    ports = {value for key, value in env.items() if key.endswith("_PORT")}
    for conn in connections.values():
        if "port" in conn:
            assert str(conn["port"]) in ports
        if "password" in conn:
            assert conn["password"] in env.values()
    for path in (layout.env_file, layout.connections_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    settings = replicas.airflow_settings(replicas.load_spec(system), layout)
    assert all(not key.startswith("AIRFLOW_CONN_") for key in settings)


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_second_run_keeps_the_passwords(system: str, tmp_path: Path) -> None:
    first = replicas.read_env(replicas.generate(system, tmp_path).env_file)
    second = replicas.read_env(replicas.generate(system, tmp_path).env_file)
    assert first == second
    spec = replicas.load_spec(system)
    assert spec.secrets and all(len(first[name]) >= 32 for name in spec.secrets)


def test_dags_dir_holds_only_the_system_dag_file(tmp_path: Path) -> None:
    layout = replicas.generate("kratos", tmp_path)
    assert sorted(p.name for p in layout.dags.iterdir()) == ["airflow_maintenance.py", "kratos.py"]
    assert (layout.dags / "kratos.py").resolve() == REPO_ROOT / "dags" / "kratos.py"


def test_an_unknown_system_names_the_five(capsys: pytest.CaptureFixture[str]) -> None:
    assert replicas.main(["start", "wekno"]) == 2
    err = capsys.readouterr().err
    assert "wekno" in err and all(system in err for system in SYSTEMS), err


def test_config_backup_names_the_absolute_env_file_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica's .env lies outside its working dir: the config backup still archives it
    under a plain relative name (a leading '/' made the backup's config.dump fail)."""
    from opsflow.runtimes.compose import ComposeProject

    layout = generated("kratos", tmp_path, monkeypatch)
    project = ComposeProject.for_stack(load_stack_file(layout.stack_file), layout.stacks)
    names = dict(project.config_paths())
    assert names[f"compose/{str(layout.env_file).lstrip('/')}"] == layout.env_file
    assert all(not name.split("/", 1)[1].startswith("/") for name in names)
