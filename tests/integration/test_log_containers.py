"""Container log limits and image pruning against the real Docker Engine.

A throwaway compose project ``opsflow-logtest`` runs one container with the required
json-file limits, one without any, and one that has exited; tiny images
``opsflow-logtest/app:<version>`` are built from the local base image. Everything created
here is removed in the fixture's ``finally``, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opsflow.logs.containers import (
    ContainerLogs,
    ImagePrunePlan,
    container_log_report,
    log_limit_violations,
    plan_image_pruning,
    prune_images,
)
from opsflow.releases.ledger import Ledger, LedgerEntry
from opsflow.stack.loader import parse_stack
from opsflow.stack.model import Stack
from support.services import service_unavailable

PROJECT = "opsflow-logtest"
REPO = "opsflow-logtest/app"
OUTSIDER = "opsflow-logtest-outsider"
# Oldest first; each build is a distinct image with its own creation time.
VERSIONS = ["0.8.0", "0.9.0", "1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"]
RUNNING = "1.1.0"

COMPOSE_FILE = """\
services:
  app:
    image: opsflow-logtest/app:${OPSFLOW_VERSION:?}
    command: ["sh", "-c", "echo hello from app; exec sleep infinity"]
    logging:
      driver: json-file
      options: {max-size: "10m", max-file: "3"}
  nolimits:
    image: debian:bookworm-slim
    command: ["sh", "-c", "echo hello without limits; exec sleep infinity"]
  job:
    image: opsflow-logtest/app:0.9.0
    command: ["sh", "-c", "echo done"]
    logging:
      driver: json-file
      options: {max-size: "1m", max-file: "2"}
"""


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def _exists(reference: str) -> bool:
    return _docker("image", "inspect", reference, check=False).returncode == 0


def _image_id(reference: str) -> str:
    return _docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()


def _remove_everything(compose_argv: list[str]) -> None:
    """Containers, network, volumes and images of this test; safe to call at any point."""
    label = f"label=com.docker.compose.project={PROJECT}"
    if Path(compose_argv[-1]).exists():
        subprocess.run(
            [*compose_argv, "down", "--timeout", "0", "--volumes", "--remove-orphans"],
            env={**os.environ, "OPSFLOW_VERSION": RUNNING},
            capture_output=True,
            timeout=120,
            check=False,
        )
    containers = _docker("ps", "-aq", "--filter", label, check=False).stdout.split()
    _docker("rm", "-f", "-v", OUTSIDER, *containers, check=False)
    volumes = _docker("volume", "ls", "-q", "--filter", label, check=False).stdout.split()
    if volumes:
        _docker("volume", "rm", "-f", *volumes, check=False)
    _docker("network", "rm", f"{PROJECT}_default", check=False)
    listing = _docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", REPO, check=False)
    rows = [line.split() for line in listing.stdout.splitlines() if line.strip()]
    if rows:
        _docker("rmi", *[ref for ref, _ in rows], check=False)
        _docker("rmi", *{image_id for _, image_id in rows}, check=False)


@dataclass
class LogTest:
    stack: Stack
    ids: dict[str, str]


@pytest.fixture(scope="module")
def logtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogTest]:
    if shutil.which("docker") is None:
        service_unavailable("docker CLI not found (run scripts/setup-docker.sh)")
    if _docker("compose", "version", check=False).returncode != 0:
        service_unavailable("Docker Compose v2 missing (run scripts/setup-docker.sh)")
    if not _exists("debian:bookworm-slim"):
        service_unavailable(
            "Docker Engine or debian:bookworm-slim unavailable (scripts/setup-docker.sh)"
        )

    workdir = tmp_path_factory.mktemp("logtest")
    compose_file = workdir / "docker-compose.yml"
    compose = ["docker", "compose", "--project-name", PROJECT, "--file", str(compose_file)]
    _remove_everything(compose)  # leftovers of an interrupted earlier run
    try:
        compose_file.write_text(COMPOSE_FILE, encoding="utf-8")
        for version in VERSIONS:
            subprocess.run(
                ["docker", "build", "--no-cache", "--quiet", "--label",
                 f"opsflow.logtest.version={version}", "--tag", f"{REPO}:{version}", "-"],
                input="FROM debian:bookworm-slim\n", capture_output=True, text=True,
                timeout=120, check=True,
            )  # fmt: skip
        # A second tag of the current release's image: pruning may only untag it.
        _docker("tag", f"{REPO}:1.2.0", f"{REPO}:candidate")
        # A container outside the project keeps 0.8.0 in use: the engine must refuse.
        _docker("create", "--name", OUTSIDER, f"{REPO}:0.8.0", "true")
        subprocess.run(
            [*compose, "up", "--detach", "--no-build", "--pull", "never"],
            env={**os.environ, "OPSFLOW_VERSION": RUNNING},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        state = workdir / "state"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OPSFLOW_STATE_DIR", str(state))
            # 1.0.0, then 1.3.0, then a rollback to 1.2.0: current 1.2.0, previous 1.3.0.
            ledger = Ledger("logtest")
            for number, version in enumerate(["1.0.0", "1.3.0", "1.2.0"]):
                action = "rollback" if number == 2 else "deploy"
                ledger.write(
                    LedgerEntry(
                        entry_id=f"entry-{number}",
                        stack="logtest",
                        action=action,
                        version=version,
                        run_id=f"run-{number}",
                        dag_id=f"logtest__{action}",
                        triggered_by="test",
                        started_at=f"2026-01-0{number + 1}T10:00:00+00:00",
                        ended_at=f"2026-01-0{number + 1}T10:05:00+00:00",
                        outcome="succeeded",
                        images={"app": {"image": f"{REPO}:{version}", "id": None}},
                    )
                )
            stack = parse_stack(
                {
                    "name": "logtest",
                    "runtime": {"kind": "compose", "project": PROJECT, "working_dir": str(workdir)},
                    "services": [
                        {"name": "app", "image": REPO, "versioned": True},
                        {"name": "nolimits", "image": "debian", "versioned": False},
                    ],
                    "logs": {"container_limits": {"required": True}, "keep_images_releases": 2},
                },
                workdir / "logtest.yaml",
            )
            ids = {version: _image_id(f"{REPO}:{version}") for version in VERSIONS}
            yield LogTest(stack=stack, ids=ids)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{exc.cmd} exited {exc.returncode}:\n{exc.stdout}\n{exc.stderr}")
    finally:
        _remove_everything(compose)


def _report_when_logged(stack: Stack) -> list[ContainerLogs]:
    """The report once every container has written its line (containers start async)."""
    deadline = time.monotonic() + 20
    while True:
        report = container_log_report(stack)
        states = {entry.service: entry.state for entry in report}
        started = states.keys() == {"app", "nolimits", "job"} and states["job"] == "exited"
        if started and all(entry.log_bytes for entry in report):
            return report
        if time.monotonic() > deadline:
            pytest.fail(f"containers did not log in time: {report}")
        time.sleep(0.2)


@pytest.mark.integration
def test_report_and_violations(logtest: LogTest) -> None:
    report = _report_when_logged(logtest.stack)
    entries = {entry.service: entry for entry in report}
    app, nolimits, job = entries["app"], entries["nolimits"], entries["job"]
    assert (app.container, app.log_driver, app.max_size, app.max_file) == (
        f"{PROJECT}-app-1",
        "json-file",
        "10m",
        3,
    )
    assert app.state == "running" and job.state == "exited"
    assert (nolimits.log_driver, nolimits.max_size, nolimits.max_file) == ("json-file", None, None)
    for entry in report:
        assert entry.log_path and Path(entry.log_path).is_file()
        assert isinstance(entry.log_bytes, int) and entry.log_bytes > 0
        assert entry.rotated_bytes == 0 and entry.note is None
    assert b"hello from app" in Path(str(app.log_path)).read_bytes()
    json.dumps([entry.to_dict() for entry in report])

    violations = log_limit_violations(logtest.stack, report)
    assert violations == [
        f"service nolimits (container {PROJECT}-nolimits-1) runs without log limits: "
        "required max-size=10m max-file=3, found driver json-file with no max-size"
    ]
    # Limits not required by the stack file: nothing to complain about.
    data = logtest.stack.model_dump()
    data["logs"]["container_limits"]["required"] = False
    assert log_limit_violations(Stack.model_validate(data), report) == []


@pytest.mark.integration
def test_pruning_keeps_every_rollback_image(logtest: LogTest) -> None:
    plan = plan_image_pruning(logtest.stack, keep_releases=2)
    assert plan.releases == ["1.2.0", "1.3.0"]
    kept = {tag.tag: tag.reasons for tag in plan.kept}
    assert kept == {
        "1.5.0": ("newest 2",),
        "1.4.0": ("newest 2",),
        "1.3.0": ("previous release",),
        "1.2.0": ("current release",),
        RUNNING: (f"running container {PROJECT}-app-1",),
        "0.9.0": (f"exited container {PROJECT}-job-1",),
    }
    removable = {tag.tag: tag for tag in plan.removable}
    assert set(removable) == {"0.8.0", "1.0.0", "candidate"}
    assert removable["candidate"].action == "untag"
    assert removable["candidate"].shared_with == (f"{REPO}:1.2.0",)
    assert removable["1.0.0"].action == removable["0.8.0"].action == "remove"
    summary = plan.summary()
    assert summary[0] == (
        f"kept: {REPO}:1.5.0 (newest 2), 1.4.0 (newest 2), 1.3.0 (previous release), "
        f"1.2.0 (current release), {RUNNING} (running container {PROJECT}-app-1), "
        f"0.9.0 (exited container {PROJECT}-job-1)"
    )
    # The plan survives the trip through XCom (JSON) unchanged.
    assert ImagePrunePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan

    every_tag = [f"{REPO}:{version}" for version in VERSIONS] + [f"{REPO}:candidate"]
    lines = prune_images(plan, dry_run=True)
    assert all(_exists(reference) for reference in every_tag)
    assert f"would remove {REPO}:1.0.0" in "\n".join(lines)
    assert any(line.startswith(f"would untag {REPO}:candidate") for line in lines)

    lines = prune_images(plan, dry_run=False)
    text = "\n".join(lines)
    assert f"removed {REPO}:1.0.0 (image {logtest.ids['1.0.0'][7:19]} deleted)" in text
    assert not _exists(f"{REPO}:1.0.0") and not _exists(logtest.ids["1.0.0"])
    # Untagged only: the current release's image and its own tag are still there.
    assert f"untagged {REPO}:candidate" in text
    assert not _exists(f"{REPO}:candidate")
    assert _exists(logtest.ids["1.2.0"]) and _image_id(f"{REPO}:1.2.0") == logtest.ids["1.2.0"]
    # In use by a container outside the project: refused, reported, not raised.
    assert f"refused by the engine: {REPO}:0.8.0" in text
    assert _exists(f"{REPO}:0.8.0")
    for version in ["0.9.0", RUNNING, "1.2.0", "1.3.0", "1.4.0", "1.5.0"]:
        assert _image_id(f"{REPO}:{version}") == logtest.ids[version]

    # A second run finds nothing new to remove but the refused tag.
    again = plan_image_pruning(logtest.stack, keep_releases=2)
    assert [tag.tag for tag in again.removable] == ["0.8.0"]


# --------------------------------------------------------------------------- pure rules


def _entry(driver: str, size: str | None, files: int | None) -> ContainerLogs:
    return ContainerLogs("api", "demo-api-1", driver, size, files, None, None)


@pytest.fixture
def strict_stack(tmp_path: Path) -> Stack:
    return parse_stack(
        {
            "name": "demo",
            "runtime": {"kind": "compose", "project": "demo", "working_dir": str(tmp_path)},
            "services": [{"name": "api", "image": "demo/api"}],
            "logs": {"container_limits": {"required": True, "max_size": "10m", "max_file": 3}},
        },
        tmp_path / "demo.yaml",
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (_entry("json-file", "10m", 3), None),
        (_entry("json-file", "10240k", 2), None),
        (_entry("json-file", "5m", None), None),  # json-file keeps one file unless told
        (_entry("json-file", None, 3), "runs without log limits: required max-size=10m "
         "max-file=3, found driver json-file with no max-size"),
        (_entry("json-file", "20m", 3), "runs with weaker log limits than required: required "
         "max-size=10m max-file=3, found driver json-file max-size=20m max-file=3"),
        (_entry("json-file", "1g", 3), "weaker"),
        (_entry("json-file", "10m", 5), "found driver json-file max-size=10m max-file=5"),
        (_entry("local", None, None), "found driver local max-size=20m (default) "
         "max-file=5 (default)"),
        (_entry("local", "10m", 3), None),
        (_entry("syslog", None, None), "runs without log limits: required max-size=10m "
         "max-file=3, found driver syslog, which the engine does not rotate"),
        (_entry("none", None, None), None),
    ],
)  # fmt: skip
def test_limit_rules(strict_stack: Stack, entry: ContainerLogs, expected: str | None) -> None:
    violations = log_limit_violations(strict_stack, [entry])
    if expected is None:
        assert violations == []
    else:
        assert len(violations) == 1
        assert violations[0].startswith("service api (container demo-api-1) runs ")
        assert expected in violations[0]


def test_one_message_per_service_and_problem(strict_stack: Stack) -> None:
    replicas = [
        ContainerLogs("api", f"demo-api-{n}", "json-file", None, None, None, None) for n in (1, 2)
    ]
    assert log_limit_violations(strict_stack, replicas) == [
        "service api (containers demo-api-1, demo-api-2) runs without log limits: "
        "required max-size=10m max-file=3, found driver json-file with no max-size"
    ]
