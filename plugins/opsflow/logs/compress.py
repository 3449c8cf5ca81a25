"""Replace one log file by its compressed copy beside it, losing no byte and following no link.

The copy goes to a temp file (``O_EXCL | O_NOFOLLOW``, the original's mode and owner), is
fsynced, gets the original's times and is renamed into place. The original is deleted only
while it still is the inode, size and mtime the copy was made from; a file written meanwhile
keeps both. This module raises, the cleaner (:mod:`opsflow.logs.files`) counts and reports.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import os
import stat
import time
from collections.abc import Callable
from typing import IO

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
EXTENSIONS = {"gzip": ".gz", "zstd": ".zst"}
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class Changed(Exception):
    """The file changed (written, replaced) while it was compressed: it stays, the copy goes."""


class WrittenMeanwhile(Exception):
    """The file was written after its copy was renamed into place: both stay."""


class ByteCounter:
    """A write-only sink that counts bytes: how a dry run learns compressed sizes."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        return None


def compressed_name(name: str, mtime: float, extension: str) -> str:
    """``a.log`` -> ``a.log.20261120T031500.gz``: the stamp (UTC mtime) keeps rotations apart."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(mtime))
    return f"{name}.{stamp}{extension}"


def stream(src: int, out: IO[bytes] | ByteCounter, name: str, mtime: int, compression: str) -> int:
    """Compress everything readable from ``src`` into ``out``; returns bytes read."""
    read = 0
    if compression == "zstd":
        zstandard = importlib.import_module("zstandard")
        with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as writer:
            while chunk := os.read(src, _CHUNK):
                writer.write(chunk)
                read += len(chunk)
        return read
    with gzip.GzipFile(
        filename=name, mode="wb", compresslevel=6, fileobj=out, mtime=mtime
    ) as writer:
        while chunk := os.read(src, _CHUNK):
            writer.write(chunk)
            read += len(chunk)
    return read


def compress_beside(
    dir_fd: int,
    src: int,
    name: str,
    listed: os.stat_result,
    new_name: str,
    tmp: str,
    compression: str,
    *,
    untouchable: Callable[[os.stat_result], bool],
    cleared: Callable[[], None],
) -> int:
    """Replace ``name`` (open as ``src``, ``listed`` when the walk saw it) by ``new_name``.

    Returns the compressed size. Raises :class:`Changed` when the file is not the one listed
    or changed while it was read (the copy is removed), :class:`WrittenMeanwhile` when it was
    written after the copy took its place (both stay), ``OSError`` for anything else.
    ``untouchable`` says whether a temp file already there belongs to a live run (a stale
    one is cleared once, then ``cleared`` is called).
    """
    before = os.fstat(src)
    if (before.st_dev, before.st_ino) != (listed.st_dev, listed.st_ino):
        raise Changed
    dst = _create_tmp(dir_fd, tmp, before, untouchable, cleared)
    try:
        size, read = _write_copy(dst, src, name, before, compression)
        if read != before.st_size or not _same_content(before, os.fstat(src)):
            raise Changed
        os.rename(tmp, new_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
    _drop_original(dir_fd, src, name, before)
    return size


def _same_content(before: os.stat_result, after: os.stat_result) -> bool:
    return after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns


def _write_copy(
    dst: int, src: int, name: str, before: os.stat_result, compression: str
) -> tuple[int, int]:
    """Fill the temp file, make it durable, give it the original's times; (size, bytes read)."""
    try:
        with open(dst, "wb", closefd=False) as out:
            read = stream(src, out, name, int(before.st_mtime), compression)
            out.flush()
        os.fsync(dst)
        os.utime(dst, ns=(before.st_atime_ns, before.st_mtime_ns))
        return os.fstat(dst).st_size, read
    finally:
        os.close(dst)


def _drop_original(dir_fd: int, src: int, name: str, before: os.stat_result) -> None:
    """Delete the original, unless it was replaced or written since the copy was checked."""
    try:
        current: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        current = None  # rotated away meanwhile: the compressed copy is all there is
    same = current is None or (current.st_dev, current.st_ino) == (before.st_dev, before.st_ino)
    if not same or not _same_content(before, os.fstat(src)):
        raise WrittenMeanwhile  # written between the check and now: keep both, nothing is lost
    if current is not None:
        os.unlink(name, dir_fd=dir_fd)


def _create_tmp(
    dir_fd: int,
    tmp: str,
    original: os.stat_result,
    untouchable: Callable[[os.stat_result], bool],
    cleared: Callable[[], None],
) -> int:
    """Create the temp file with the original's mode and owner; clear a stale one once."""
    for attempt in range(2):
        try:
            dst = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            st = os.stat(tmp, dir_fd=dir_fd, follow_symlinks=False)
            if attempt or not stat.S_ISREG(st.st_mode) or untouchable(st):
                raise
            os.unlink(tmp, dir_fd=dir_fd)
            cleared()
    try:
        os.fchmod(dst, stat.S_IMODE(original.st_mode))
        if os.geteuid() == 0:
            os.fchown(dst, original.st_uid, original.st_gid)
    except OSError:
        os.close(dst)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    return dst
