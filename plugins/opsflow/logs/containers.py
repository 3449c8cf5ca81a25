"""Container logs and service images of a compose stack, asked of the Docker Engine API.

Two things fill a Docker host besides application log files: the engine's own container
logs (unbounded unless the logging driver rotates them) and the images of old releases.
The first is reported and checked against the stack file's required limits; the second is
pruned, but only below a floor that keeps every image a rollback or a container still
needs. The engine is asked through the docker provider's client (structured answers),
never by parsing CLI output, and an image is never force-removed: when the engine refuses,
the refusal is reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from opsflow.logs.files import parse_size
from opsflow.releases.ledger import Ledger, newest_distinct
from opsflow.runtimes.engine import docker_url
from opsflow.runtimes.registry import runtime_for
from opsflow.stack.model import ContainerLogLimits, Stack

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
# Drivers whose files the engine itself rotates, with the limits they apply when no option
# is given (docs.docker.com/engine/logging/drivers/json-file and .../local).
ROTATING_DRIVERS: dict[str, tuple[str | None, int]] = {"json-file": (None, 1), "local": ("20m", 5)}
_CREATED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?$")


def _api_client() -> Any:
    from airflow.providers.docker.hooks.docker import DockerHook

    return DockerHook(docker_conn_id=None, base_url=docker_url()).api_client


def _project(stack: Stack) -> str:
    """The runtime's name for the stack: its containers carry it as their project label.
    A stack whose runtime is not operated yet fails here, saying so."""
    return runtime_for(stack).name


def _project_containers(client: Any, project: str) -> list[dict[str, Any]]:
    """Every container of the project, in any state (the listing, not the inspect data)."""
    rows: list[dict[str, Any]] = client.containers(
        all=True, filters={"label": f"{PROJECT_LABEL}={project}"}
    )
    return rows


def _container_name(row: dict[str, Any]) -> str:
    names = row.get("Names") or []
    return str(names[0]).lstrip("/") if names else str(row.get("Id", ""))[:12]


# --------------------------------------------------------------------------- log sizes


@dataclass(frozen=True)
class ContainerLogs:
    """How one container logs and how much its engine-side log takes on disk now."""

    service: str
    container: str
    log_driver: str
    max_size: str | None
    max_file: int | None
    log_path: str | None
    log_bytes: int | None
    # Rotated files next to the live one (``<log>.1``, ``<log>.2.gz``...), when readable.
    rotated_bytes: int | None = None
    state: str = ""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_file(info: dict[str, Any], driver: str) -> str | None:
    if info.get("LogPath"):
        return str(info["LogPath"])
    if driver == "local" and info.get("HostnamePath"):
        # The local driver reports no LogPath; its file sits in the container's directory.
        return str(Path(info["HostnamePath"]).parent / "local-logs" / "container.log")
    return None


def _log_sizes(path: str) -> tuple[int | None, int | None, str | None]:
    """Bytes of the live file and of its rotated siblings; the path is on the engine's host."""
    live = Path(path)
    try:
        size = live.stat().st_size
    except OSError as exc:
        return None, None, f"cannot read log file {path}: {exc.strerror or exc}"
    rotated = 0
    try:
        for sibling in live.parent.glob(f"{live.name}.*"):
            rotated += sibling.lstat().st_size
    except OSError as exc:
        return size, None, f"cannot list rotated log files of {path}: {exc.strerror or exc}"
    return size, rotated, None


def container_log_report(stack: Stack, *, client: Any | None = None) -> list[ContainerLogs]:
    """Logging driver, limits and log size of every container of the stack's compose project."""
    from docker.errors import NotFound

    api = client or _api_client()
    report: list[ContainerLogs] = []
    for row in _project_containers(api, _project(stack)):
        try:
            info = api.inspect_container(row["Id"])
        except NotFound:
            continue  # removed since the listing
        labels = (info.get("Config") or {}).get("Labels") or {}
        config = (info.get("HostConfig") or {}).get("LogConfig") or {}
        driver = str(config.get("Type") or "")
        options = config.get("Config") or {}
        max_file: int | None = None
        note: str | None = None
        if options.get("max-file") is not None:
            try:
                max_file = int(options["max-file"])
            except ValueError:
                note = f"max-file {options['max-file']!r} is not a number"
        path = _log_file(info, driver)
        size = rotated = None
        if path:
            size, rotated, problem = _log_sizes(path)
            note = problem or note
        elif driver not in ("none", ""):
            note = f"the {driver} driver keeps no log file on this host"
        report.append(
            ContainerLogs(
                service=str(labels.get(SERVICE_LABEL) or "?"),
                container=str(info.get("Name") or _container_name(row)).lstrip("/"),
                log_driver=driver,
                max_size=options.get("max-size"),
                max_file=max_file,
                log_path=path,
                log_bytes=size,
                rotated_bytes=rotated,
                state=str((info.get("State") or {}).get("Status") or row.get("State") or ""),
                note=note,
            )
        )
    report.sort(key=lambda entry: (entry.service, entry.container))
    for entry in report:
        log.info(
            "container %s (service %s): driver %s max-size=%s max-file=%s, %s bytes%s",
            entry.container,
            entry.service,
            entry.log_driver,
            entry.max_size,
            entry.max_file,
            entry.log_bytes,
            f" ({entry.note})" if entry.note else "",
        )
    return report


def _limit_problem(entry: ContainerLogs, limits: ContainerLogLimits) -> tuple[str, str] | None:
    """``(verdict, what was found)`` when the container's logs may outgrow the limits."""
    driver = entry.log_driver or "(unknown)"
    if driver == "none":
        return None  # keeps no logs at all, so nothing can grow
    if driver not in ROTATING_DRIVERS:
        return "without log limits", f"driver {driver}, which the engine does not rotate"
    default_size, default_files = ROTATING_DRIVERS[driver]
    size_text = entry.max_size or default_size
    if size_text is None:
        return "without log limits", f"driver {driver} with no max-size"
    files = entry.max_file if entry.max_file is not None else default_files
    found = (
        f"driver {driver} max-size={size_text}{'' if entry.max_size else ' (default)'}"
        f" max-file={files}{'' if entry.max_file is not None else ' (default)'}"
    )
    try:
        too_big = parse_size(size_text) > parse_size(limits.max_size)
    except ValueError:
        return "with log limits it cannot check", f"{found} (max-size not understood)"
    if too_big or files > limits.max_file:
        return "with weaker log limits than required", found
    return None


def log_limit_violations(stack: Stack, report: list[ContainerLogs]) -> list[str]:
    """One message per service (and kind of problem) when the stack file requires limits.

    ``max-size`` and ``max-file`` are compared one by one with the required values; a
    missing option counts as the driver's documented default (json-file: no size limit and
    one file; local: 20m and 5 files).
    """
    limits = stack.logs.container_limits
    if not limits.required:
        return []
    required = f"required max-size={limits.max_size} max-file={limits.max_file}"
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for entry in report:
        problem = _limit_problem(entry, limits)
        if problem is not None:
            grouped.setdefault((entry.service, *problem), []).append(entry.container)
    messages = []
    for (service, verdict, found), containers in grouped.items():
        noun = "container" if len(containers) == 1 else "containers"
        messages.append(
            f"service {service} ({noun} {', '.join(containers)}) runs {verdict}: "
            f"{required}, found {found}"
        )
    return messages


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageTag:
    """One tag of a service image repository and what the plan does with it."""

    reference: str
    repository: str
    tag: str
    image_id: str
    created: str
    action: Literal["keep", "remove", "untag"] = "keep"
    # Why it is kept (empty for a removable tag).
    reasons: tuple[str, ...] = ()
    # Other tags of the same image; removing this tag then only untags it.
    shared_with: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["shared_with"] = list(self.shared_with)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageTag:
        return cls(
            **{
                **data,
                "reasons": tuple(data.get("reasons", ())),
                "shared_with": tuple(data.get("shared_with", ())),
            }
        )


@dataclass(frozen=True)
class ImagePrunePlan:
    """Which tags of the stack's versioned images stay, which go, and why."""

    stack: str
    keep_releases: int
    # Current and previous deployed versions, newest first, from the release history.
    releases: list[str]
    kept: list[ImageTag] = field(default_factory=list)
    removable: list[ImageTag] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """``kept: repo:1.1.0 (running container x), 1.0.0 (previous release)`` per repository."""
        lines: list[str] = []
        repositories = dict.fromkeys(t.repository for t in [*self.kept, *self.removable])
        for repository in repositories:
            kept = [
                f"{tag.reference if not number else tag.tag} ({', '.join(tag.reasons)})"
                for number, tag in enumerate(t for t in self.kept if t.repository == repository)
            ]
            gone = [t.tag for t in self.removable if t.repository == repository]
            lines.append(f"kept: {', '.join(kept) or 'nothing'}")
            if gone:
                lines.append(f"removable from {repository}: {', '.join(gone)}")
        return [*lines, *self.notes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "keep_releases": self.keep_releases,
            "releases": list(self.releases),
            "kept": [t.to_dict() for t in self.kept],
            "removable": [t.to_dict() for t in self.removable],
            "notes": list(self.notes),
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePrunePlan:
        """Rebuild a plan handed over between tasks (through XCom)."""
        return cls(
            stack=data["stack"],
            keep_releases=int(data["keep_releases"]),
            releases=list(data["releases"]),
            kept=[ImageTag.from_dict(t) for t in data["kept"]],
            removable=[ImageTag.from_dict(t) for t in data["removable"]],
            notes=list(data.get("notes", [])),
        )


def normalize_reference(reference: str) -> str:
    """``name`` -> ``name:latest``; Docker Hub prefixes dropped, as the engine lists tags."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if reference.startswith(prefix):
            reference = reference[len(prefix) :]
            break
    last = reference.rsplit("/", 1)[-1]
    return reference if (":" in last or "@" in last) else f"{reference}:latest"


def _repository(reference: str) -> str:
    """Repository part of ``repo:tag`` (a registry port's colon is before the last slash)."""
    head, _, last = reference.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def _created_ns(created: str) -> int:
    """Nanoseconds since the epoch of the engine's RFC 3339 time (Python keeps only micro)."""
    match = _CREATED.match(created or "")
    if not match:
        return 0
    zone = match.group(3) or "+00:00"
    base = datetime.fromisoformat(match.group(1) + ("+00:00" if zone == "Z" else zone))
    return int(base.timestamp()) * 10**9 + int((match.group(2) or "").ljust(9, "0"))


def plan_image_pruning(
    stack: Stack, keep_releases: int, *, client: Any | None = None
) -> ImagePrunePlan:
    """Decide which tags of each versioned service image repository may go.

    Kept: every tag a container of the project uses (any state, by reference or image
    id), the current and previous deployed releases from the release history, and every
    tag of the newest ``keep_releases`` images by creation time. Nothing is removed here.
    """
    from docker.errors import ImageNotFound

    if keep_releases < 1:
        raise ValueError(f"keep_releases must be at least 1, got {keep_releases}")
    api = client or _api_client()
    project = _project(stack)
    notes: list[str] = []

    used: dict[str, list[str]] = {}  # normalized reference or image id -> reasons
    for row in _project_containers(api, project):
        reason = f"{row.get('State') or 'existing'} container {_container_name(row)}"
        for key in (normalize_reference(str(row.get("Image") or "")), row.get("ImageID")):
            if key:
                used.setdefault(str(key), []).append(reason)

    wanted: dict[str, list[str]] = {}  # reference or image id -> reasons (release history)
    recent = newest_distinct(Ledger(stack.name).releases(), 2)
    for label, release in zip(("current release", "previous release"), recent, strict=False):
        for service in stack.services:
            if service.versioned and service.image:
                wanted.setdefault(f"{service.image}:{release.version}", []).append(label)
        for recorded in release.images.values():
            key = recorded if recorded.startswith("sha256:") else normalize_reference(recorded)
            wanted.setdefault(key, []).append(label)
    if not recent:
        notes.append(
            f"no release history for stack {stack.name}: only images in use and the "
            f"newest {keep_releases} are protected"
        )

    repositories: list[str] = []
    for service in stack.services:
        if not service.versioned:
            continue
        if not service.image:
            notes.append(f"service {service.name} names no image repository: not pruned")
        elif service.image not in repositories:
            repositories.append(service.image)

    kept: list[ImageTag] = []
    removable: list[ImageTag] = []
    for repository in repositories:
        facts: dict[str, dict[str, Any]] = {}
        for row in api.images(name=repository):
            try:
                facts[row["Id"]] = api.inspect_image(row["Id"])
            except ImageNotFound:
                continue  # removed since the listing
        tags = sorted(
            (
                (reference, image_id)
                for image_id, image in facts.items()
                for reference in image.get("RepoTags") or []
                if _repository(reference) == repository
            ),
            key=lambda item: (-_created_ns(facts[item[1]].get("Created", "")), item[0]),
        )
        newest_ids = list(dict.fromkeys(image_id for _, image_id in tags))[:keep_releases]
        decided: list[tuple[str, str, list[str]]] = []
        for reference, image_id in tags:
            reasons = [*used.get(reference, []), *used.get(image_id, [])]
            reasons += [*wanted.get(reference, []), *wanted.get(image_id, [])]
            if image_id in newest_ids:
                reasons.append(f"newest {keep_releases}")
            decided.append((reference, image_id, list(dict.fromkeys(reasons))))
        going = {reference for reference, _, reasons in decided if not reasons}
        for reference, image_id, reasons in decided:
            image = facts[image_id]
            others = tuple(
                t for t in image.get("RepoTags") or [] if t != reference and t not in going
            )
            tag = ImageTag(
                reference=reference,
                repository=repository,
                tag=reference[len(repository) + 1 :],
                image_id=image_id,
                created=str(image.get("Created", "")),
                action="keep" if reasons else ("untag" if others else "remove"),
                reasons=tuple(reasons),
                shared_with=others,
            )
            (kept if reasons else removable).append(tag)
    # Oldest first, so an interrupted run has removed the least useful images.
    removable.reverse()
    plan = ImagePrunePlan(
        stack=stack.name,
        keep_releases=keep_releases,
        releases=[release.version for release in recent],
        kept=kept,
        removable=removable,
        notes=notes,
    )
    for line in plan.summary():
        log.info("%s", line)
    return plan


def prune_images(plan: ImagePrunePlan, dry_run: bool, *, client: Any | None = None) -> list[str]:
    """Remove the plan's removable tags without force; returns the summary and each outcome.

    Each tag is removed by reference: the engine then deletes the image only when no
    other tag names it and no container uses it, and otherwise just untags it or refuses
    (which is reported, not raised). A tag that names a different image than when the
    plan was made is left alone.
    """
    from docker.errors import APIError, ImageNotFound

    lines = plan.summary()
    if not plan.removable:
        lines.append("nothing to remove")
    api = None if dry_run else (client or _api_client())
    for tag in plan.removable:
        short = tag.image_id.removeprefix("sha256:")[:12]
        if api is None:
            what = f"untag {tag.reference} (image {short} stays: also {', '.join(tag.shared_with)})"
            if tag.action != "untag":
                what = f"remove {tag.reference} (image {short}, created {tag.created})"
            lines.append(f"would {what}")
            continue
        try:
            current = api.inspect_image(tag.reference)["Id"]
        except ImageNotFound:
            lines.append(f"already gone: {tag.reference}")
            continue
        if current != tag.image_id:
            now = str(current).removeprefix("sha256:")[:12]
            lines.append(f"left {tag.reference}: it now names image {now}, not {short}")
            continue
        try:
            outcome = api.remove_image(tag.reference, force=False, noprune=False) or []
        except APIError as exc:
            reason = exc.explanation or str(exc)
            lines.append(f"refused by the engine: {tag.reference}: {reason}")
            log.warning("the engine refused to remove %s: %s", tag.reference, reason)
            continue
        deleted = [item["Deleted"] for item in outcome if "Deleted" in item]
        if deleted:
            lines.append(f"removed {tag.reference} (image {short} deleted)")
        else:
            lines.append(f"untagged {tag.reference} (image {short} still has other references)")
    for line in lines:
        log.info("%s", line)
    return lines
