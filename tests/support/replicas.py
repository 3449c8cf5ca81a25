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
import sys
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from opsflow.runtimes.compose import compose_base_argv
from support import REPO_ROOT, dag_tests
from support.demo import AIRFLOW_CLI, without_demo_settings
from support.receivers import HttpCapture, SmtpCapture
from support.services import free_port, get_json, service_unavailable

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
REPLICAS_DIR = REPO_ROOT / "include" / "replicas"
STACKS_DIR = REPO_ROOT / "include" / "stacks"


def system_project(system: str) -> str:
    """Compose project and image prefix of one system's test run on this worker."""
    return f"opsflow-sys-{system}-{WORKER}" if WORKER else f"opsflow-sys-{system}"


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def workdir_of(system: str, root: Path) -> Path:
    """Where ``replica`` copies a system's replica under ``root``: the checkout's layout,
    so a fixture can name paths in the overlay before the copy exists."""
    return root / REPLICAS_DIR.relative_to(REPO_ROOT) / system


def shipped_stack(system: str) -> dict[str, Any]:
    """The shipped include/stacks/<system>.yaml, for overlays that move one of its keys."""
    loaded = yaml.safe_load((STACKS_DIR / f"{system}.yaml").read_text(encoding="utf-8"))
    return dict(loaded)


def shipped_log_roots(system: str, logs: Path) -> list[dict[str, Any]]:
    """The shipped log rules with this machine's directory: what an operator whose checkout
    is elsewhere writes in the overlay (lists replace, so every root is repeated)."""
    return [{**root, "path": str(logs)} for root in shipped_stack(system)["logs"]["roots"]]


def untracked_in(source: Path) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree`` filter leaving out what git ignores under ``source``: what a user's
    ``make replica`` left in the checkout (logs, configs made from examples, wheels, .env)
    must not reach a test's copy."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "--others", "--ignored", "--exclude-standard",
         "--directory", "."],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    ignored = {(source / line.rstrip("/")).resolve() for line in listed}

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (Path(directory, n).resolve() in ignored)}

    return ignore


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

    @property
    def backups(self) -> Path:
        """The local store every fixture's overlay names (``backup.local_dir``)."""
        return self.root / "backups"

    def dags_test(
        self, workflow: str, conf: dict[str, Any], *extra_env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        """``airflow dags test <system>__<workflow> -c CONF`` with this replica's settings."""
        env = dict(self.env)
        for more in extra_env:
            env.update(more)
        argv = ["dags", "test", f"{self.system}__{workflow}", "-c", json.dumps(conf)]
        return dag_tests.dags_test(argv, env, self.env)

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

    def at(
        self, release: str, serving: Callable[[Replica, str], bool], *, via: str = "deploy"
    ) -> None:
        """Make ``release`` the current, healthy release, deploying from nothing if needed.

        The tests run in file order, but each must start from the release it names even
        when an earlier one failed half-way. ``via`` is the workflow that then takes 1.0.0
        to ``release``: ``deploy``, or ``upgrade`` where a module reaches later releases
        the way its system's guide does.
        """
        if self.current() == release and serving(self, release) and self.lock_free():
            return
        self.reset()
        steps = [("deploy", "1.0.0")] + ([(via, release)] if release != "1.0.0" else [])
        for workflow, version in steps:
            result = self.dags_test(workflow, {"version": version})
            assert result.returncode == 0, out_of(result)[-4000:]
        assert serving(self, release)

    # ------------------------------------------------------------------------ backups

    def verified_backup(
        self, sources: set[str]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Run ``<system>__backup``: it must succeed and add exactly one manifest, verified,
        whose sources are exactly ``sources`` (the stack file's), each verified by its own
        restore. Returns the manifest and its sources by name, for the system's own checks."""
        known = backup_ids(self.backups)

        result = self.dags_test("backup", {})
        out = out_of(result)

        assert result.returncode == 0, out[-6000:]
        manifests = new_manifests(self.backups, known)
        assert len(manifests) == 1, out[-4000:]
        manifest = manifests[0]
        assert manifest["status"] == "verified"
        by_name = {source["name"]: source for source in manifest["sources"]}
        assert set(by_name) == sources
        for source in by_name.values():
            assert source["verification"]["status"] == "passed", source
        return manifest, by_name

    def artifact(self, manifest: dict[str, Any], source: dict[str, Any]) -> tarfile.TarFile:
        """A source's first artifact, decompressed as ``zstd -dc`` does, opened as a tar:
        what a restore would unpack, read without opsflow's own code."""
        path = self.backups / manifest["backup_id"] / source["artifacts"][0]["name"]
        raw = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
        return tarfile.open(fileobj=io.BytesIO(raw))

    # ------------------------------------------------------------------- its services

    @property
    def _conn_prefix(self) -> str:
        """How the shipped stack files name their connections: ``ai_doc_postgres``."""
        return self.system.replace("-", "_")

    def connection(self, conn_id: str) -> dict[str, Any]:
        """The Airflow connection the fixture gave the workflows, as they see it."""
        return dict(json.loads(self.env[f"AIRFLOW_CONN_{conn_id.upper()}"]))

    def pg(self, conn_id: str = "") -> Any:
        """An autocommit psycopg connection through ``<system>_postgres`` (or ``conn_id``):
        the tests read the database the workflows back up and restore."""
        import psycopg

        conn = self.connection(conn_id or f"{self._conn_prefix}_postgres")
        return psycopg.connect(
            host="127.0.0.1", port=conn["port"], user=conn["login"], password=conn["password"],
            dbname=conn["schema"], autocommit=True,
        )  # fmt: skip

    def digests(self, conn_id: str = "") -> dict[str, tuple[int, str]]:
        """``table_digests`` of the database behind ``pg``: equal before and after a
        rollback means every table came back."""
        with self.pg(conn_id) as conn:
            return table_digests(conn)

    def bucket(self, conn_id: str = "") -> Any:
        """A boto3 S3 client through ``<system>_minio`` (or ``conn_id``), an ``aws``
        connection to the replica's object store."""
        import boto3

        conn = self.connection(conn_id or f"{self._conn_prefix}_minio")
        return boto3.client(
            "s3", endpoint_url=conn["extra"]["endpoint_url"], region_name="us-east-1",
            aws_access_key_id=conn["login"], aws_secret_access_key=conn["password"],
        )  # fmt: skip

    def url(self, port: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"

    def answer(self, port: str, path: str) -> tuple[int, dict[str, Any]]:
        """Status and JSON of a GET on a published port; 0 and the error when there is no
        JSON answer (not listening, or a gateway's HTML error page)."""
        try:
            return get_json(self.url(port, path))
        except (OSError, ValueError) as err:
            return 0, {"error": str(err)}


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
    workdir = workdir_of(system, root)
    shutil.copytree(REPLICAS_DIR / system, workdir, ignore=untracked_in(REPLICAS_DIR / system))
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


def fetch_moto_wheels(context: Path) -> None:
    """The MinIO stand-in's pinned wheels, fetched by the host's pip (README.md): a build
    container has no trusted route to PyPI, so the image installs them with --no-index."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "-r", str(context / "requirements.txt"),
            "-d", str(context / "wheels")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"


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


def post_json(url: str, body: dict[str, Any], *, timeout: float = 5) -> dict[str, Any]:
    """POST ``body`` as JSON to an app's API, which must answer 201 Created with JSON."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 201
        return dict(json.loads(response.read()))


# --------------------------------------------------------------------------- backups


def backup_ids(backups: Path) -> set[str]:
    """The backups a local store holds (a directory with a manifest each)."""
    return {p.parent.name for p in backups.glob("*/manifest.json")}


def new_manifests(backups: Path, known: set[str]) -> list[dict[str, Any]]:
    """The manifests of the backups taken since ``known`` (``backup_ids`` before the run),
    oldest first: a run must add exactly one."""
    return [
        json.loads(p.read_text())
        for p in sorted(backups.glob("*/manifest.json"))
        if p.parent.name not in known
    ]


# ---------------------------------------------------------------------------- alerts


def slack_connection(conn_id: str, receiver: HttpCapture, token: str) -> dict[str, str]:
    """A shipped Slack route (``conn_id``) pointed at a real receiver: the webhook URL is
    ``<receiver>/slack/<token>``."""
    conn = {"conn_type": "slackwebhook", "host": f"{receiver.base_url}/slack",
            "password": token}  # fmt: skip
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)}


def one_alert(receiver: HttpCapture, token: str, *, alone: bool = False) -> str:
    """The text of the single Slack alert the failed run sent to ``token``'s webhook;
    ``alone``: nothing else reached the receiver either (the stack's only route)."""
    receiver.wait_for(1)
    slack = [r for r in receiver.requests if r["path"] == f"/slack/{token}"]
    assert len(slack) == 1, receiver.requests
    if alone:
        assert len(receiver.requests) == 1, receiver.requests
    return "\n".join(strings_in(json.loads(slack[0]["body"])))


def one_mail(smtp: SmtpCapture) -> str:
    """The body of the single alert mail the failed run sent."""
    mails = smtp.wait_for(1)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    payload = mails[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON document (a Slack message's text and blocks)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [text for item in value for text in strings_in(item)]
    return []


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


def load_old_releases(repository: str) -> list[str]:
    """Two release images (0.8.0, 0.9.0) of ``repository`` created in January 2020: older
    than every release built here, so the rules that keep the newest ones must prune them."""
    old = [f"{repository}:0.8.0", f"{repository}:0.9.0"]
    for number, reference in enumerate(old):
        load_dated_image(reference, f"2020-01-0{number + 1}T00:00:00Z")
    return old


def created_ns(reference: str) -> int:
    """An image's creation time in nanoseconds (Docker's RFC 3339 with up to 9 digits)."""
    text = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Created}}", reference],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return int(seconds) * 10**9 + int((fraction + "0" * 9)[:9])


def beyond_the_kept(repository: str, keep: int = 3) -> set[str]:
    """The tags of ``repository`` log cleanup may prune (logs.keep_images_releases, default
    3): neither among the newest ``keep`` by creation (ties by name) nor the current
    (1.1.0) or previous (1.0.0) release."""
    tags = sorted(image_tags(repository), key=lambda ref: (-created_ns(ref), ref))
    protected = {f"{repository}:1.1.0", f"{repository}:1.0.0", *tags[:keep]}
    return set(tags) - protected
