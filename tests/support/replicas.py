"""The replicas of the five real systems (include/replicas/<system>) run under Airflow.

A systems test runs the *shipped* stack file: it writes an overlay that ``extends``
include/stacks/<system>.yaml and changes only what an operator of another machine would
(project name, working dir, env file, image names, backup dir, a quicker gate). The
replica is copied into pytest's temp dir, where its ``.env`` holds the test's free ports,
passwords and image prefix, so a run never writes into the checkout. Project names, image
prefixes, ports, Airflow homes and state dirs are the test worker's own
(``opsflow-sys-<system>-<worker>``): they never meet the demo's or the e2e tier's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsflow.runtimes.compose import compose_base_argv
from support import REPO_ROOT
from support.demo import AIRFLOW_CLI, without_demo_settings
from support.services import free_port, service_unavailable

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
REPLICAS_DIR = REPO_ROOT / "include" / "replicas"
STACKS_DIR = REPO_ROOT / "include" / "stacks"


def system_project(system: str) -> str:
    """Compose project and image prefix of one system's test run on this worker."""
    return f"opsflow-sys-{system}-{WORKER}" if WORKER else f"opsflow-sys-{system}"


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def require_engine() -> None:
    """Docker Engine, Compose v2 and the local base image, or a skip (a failure under CI)."""
    if not shutil.which("docker"):
        service_unavailable("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        service_unavailable("Docker Engine is not running")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        service_unavailable("Docker Compose v2 is not installed")
    base = ["docker", "image", "inspect", "debian:bookworm-slim"]
    if subprocess.run(base, capture_output=True, check=False).returncode != 0:
        service_unavailable("the local debian:bookworm-slim image is missing (scripts/setup.sh)")


@dataclass
class Replica:
    """One system's replica deployed under its own project, Airflow home and state dir."""

    system: str
    project: str
    workdir: Path
    stack_file: Path
    home: Path
    env: dict[str, str]
    ports: dict[str, int]
    files: list[str] = field(default_factory=lambda: ["docker-compose.yml"])

    @property
    def root(self) -> Path:
        """The test's directory: the replica's copy, stack files, backups, Airflow home."""
        return self.workdir.parents[2]

    @property
    def state(self) -> Path:
        return Path(self.env["OPSFLOW_STATE_DIR"]) / self.system

    def dags_test(
        self, workflow: str, conf: dict[str, Any], *extra_env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """``airflow dags test <system>__<workflow> -c CONF`` with this replica's settings."""
        env = dict(self.env)
        for more in extra_env:
            env.update(more)
        argv = [str(AIRFLOW_CLI), "dags", "test", f"{self.system}__{workflow}", "-c",
                json.dumps(conf)]  # fmt: skip
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)

    def compose(self, *args: str, version: str = "0") -> str:
        argv = [*compose_base_argv(self.project, self.workdir, self.files, ".env"), *args]
        env = {**self.env, "OPSFLOW_VERSION": version}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
        return done.stdout

    def build(self, version: str) -> None:
        """``docker compose build`` of one release: later builds of it are cache hits."""
        self.compose("build", version=version)

    def running_images(self) -> dict[str, str]:
        rows = self.compose("ps", "--format", "json").splitlines()
        return {json.loads(r)["Service"]: json.loads(r)["Image"] for r in rows if r.strip()}

    def container_health(self, service: str) -> str:
        container = self.compose("ps", "--quiet", service).strip()
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{.State.Health.Status}}", container],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans")

    def reset(self) -> None:
        """No containers, volumes, ledger or lock: a machine that never ran the stack."""
        self.down()
        shutil.rmtree(self.state, ignore_errors=True)

    # ------------------------------------------------------------------------ ledger

    def entries(self) -> list[dict[str, Any]]:
        """The ledger as plain JSON lines, folded by entry id (newest line wins)."""
        path = self.state / "ledger.jsonl"
        folded: dict[str, dict[str, Any]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            folded[entry["entry_id"]] = entry
        return list(folded.values())

    def current(self) -> str | None:
        done = [
            e
            for e in self.entries()
            if e["action"] in ("deploy", "upgrade", "rollback") and e["outcome"] == "succeeded"
        ]
        return str(max(done, key=lambda e: e["ended_at"])["version"]) if done else None

    def last(self, action: str) -> dict[str, Any]:
        return max(
            (e for e in self.entries() if e["action"] == action), key=lambda e: e["started_at"]
        )

    def lock_free(self) -> bool:
        return not (self.state / "lock.json").exists()


def write_env(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)


def password() -> str:
    return secrets.token_hex(16)


@contextmanager
def replica(
    system: str,
    root: Path,
    *,
    ports: dict[str, int],
    dotenv: dict[str, str],
    overlay: dict[str, Any],
    connections: dict[str, dict[str, Any]],
    allowed_root: Path,
    files: tuple[str, ...] = ("docker-compose.yml",),
) -> Iterator[Replica]:
    """The replica copied to ``root``, its overlay stack file and a migrated Airflow home.

    ``overlay`` is merged into ``extends``/``runtime`` written here (project, working dir,
    env file); ``connections`` become ``AIRFLOW_CONN_*`` variables; ``files`` are the
    compose files of the replica's helpers (the stack file's own, where it names others).
    """
    project = system_project(system)
    # The copy keeps the checkout's layout, so build contexts shared with the demo
    # (``../../../docker/postgres``) resolve the same way there.
    workdir = root / REPLICAS_DIR.relative_to(REPO_ROOT) / system
    shutil.copytree(
        REPLICAS_DIR / system, workdir, ignore=shutil.ignore_patterns("__pycache__", ".env")
    )
    (root / "docker").symlink_to(REPO_ROOT / "docker", target_is_directory=True)
    write_env(workdir / ".env", dotenv)
    stacks = root / "stacks"
    stacks.mkdir()
    document: dict[str, Any] = {
        "extends": str(STACKS_DIR / f"{system}.yaml"),
        "runtime": {"project": project, "working_dir": str(workdir), "env_file": ".env"},
    }
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    stack_file = stacks / f"{system}.yaml"
    stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
    home = root / "airflow-home"
    env = {
        **{
            k: v
            for k, v in without_demo_settings(os.environ).items()
            if not k.startswith(system.upper())
        },
        "OPSFLOW_AIRFLOW_HOME": str(home),
        "OPSFLOW_STACKS_DIR": str(stacks),
        "OPSFLOW_STATE_DIR": str(root / "state"),
        "OPSFLOW_ALLOWED_ROOTS": f"{allowed_root}:/var/log/opsflow:/var/backups/opsflow",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        **{
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)
            for conn_id, conn in connections.items()
        },
    }
    migrate = subprocess.run(
        [str(AIRFLOW_CLI), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    deployed = Replica(system, project, workdir, stack_file, home, env, ports, list(files))
    deployed.down()
    try:
        yield deployed
    finally:
        deployed.down()


def free_ports(*names: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(names):
        ports = {name: free_port() for name in names}
    return ports


# ------------------------------------------------------------------------- databases


def table_digests(conn: Any) -> dict[str, tuple[int, str]]:
    """Row count and an ordered md5 of every row of every user table (plain SQL), through
    an open psycopg connection: the same digest as support.demo.table_digests."""
    from psycopg import sql

    tables = list(
        conn.execute(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
    )
    digests = {}
    for table in tables:
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            "FROM {} AS t"
        ).format(sql.Identifier(*table))
        row = conn.execute(query).fetchone()
        assert row is not None
        digests[".".join(table)] = (int(row[0]), str(row[1]))
    return digests


# ---------------------------------------------------------------------------- images


def load_dated_image(reference: str, created: str) -> str:
    """Load a one-file image tagged ``reference`` whose creation time is ``created``
    (RFC 3339): an old release image as image pruning sees it, without building one.
    Returns the image id."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = f"{reference} {created}\n".encode()
        info = tarfile.TarInfo("release.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Cmd": ["/bin/false"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [reference], "Layers": ["layer/layer.tar"]}]
    ).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, content in (
            ("layer/layer.tar", layer_bytes),
            (config_name, config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    subprocess.run(["docker", "load"], input=archive.getvalue(), capture_output=True, check=True)
    return "sha256:" + config_name.removesuffix(".json")


def image_exists(reference: str) -> bool:
    found = subprocess.run(["docker", "image", "inspect", reference], capture_output=True)
    return found.returncode == 0


def image_tags(repository: str) -> set[str]:
    out = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(out.stdout.split())
