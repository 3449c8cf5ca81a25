"""Config files of a stack (compose files, env file, stack file, listed paths) as one tar.

The tar is streamed straight into zstd: files are read in chunks and hashed on the way, so
memory does not grow with their size. Symlinks are stored as symlinks, never followed (a
link to ``/etc`` must not pull ``/etc`` into the backup), and a path whose directories
resolve into a system directory is refused when dumped or restored
(:func:`opsflow.stack.safety.run_time_problem`), whatever the stack file said when it was
loaded. Env files hold secrets: the
artifact is written 0600 by the pipeline. The tar helpers here are shared with
:mod:`opsflow.backup.buckets`, whose object mirror is a tar of the same shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from opsflow.backup.context import RunContext
from opsflow.backup.manifest import (
    Artifact,
    BackupError,
    SourceBackup,
    Verification,
    conclude,
    now_iso,
)
from opsflow.backup.stream import CHUNK, ArtifactCorrupt, check_artifact
from opsflow.paths import fsync_dir
from opsflow.stack.safety import run_time_problem

# A verification names every difference, but a million of them would not fit a manifest.
MAX_LISTED = 50


class HashingReader:
    """A file-like ``read`` that hashes what passes through (for ``tarfile.addfile``).

    It has no ``seek``/``seekable`` on purpose: consumers (tarfile, s3transfer) then read
    it strictly forward in chunks instead of trying to rewind it.
    """

    def __init__(self, source: IO[bytes] | Any) -> None:
        self._source = source
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, amount: int = -1) -> bytes:
        data: bytes = self._source.read(amount)
        # A network body may answer short; tarfile takes a short read for the end of data.
        while amount >= 0 and data and len(data) < amount:
            more: bytes = self._source.read(amount - len(data))
            if not more:
                break
            data += more
        self._digest.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclass
class TarContents:
    """What one pass over a tar stream found: digests of files, targets of links."""

    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    error: str = ""


def open_tar_stream(stream: IO[bytes], mode: Literal["r|", "w|"]) -> tarfile.TarFile:
    """A tar over a pipe, read and written in CHUNK-sized blocks (PAX: long UTF-8 names)."""
    return tarfile.open(  # type: ignore[call-overload,no-any-return]
        fileobj=stream, mode=mode, bufsize=CHUNK, format=tarfile.PAX_FORMAT, copybufsize=CHUNK
    )


def read_tar_digests(stream: IO[bytes]) -> TarContents:
    """Hash every member of a tar stream; a broken tar is reported, not raised.

    The caller (``Pipeline.decompress_file``) then still checks the artifact's own sha256,
    which names truncation or flipped bytes more precisely than tarfile can.
    """
    contents = TarContents()
    try:
        with open_tar_stream(stream, "r|") as tar:
            for member in tar:
                name = member.name
                if name in contents.files or name in contents.symlinks:
                    contents.duplicates.append(name)
                if member.issym():
                    contents.symlinks[name] = member.linkname
                elif member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    digest = hashlib.sha256()
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                    contents.files[name] = digest.hexdigest()
                    contents.sizes[name] = member.size
    except (tarfile.TarError, OSError, EOFError) as err:
        contents.error = f"unreadable tar: {err}"
    return contents


def _listed(kind: str, names: list[str]) -> list[str]:
    lines = [f"{kind}: {name}" for name in sorted(names)[:MAX_LISTED]]
    if len(names) > MAX_LISTED:
        lines.append(f"{kind}: ... and {len(names) - MAX_LISTED} more")
    return lines


def compare_digests(
    what: str, expected: dict[str, str], found: dict[str, str], differences: list[str]
) -> None:
    """Append one line per missing, extra or changed entry, naming it (``what`` = its kind)."""
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    changed = [name for name in expected if name in found and found[name] != expected[name]]
    differences.extend(_listed(f"{what} missing from the artifact", missing))
    differences.extend(_listed(f"{what} in the artifact but not in the fingerprint", extra))
    differences.extend(_listed(f"{what} checksum differs", changed))


def verify_tar_artifact(
    backup: SourceBackup,
    artifact_dir: Path,
    ctx: RunContext,
    check: Callable[[TarContents, list[str]], dict[str, Any]],
) -> Verification:
    """Decompress and hash the single tar artifact; ``check`` compares and returns details.

    A corrupt or truncated artifact is a failed verification carrying the reason.
    """
    started = time.monotonic()
    artifact = single_artifact(backup)
    differences: list[str] = []
    details: dict[str, Any] = {}
    try:
        require_artifact(artifact_dir / artifact.name, artifact)
        contents = ctx.pipeline.decompress_file(
            artifact_dir / artifact.name, artifact, reader=read_tar_digests
        )
        assert contents is not None
        if contents.error:
            differences.append(f"{artifact.name}: {contents.error}")
        differences.extend(_listed("duplicate member", contents.duplicates))
        details = check(contents, differences)
    except ArtifactCorrupt as err:
        differences.append(str(err))
    return conclude(backup.name, differences, details, started, ctx.log)


def require_artifact(path: Path, artifact: Artifact) -> None:
    """A missing artifact is a broken backup (failed verification), not a worker error."""
    if not path.is_file():
        raise ArtifactCorrupt(f"artifact {artifact.name}: missing at {path}")


def single_artifact(backup: SourceBackup) -> Artifact:
    if len(backup.artifacts) != 1:
        raise BackupError(
            f"source {backup.name}: expected one artifact, found {len(backup.artifacts)}"
        )
    return backup.artifacts[0]


# ---------------------------------------------------------------------------------- dump


def _check_archive_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) != name.rstrip("/"):
        raise BackupError(f"config file archive name must be a plain relative path: {name!r}")
    return str(path)


def _refuse_system_path(what: str, path: Path) -> None:
    """Refuse ``path`` when its directories resolve into a system directory (or it is one).

    The last component is not followed: a symlink is stored and restored as a link.
    """
    parent = Path(os.path.realpath(path.parent))
    problem = run_time_problem(path, str(parent / path.name) if path.name else str(parent))
    if problem is not None:
        raise BackupError(f"{what}: refused: {problem}")


def _walk(archive_name: str, host_path: Path) -> Iterator[tuple[str, Path]]:
    """``(member name, host path)`` of a path and, for a directory, everything below it."""
    yield archive_name, host_path
    if host_path.is_symlink() or not host_path.is_dir():
        return
    with os.scandir(host_path) as entries:
        children = sorted(entries, key=lambda entry: entry.name)
    for entry in children:
        yield from _walk(f"{archive_name}/{entry.name}", Path(entry.path))


def dump_files(
    paths: list[tuple[str, Path]], ctx: RunContext, name: str = "config"
) -> SourceBackup:
    """Tar ``(archive name, host path)`` pairs into ``<name>.files.tar.zst`` in ``ctx.staging``."""
    started = now_iso()
    seen: set[str] = set()
    for archive_name, host_path in paths:
        archive_name = _check_archive_name(archive_name)
        if archive_name in seen:
            raise BackupError(f"config file archive name given twice: {archive_name!r}")
        seen.add(archive_name)
        _refuse_system_path(f"config file {archive_name}", host_path)
        if not os.path.lexists(host_path):
            raise BackupError(f"config file {archive_name}: {host_path} does not exist")
    files: dict[str, str] = {}
    symlinks: dict[str, str] = {}
    total = [0]

    def writer(sink: IO[bytes]) -> None:
        members: set[str] = set()
        with open_tar_stream(sink, "w|") as tar:
            for archive_name, host_path in paths:
                archive_name = _check_archive_name(archive_name)
                for member_name, path in _walk(archive_name, host_path):
                    if member_name in members:
                        raise BackupError(f"config file {member_name} would be archived twice")
                    members.add(member_name)
                    _add(tar, member_name, path)

    def _add(tar: tarfile.TarFile, member_name: str, path: Path) -> None:
        try:
            info = tar.gettarinfo(str(path), arcname=member_name)
        except FileNotFoundError:
            raise BackupError(f"config file {member_name}: {path} does not exist") from None
        if info.issym():
            symlinks[member_name] = info.linkname
            tar.addfile(info)
        elif info.isdir():
            tar.addfile(info)
        elif info.isfile():
            with path.open("rb") as handle:
                reader = HashingReader(handle)
                tar.addfile(info, reader)  # type: ignore[arg-type]
            files[member_name] = reader.hexdigest()
            total[0] += info.size
        else:
            ctx.log.info("config files: skipping %s (%s is not a file)", member_name, path)

    artifact = ctx.pipeline.compress_to_file(
        ctx.staging / f"{name}.files.tar.zst", level=ctx.level, writer=writer
    )
    ctx.log.info(
        "config files: %d files, %d symlinks, %d bytes", len(files), len(symlinks), total[0]
    )
    return SourceBackup(
        name=name,
        kind="files",
        artifacts=[artifact],
        started_at=started,
        ended_at=now_iso(),
        tool_version="python tarfile (pax format)",
        fingerprint={
            "files": files,
            "symlinks": symlinks,
            "count": len(files),
            "bytes": total[0],
        },
    )


# ---------------------------------------------------------------------------------- verify


def verify_files(backup: SourceBackup, artifact_dir: Path, ctx: RunContext) -> Verification:
    """Every file's sha256 and every symlink's target must match the fingerprint."""

    def check(contents: TarContents, differences: list[str]) -> dict[str, Any]:
        fingerprint = backup.fingerprint
        compare_digests("file", fingerprint.get("files", {}), contents.files, differences)
        compare_digests("symlink", fingerprint.get("symlinks", {}), contents.symlinks, differences)
        return {"files": len(contents.files), "symlinks": len(contents.symlinks)}

    return verify_tar_artifact(backup, artifact_dir, ctx, check)


# ---------------------------------------------------------------------------------- restore


def _select(member_name: str, targets: dict[str, Path]) -> Path | None:
    """Where a member goes: its own target, or below the target of a directory above it."""
    if member_name in targets:
        return targets[member_name]
    parts = PurePosixPath(member_name).parts
    for cut in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:cut])
        if parent in targets:
            return targets[parent].joinpath(*parts[cut:])
    return None


def _replace_atomic(tmp: Path, target: Path, mode: int | None) -> None:
    """Rename ``tmp`` over ``target`` keeping an existing target's owner."""
    with contextlib.suppress(FileNotFoundError):
        existing = target.lstat()
        if stat.S_ISDIR(existing.st_mode):
            raise BackupError(f"cannot restore {target}: it is a directory")
        with contextlib.suppress(PermissionError):
            os.chown(tmp, existing.st_uid, existing.st_gid, follow_symlinks=False)
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(target)
    fsync_dir(target.parent)


def _write_member(handle: IO[bytes], target: Path, mode: int) -> tuple[int, str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restore-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace_atomic(tmp, target, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _write_symlink(link: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restore-{secrets.token_hex(4)}")
    tmp.symlink_to(link)
    try:
        _replace_atomic(tmp, target, None)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def restore_files(
    backup: SourceBackup, artifact_path: Path, targets: dict[str, Path], ctx: RunContext
) -> dict[str, Any]:
    """Write the archived files named in ``targets`` back, each atomically.

    A name may be a file, a symlink or an archived directory (then every file below it is
    restored under the target). Nothing is written unless the whole artifact checks out.
    """
    fingerprint = backup.fingerprint
    known = set(fingerprint.get("files", {})) | set(fingerprint.get("symlinks", {}))
    unknown = [
        name
        for name in targets
        if name not in known and not any(k.startswith(name.rstrip("/") + "/") for k in known)
    ]
    if unknown:
        raise BackupError(f"backup source {backup.name} has no file {', '.join(sorted(unknown))}")
    for name, target in targets.items():
        _refuse_system_path(f"restore of {name}", target)
    check_artifact(artifact_path, single_artifact(backup))
    written: list[str] = []
    total = [0]

    def reader(stream: IO[bytes]) -> None:
        with open_tar_stream(stream, "r|") as tar:
            for member in tar:
                target = _select(member.name, targets)
                if target is None or not (member.isfile() or member.issym()):
                    continue
                # A directory below the target may have become a symlink since the check.
                _refuse_system_path(f"restore of {member.name}", target)
                if member.issym():
                    _write_symlink(member.linkname, target)
                else:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    size, digest = _write_member(handle, target, member.mode & 0o7777)
                    if digest != fingerprint.get("files", {}).get(member.name):
                        raise BackupError(f"restored {member.name}: sha256 differs from backup")
                    total[0] += size
                ctx.log.info("restored %s -> %s", member.name, target)
                written.append(str(target))

    ctx.pipeline.decompress_file(artifact_path, single_artifact(backup), reader=reader)
    return {"files": len(written), "bytes": total[0], "paths": written}
