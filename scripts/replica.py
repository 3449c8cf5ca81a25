#!/usr/bin/env python3
"""`make replica SYSTEM=<name>`: one replica of include/replicas/ under Airflow standalone.

A replica runs the *shipped* include/stacks/<system>.yaml, as `make demo` runs the demo's,
through an overlay of the few keys an operator of this machine changes. What those are
lives in include/replicas/<system>/replica.yaml (the .env, the Airflow connections, the
overlay keys, the UI port); this program writes from it, under .replicas/<system>/
(git-ignored):

  .env               the compose file's variables; passwords generated once, then kept
  connections.json   the Airflow connections the stack file names, built from the .env
  stacks/<system>.yaml  the overlay: `extends` the shipped file, project, working dir
                     (the replica in this checkout), env file, backup dir
  dags/              the system's DAG file only (other stacks' files would be import errors)
  airflow-home/, state/, backups/  the replica's own Airflow, ledger and backups

then runs scripts/demo.sh for that stack with every setting of its own (Airflow home, UI
port, log-server ports, state and stacks dir), so it never meets a running `make demo`.
Secrets go only into 0600 files and the standalone's environment, never to the output.

  scripts/replica.py start SYSTEM           prepare, then deploy 1.0.0 and back up
  scripts/replica.py stop SYSTEM            stop its Airflow, its stack (volumes kept), registry
  scripts/replica.py generate SYSTEM        only write the files above
  scripts/replica.py airflow SYSTEM ARGS... the Airflow CLI of that replica
  scripts/replica.py check SYSTEM           exit 2 naming the five when SYSTEM is none of them
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPLICAS_DIR = REPO / "include" / "replicas"
STACKS_DIR = REPO / "include" / "stacks"
DAGS_DIR = REPO / "dags"
STATE_ROOT = REPO / ".replicas"
PYTHON = REPO / ".venv" / "bin" / "python"
DEMO_SCRIPT = REPO / "scripts" / "demo.sh"
AIRFLOW_CLI = REPO / "scripts" / "airflow"
REGISTRY_BIN = Path("/usr/bin/docker-registry")
SPEC_NAME = "replica.yaml"
DEFAULT_ROOTS = ("/var/log/opsflow", "/var/backups/opsflow")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)$")
SPEC_KEYS = {"releases", "airflow", "env", "connections", "overlay", "look_at", "registry",
             "wheels", "writable_dirs"}  # fmt: skip


class ReplicaError(Exception):
    """What stops a replica from starting; the message names the file, field and value."""


# ============================================================================ the spec


@dataclass(frozen=True)
class Secret:
    """A value generated once: ``size`` random bytes, written as hex."""

    size: int


@dataclass(frozen=True)
class Registry:
    """EchoMind's images are pulled: a local registry must hold every release first."""

    address: str  # host:port, ${...} of the .env
    compose_files: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """include/replicas/<system>/replica.yaml, checked."""

    system: str
    path: Path
    releases: tuple[str, ...]
    ui_port: int
    worker_log_port: int
    trigger_log_port: int
    env: dict[str, str | Secret]  # in file order; a fixed value may name earlier keys
    connections: dict[str, dict[str, Any]]
    overlay: dict[str, Any]
    look_at: dict[str, str]
    registry: Registry | None = None
    wheels: tuple[str, ...] = ()
    writable_dirs: tuple[str, ...] = ()

    @property
    def workdir(self) -> Path:
        return self.path.parent

    @property
    def secrets(self) -> dict[str, int]:
        return {k: v.size for k, v in self.env.items() if isinstance(v, Secret)}


def systems(replicas_dir: Path = REPLICAS_DIR) -> list[str]:
    """The replicas this checkout ships: each directory with a replica.yaml."""
    return sorted(p.parent.name for p in replicas_dir.glob(f"*/{SPEC_NAME}"))


def check_system(system: str, replicas_dir: Path = REPLICAS_DIR) -> None:
    known = systems(replicas_dir)
    if system not in known:
        given = f"SYSTEM={system!r}" if system else "no SYSTEM given"
        raise ReplicaError(f"{given}: a replica is one of {', '.join(known)} "
                           f"(include/replicas/<name>/{SPEC_NAME})")  # fmt: skip


def _port(path: Path, where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1024 <= value <= 65535:
        raise ReplicaError(f"{path}: {where} must be a port number 1024-65535 (got {value!r})")
    return value


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReplicaError(f"{path}: {where} must be a mapping (got {value!r})")
    return value


def _strings(path: Path, where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ReplicaError(f"{path}: {where} must be a list of strings (got {value!r})")
    return tuple(value)


def load_spec(system: str, replicas_dir: Path = REPLICAS_DIR) -> Spec:
    import yaml

    check_system(system, replicas_dir)
    path = replicas_dir / system / SPEC_NAME
    try:
        data = _mapping(path, "(top level)", yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as err:
        raise ReplicaError(f"{path}: not valid YAML: {err}") from None
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ReplicaError(f"{path}: unknown keys {unknown} (known: {sorted(SPEC_KEYS)})")
    airflow = _mapping(path, "airflow", data.get("airflow"))
    env: dict[str, str | Secret] = {}
    for key, value in _mapping(path, "env", data.get("env")).items():
        if not ENV_KEY.match(str(key)):
            raise ReplicaError(f"{path}: env.{key}: not a variable name")
        if isinstance(value, dict):
            size = value.get("secret")
            if set(value) != {"secret"} or not isinstance(size, int) or not 16 <= size <= 64:
                raise ReplicaError(
                    f"{path}: env.{key}: a generated value is {{secret: N}}, N bytes 16-64 "
                    f"(got {value!r})"
                )
            env[key] = Secret(size)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            env[key] = str(value)
        else:
            raise ReplicaError(f"{path}: env.{key}: a string, a number or {{secret: N}}")
    registry = None
    if "registry" in data:
        raw = _mapping(path, "registry", data["registry"])
        files = _strings(path, "registry.compose_files", raw.get("compose_files"))
        registry = Registry(str(raw.get("address", "")), files)
    connections = _mapping(path, "connections", data.get("connections"))
    return Spec(
        system=system,
        path=path,
        releases=_strings(path, "releases", [str(r) for r in data.get("releases") or []]),
        ui_port=_port(path, "airflow.ui_port", airflow.get("ui_port")),
        worker_log_port=_port(path, "airflow.worker_log_port", airflow.get("worker_log_port")),
        trigger_log_port=_port(path, "airflow.trigger_log_port", airflow.get("trigger_log_port")),
        env=env,
        connections={k: _mapping(path, f"connections.{k}", v) for k, v in connections.items()},
        overlay=_mapping(path, "overlay", data.get("overlay") or {}),
        look_at={
            str(k): str(v) for k, v in _mapping(path, "look_at", data.get("look_at") or {}).items()
        },
        registry=registry,
        wheels=_strings(path, "wheels", data.get("wheels") or []),
        writable_dirs=_strings(path, "writable_dirs", data.get("writable_dirs") or []),
    )


def interpolate(value: Any, variables: Mapping[str, str], where: str) -> Any:
    """``value`` with every ``${NAME}`` of a string replaced; a ``port`` becomes a number."""
    if isinstance(value, dict):
        done = {k: interpolate(v, variables, f"{where}.{k}") for k, v in value.items()}
        if "port" in done:
            done["port"] = int(done["port"])
        return done
    if isinstance(value, list):
        return [interpolate(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise ReplicaError(f"{where}: ${{{name}}} is not a key of the replica's .env")
        return variables[name]

    return VARIABLE.sub(one, value)


# ============================================================================ the files


@dataclass(frozen=True)
class Layout:
    """Where one replica's generated files live (.replicas/<system>/)."""

    system: str
    root: Path
    env_file: Path
    connections_file: Path
    stacks: Path
    stack_file: Path
    dags: Path
    home: Path
    state: Path
    backups: Path
    registry: Path

    @classmethod
    def under(cls, system: str, root: Path) -> Layout:
        stacks = root / "stacks"
        return cls(system, root, root / ".env", root / "connections.json", stacks,
                   stacks / f"{system}.yaml", root / "dags", root / "airflow-home",
                   root / "state", root / "backups", root / "registry")  # fmt: skip


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (never sourced); a missing file is an empty one."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and ENV_KEY.match(key.strip()):
            values[key.strip()] = value
    return values


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a 0600 file, atomically: it may hold passwords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)
    path.chmod(0o600)


def ensure_env(spec: Spec, path: Path) -> dict[str, str]:
    """The replica's .env: what it holds already wins (passwords stay those the volumes
    were initialised with; a port you moved stays moved); missing keys are added."""
    existing = read_env(path)
    values: dict[str, str] = {}
    for key, wanted in spec.env.items():
        if key in existing:
            values[key] = existing[key]
        elif isinstance(wanted, Secret):
            values[key] = secrets.token_hex(wanted.size)
        else:
            values[key] = interpolate(wanted, values, f"{spec.path}: env.{key}")
    for key, value in {**existing, **values}.items():
        if "\n" in value or "\r" in value:
            raise ReplicaError(f"{path}: {key}: a value spans lines")
    merged = {**existing, **values}
    if merged != existing or not path.exists():
        write_private(path, "".join(f"{key}={value}\n" for key, value in merged.items()))
    path.chmod(0o600)
    return merged


def rebased_log_roots(shipped: Mapping[str, Any], workdir: Path) -> list[Any] | None:
    """The shipped log roots with paths under the shipped working dir moved to the
    replica's (lists replace in an overlay, so every rule is repeated); None if none moves."""
    runtime = shipped.get("runtime") or {}
    home = str(runtime.get("working_dir", "")).rstrip("/")
    roots = (shipped.get("logs") or {}).get("roots") or []
    moved = []
    for root in roots:
        path = root.get("path") if isinstance(root, dict) else None
        if home.startswith("/") and isinstance(path, str) and path.startswith(home + "/"):
            root = {**root, "path": str(workdir) + path[len(home) :]}
        moved.append(root)
    return moved if moved != roots else None


def overlay_document(spec: Spec, layout: Layout, env: Mapping[str, str]) -> dict[str, Any]:
    """The overlay stack file: what this machine changes, everything else shipped."""
    import yaml

    shipped_file = STACKS_DIR / f"{spec.system}.yaml"
    shipped = yaml.safe_load(shipped_file.read_text(encoding="utf-8"))
    document: dict[str, Any] = {
        "extends": str(shipped_file),
        "runtime": {
            "project": f"opsflow-{spec.system}",
            "working_dir": str(spec.workdir),
            "env_file": str(layout.env_file),
        },
        "backup": {"local_dir": str(layout.backups)},
    }
    roots = rebased_log_roots(shipped, spec.workdir)
    if roots is not None:
        document["logs"] = {"roots": roots}
    own = interpolate(spec.overlay, env, f"{spec.path}: overlay")
    return deep_merge(document, own)


def deep_merge(base: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """``more`` over ``base``, mappings key by key; a ``null`` stays, for the loader's
    overlay rules to remove the shipped key with."""
    merged = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def airflow_settings(spec: Spec, layout: Layout) -> dict[str, str]:
    """The replica's Airflow and opsflow settings (no secret among them)."""
    roots = ":".join((str(layout.root), *DEFAULT_ROOTS))
    return {
        "OPSFLOW_STACK": spec.system,
        "OPSFLOW_AIRFLOW_HOME": str(layout.home),
        "OPSFLOW_STATE_DIR": str(layout.state),
        "OPSFLOW_STACKS_DIR": str(layout.stacks),
        "OPSFLOW_DAGS_DIR": str(layout.dags),
        "OPSFLOW_ALLOWED_ROOTS": roots,
        "AIRFLOW__API__PORT": str(spec.ui_port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(spec.worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(spec.trigger_log_port),
    }


def link(target: Path, source: Path) -> None:
    if target.is_symlink() and target.resolve() == source.resolve():
        return
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(source)


def generate(system: str, state_root: Path = STATE_ROOT) -> Layout:
    """Write (idempotently) every file of the replica; nothing starts."""
    import yaml

    spec = load_spec(system)
    layout = Layout.under(system, state_root / system)
    for directory in (layout.root, layout.stacks, layout.dags, layout.state, layout.backups):
        directory.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    env = ensure_env(spec, layout.env_file)
    connections = interpolate(spec.connections, env, f"{spec.path}: connections")
    write_private(layout.connections_file, json.dumps(connections, indent=2) + "\n")
    document = overlay_document(spec, layout, env)
    header = (
        f"# Generated by scripts/replica.py from {spec.path}; changes are overwritten.\n"
        f"# Secrets are in {layout.env_file.name} and {layout.connections_file.name}.\n"
    )
    layout.stack_file.write_text(header + yaml.safe_dump(document, sort_keys=False))
    for stale in layout.dags.iterdir():
        if stale.name not in (f"{system}.py", "airflow_maintenance.py"):
            stale.unlink()
    for name in (f"{system}.py", "airflow_maintenance.py"):
        link(layout.dags / name, DAGS_DIR / name)
    return layout


# ============================================================================ starting


def say(system: str, message: str) -> None:
    print(f"{system}: {message}", flush=True)


def fetch_wheels(spec: Spec) -> None:
    """The MinIO stand-in's pinned wheels, by the host's pip (a build container has no
    trusted route to PyPI): skipped when every pinned wheel is there already."""
    for sub in spec.wheels:
        context = spec.workdir / sub
        wanted = set()
        for line in (context / "requirements.txt").read_text(encoding="utf-8").splitlines():
            match = REQUIREMENT.match(line.strip())
            if match:
                wanted.add((_dist(match.group(1)), match.group(2)))
        have = {(_dist(w.name.split("-")[0]), w.name.split("-")[1])
                for w in (context / "wheels").glob("*.whl")}  # fmt: skip
        if wanted <= have:
            continue
        say(spec.system, f"fetching the pinned wheels of {sub}/requirements.txt into {sub}/wheels/")
        argv = [str(PYTHON), "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "-r", str(context / "requirements.txt"),
                "-d", str(context / "wheels")]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise ReplicaError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")


def _dist(name: str) -> str:
    """A distribution name as a wheel's file name spells it (PEP 427)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _answers(url: str, method: str = "GET", accept: str = "") -> bool:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - our own 127.0.0.1 URL
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (OSError, ValueError):
        return False


def registry_address(spec: Spec, env: Mapping[str, str]) -> tuple[str, int]:
    assert spec.registry is not None
    address = interpolate(spec.registry.address, env, f"{spec.path}: registry.address")
    host, _, port = address.rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        raise ReplicaError(
            f"{spec.path}: registry.address must be 127.0.0.1:<port> (got {address!r})"
        )
    return host, int(port)


def start_registry(spec: Spec, layout: Layout, env: Mapping[str, str]) -> None:
    """Debian's docker-registry on 127.0.0.1, data under the replica's dir; one that
    answers already is used as it is."""
    import yaml

    host, port = registry_address(spec, env)
    base = f"http://{host}:{port}/v2/"
    if _answers(base):
        say(spec.system, f"image registry answers on {host}:{port}")
        return
    if not REGISTRY_BIN.is_file():
        raise ReplicaError(f"{REGISTRY_BIN} is missing (Debian package docker-registry; "
                           "scripts/setup-docker.sh installs it)")  # fmt: skip
    layout.registry.mkdir(parents=True, exist_ok=True)
    config = layout.registry / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(layout.registry / "data")}},
        "http": {"addr": f"{host}:{port}"},
    }))  # fmt: skip
    with (layout.registry / "registry.log").open("ab") as log:
        process = subprocess.Popen(
            [str(REGISTRY_BIN), "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    (layout.registry / "registry.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 20
    while not _answers(base):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (layout.registry / "registry.log").read_text(errors="replace")[-1500:]
            raise ReplicaError(f"the image registry did not answer on {base}: {tail}")
        time.sleep(0.3)
    say(spec.system, f"started the image registry on {host}:{port} (pid {process.pid})")


def stop_registry(spec: Spec, layout: Layout) -> None:
    """End the registry this replica started (its pid file, checked against /proc)."""
    pid_file = layout.registry / "registry.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if (
        str(REGISTRY_BIN).encode() in cmdline
        and str(layout.registry / "config.yml").encode() in cmdline
    ):
        os.kill(pid, signal.SIGTERM)
        say(spec.system, f"stopped the image registry (pid {pid})")
    pid_file.unlink(missing_ok=True)


def ci_compose(spec: Spec, layout: Layout, version: str, *args: str) -> str:
    """``docker compose`` with the prod and the build file, as the guide's CI runs it."""
    from opsflow.runtimes.compose import compose_base_argv

    assert spec.registry is not None
    files = list(spec.registry.compose_files)
    argv = [*compose_base_argv(f"opsflow-{spec.system}", spec.workdir, files,
                               str(layout.env_file)), *args]  # fmt: skip
    env = {**os.environ, "OPSFLOW_VERSION": version}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReplicaError(f"{' '.join(argv)} (OPSFLOW_VERSION={version}): {done.stderr[-2000:]}")
    return done.stdout


def publish_releases(spec: Spec, layout: Layout, env: Mapping[str, str]) -> None:
    """Build and push every release whose images the registry does not hold yet."""
    host, port = registry_address(spec, env)
    manifest = ", ".join((
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ))  # fmt: skip
    for version in spec.releases:
        config = json.loads(ci_compose(spec, layout, version, "config", "--format", "json"))
        images = [str(s["image"]) for s in config["services"].values()]
        missing = []
        for image in images:
            name, _, tag = image.removeprefix(f"{host}:{port}/").rpartition(":")
            if not _answers(f"http://{host}:{port}/v2/{name}/manifests/{tag}", "HEAD", manifest):
                missing.append(image)
        if not missing:
            continue
        say(spec.system, f"building and pushing release {version} to the registry")
        ci_compose(spec, layout, version, "build")
        ci_compose(spec, layout, version, "push", "--quiet")


def environment(spec: Spec, layout: Layout) -> dict[str, str]:
    """The caller's environment without another demo's or replica's settings, plus this
    replica's settings and its connections (``AIRFLOW_CONN_<ID>``)."""
    prefixes = ("AIRFLOW", "OPSFLOW_", "DEMO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(airflow_settings(spec, layout))
    connections = json.loads(layout.connections_file.read_text(encoding="utf-8"))
    for conn_id, conn in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    values = read_env(layout.env_file)
    links = [f"  {label:<11}: {interpolate(url, values, str(spec.path))}"
             for label, url in spec.look_at.items()]  # fmt: skip
    later = [r for r in spec.releases if r != "1.0.0"]
    if later:
        links.append(f"  Releases   : {', '.join(later)} (trigger {spec.system}__upgrade with one)")
    env["OPSFLOW_STACK_LINKS"] = "\n".join(links)
    return env


def start(system: str) -> int:
    layout = generate(system)
    spec = load_spec(system)
    env = read_env(layout.env_file)
    for sub in spec.writable_dirs:
        directory = spec.workdir / sub
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)  # bind mounts that a container's uid 1000 writes to
    fetch_wheels(spec)
    if spec.registry is not None:
        start_registry(spec, layout, env)
        publish_releases(spec, layout, env)
    say(system, f"files in {layout.root} (.env and connections.json: mode 0600)")
    return subprocess.run([str(DEMO_SCRIPT)], env=environment(spec, layout), check=False).returncode


def stop(system: str) -> int:
    spec = load_spec(system)
    layout = Layout.under(system, STATE_ROOT / system)
    if not layout.connections_file.exists():
        say(system, f"nothing to stop: {layout.root} does not exist")
        return 0
    done = subprocess.run([str(DEMO_SCRIPT), "--stop"], env=environment(spec, layout), check=False)
    if spec.registry is not None:
        stop_registry(spec, layout)
    return done.returncode


def airflow(system: str, args: Sequence[str]) -> int:
    spec = load_spec(system)
    layout = generate(system)
    argv = [str(AIRFLOW_CLI), *args]
    return subprocess.run(argv, env=environment(spec, layout), check=False).returncode


def main(argv: Sequence[str]) -> int:
    usage = "usage: scripts/replica.py {start|stop|generate|check|airflow} SYSTEM [ARGS...]"
    if len(argv) < 1 or argv[0] not in ("start", "stop", "generate", "check", "airflow"):
        print(usage, file=sys.stderr)
        return 2
    command, system, rest = argv[0], (argv[1] if len(argv) > 1 else ""), list(argv[2:])
    try:
        check_system(system)
        if command == "check":
            return 0
        sys.path.insert(0, str(REPO / "plugins"))
        if command == "start":
            return start(system)
        if command == "stop":
            return stop(system)
        if command == "airflow":
            return airflow(system, rest)
        print(generate(system).root)
        return 0
    except ReplicaError as err:
        print(f"replica: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
