"""Streaming between a dump process, zstd, sha256 and a file, in constant memory.

The dump process writes into zstd through an OS pipe; this process reads zstd's output in
fixed-size chunks, hashes and writes them. Nothing is ever held whole in memory, so a
100 GB database costs the same RAM as a 1 MB one. An artifact is written under a
temporary name and renamed only after every process in the chain exited 0 and the data is
on disk: a dump that dies half-way can never leave a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from opsflow.backup.manifest import Artifact, BackupError
from opsflow.paths import DiskFull, fsync_dir, write_all
from opsflow.runtimes.process import LineLogger, track

CHUNK = 1 << 20
PROGRESS_EVERY = 15.0
T = TypeVar("T")


class ArtifactCorrupt(BackupError):
    """A stored artifact does not match its manifest entry (flipped bytes, truncation)."""


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _describe_exit(name: str, code: int, tail: deque[str]) -> str:
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    last = next((line for line in reversed(tail) if line.strip()), "")
    return f"{name} {how}" + (f": {last}" if last else "")


def _collect(stream: IO[bytes], tail: deque[str], log: LineLogger, prefix: str) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        log.info("  %s%s", prefix, line)


def _spawn(
    argv: Sequence[str], env: Mapping[str, str] | None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    return track(
        subprocess.Popen(
            list(argv),
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
    )


class _Progress:
    def __init__(self, log: LineLogger, what: str) -> None:
        self.log, self.what = log, what
        self.started = self.last = time.monotonic()

    def tick(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            rate = done / max(now - self.started, 1e-6) / 1e6
            self.log.info("%s: %.1f MB so far (%.1f MB/s)", self.what, done / 1e6, rate)


class Pipeline:
    """One compress or decompress run; ``terminate()`` is for an operator's ``on_kill``."""

    def __init__(self, log: LineLogger, what: str) -> None:
        self.log = log
        self.what = what
        self._processes: list[subprocess.Popen[bytes]] = []

    def terminate(self) -> None:
        for process in self._processes:
            _kill(process)

    # ------------------------------------------------------------------ compress

    def compress_to_file(
        self,
        dest: Path,
        *,
        level: int,
        argv: Sequence[str] | None = None,
        writer: Callable[[IO[bytes]], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Artifact:
        """Run ``argv`` (or ``writer``) into zstd and onto ``dest``; return size and sha256."""
        if (argv is None) == (writer is None):
            raise ValueError("give exactly one of argv or writer")
        tmp = dest.with_name(f".{dest.name}.part")
        tmp.unlink(missing_ok=True)  # left by an earlier attempt of the same task
        tails: dict[str, deque[str]] = {}
        threads: list[threading.Thread] = []
        producer: subprocess.Popen[bytes] | None = None
        writer_error: list[BaseException] = []

        def watch(name: str, process: subprocess.Popen[bytes]) -> None:
            tails[name] = deque(maxlen=20)
            assert process.stderr is not None
            thread = threading.Thread(
                target=_collect, args=(process.stderr, tails[name], self.log, f"{name}: "),
                daemon=True,
            )  # fmt: skip
            thread.start()
            threads.append(thread)

        try:
            if argv is not None:
                self.log.info("$ %s | zstd -%d", shlex.join(argv), level)
                producer = _spawn(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
                self._processes.append(producer)
                watch(Path(argv[0]).name, producer)
            zstd = _spawn(
                ["zstd", f"-{level}", "-T0", "-q", "-c"],
                None,
                stdin=producer.stdout if producer else subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._processes.append(zstd)
            watch("zstd", zstd)
            if producer is not None and producer.stdout is not None:
                producer.stdout.close()  # zstd holds the read end now
            if writer is not None:
                assert zstd.stdin is not None
                threads.append(_start_writer(writer, zstd.stdin, writer_error))
            assert zstd.stdout is not None
            size, digest = self._drain(zstd.stdout, tmp)
            zstd.wait()
            if producer is not None:
                producer.wait()
            for thread in threads:
                thread.join(timeout=30)
            if writer_error:
                raise BackupError(f"{self.what}: {writer_error[0]}") from writer_error[0]
            for name, process in ((argv[0] if argv else "", producer), ("zstd", zstd)):
                if process is not None and process.returncode != 0:
                    label = Path(name).name
                    raise BackupError(
                        f"{self.what}: "
                        + _describe_exit(label, process.returncode, tails.get(label, deque()))
                    )
            tmp.replace(dest)
            fsync_dir(dest.parent)
        except BaseException:
            self.terminate()
            tmp.unlink(missing_ok=True)
            raise
        self.log.info("%s: wrote %s (%d bytes, sha256 %s)", self.what, dest.name, size, digest)
        return Artifact(name=dest.name, size=size, sha256=digest)

    def _drain(self, source: IO[bytes], tmp: Path) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        progress = _Progress(self.log, self.what)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while True:
                count = source.readinto(view)  # type: ignore[attr-defined]
                if not count:
                    break
                chunk = view[:count]
                digest.update(chunk)
                _write_chunk(fd, chunk, tmp)
                size += count
                progress.tick(size)
            os.fsync(fd)
        finally:
            os.close(fd)
        progress.tick(size, force=True)
        return size, digest.hexdigest()

    # ------------------------------------------------------------------ decompress

    def decompress_file(
        self,
        src: Path,
        expected: Artifact,
        *,
        argv: Sequence[str] | None = None,
        reader: Callable[[IO[bytes]], T] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> T | None:
        """Feed ``src`` through ``zstd -d`` into ``argv``'s stdin (or ``reader``).

        The file's sha256 and size are checked against ``expected`` on the way; a mismatch
        raises :class:`ArtifactCorrupt` even when the consumer did not notice.
        """
        if (argv is None) == (reader is None):
            raise ValueError("give exactly one of argv or reader")
        tails: dict[str, deque[str]] = {"zstd": deque(maxlen=20)}
        feed_result: list[tuple[int, str] | BaseException] = []
        consumer: subprocess.Popen[bytes] | None = None
        result: T | None = None
        threads: list[threading.Thread] = []
        try:
            zstd = _spawn(
                ["zstd", "-d", "-q", "-c"], None, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            self._processes.append(zstd)
            assert zstd.stdin is not None and zstd.stdout is not None and zstd.stderr is not None
            threads.append(_start_thread(_collect, zstd.stderr, tails["zstd"], self.log, "zstd: "))
            threads.append(_start_thread(self._feed, src, zstd.stdin, feed_result))
            if argv is not None:
                self.log.info("zstd -d %s | %s", src.name, shlex.join(argv))
                name = Path(argv[0]).name
                tails[name] = deque(maxlen=20)
                consumer = _spawn(argv, env, stdin=zstd.stdout, stdout=subprocess.PIPE)
                self._processes.append(consumer)
                zstd.stdout.close()
                assert consumer.stdout is not None and consumer.stderr is not None
                for stream in (consumer.stdout, consumer.stderr):
                    threads.append(
                        _start_thread(_collect, stream, tails[name], self.log, f"{name}: ")
                    )
                consumer.wait()
            else:
                assert reader is not None
                result = reader(zstd.stdout)
                # Read what the reader left so zstd can finish and report its own errors.
                while zstd.stdout.read(CHUNK):
                    pass
            zstd.wait()
            for thread in threads:
                thread.join(timeout=30)
        except BaseException:
            self.terminate()
            raise
        fed = feed_result[0] if feed_result else BackupError("feeding zstd did not finish")
        if isinstance(fed, BaseException):
            raise BackupError(f"{self.what}: reading {src}: {fed}") from fed
        _compare(expected, *fed)
        # zstd killed by SIGPIPE only means the consumer stopped reading: name the consumer.
        if zstd.returncode not in (0, -signal.SIGPIPE):
            why = _describe_exit("zstd", zstd.returncode, tails["zstd"])
            raise ArtifactCorrupt(f"{self.what}: {why}")
        if consumer is not None and consumer.returncode != 0:
            name = Path(str(argv[0] if argv else "")).name
            why = _describe_exit(name, consumer.returncode, tails[name])
            raise BackupError(f"{self.what}: {why}")
        if zstd.returncode != 0:
            raise ArtifactCorrupt(f"{self.what}: zstd stopped early (its reader quit)")
        return result

    def _feed(self, src: Path, sink: IO[bytes], out: list[tuple[int, str] | BaseException]) -> None:
        digest = hashlib.sha256()
        size = 0
        progress = _Progress(self.log, self.what)
        try:
            with src.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    try:
                        sink.write(chunk)
                    except BrokenPipeError:
                        # zstd stopped (corrupt input): keep hashing to report the mismatch.
                        continue
                    progress.tick(size)
            out.append((size, digest.hexdigest()))
        except BaseException as err:
            out.append(err)
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                sink.close()


def _start_thread(target: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _start_writer(
    writer: Callable[[IO[bytes]], None], sink: IO[bytes], errors: list[BaseException]
) -> threading.Thread:
    def run() -> None:
        try:
            writer(sink)
        except BaseException as err:
            errors.append(err)
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                sink.close()

    return _start_thread(run)


def _compare(expected: Artifact, size: int, sha256: str) -> None:
    if size != expected.size:
        raise ArtifactCorrupt(
            f"artifact {expected.name}: {size} bytes but the manifest says {expected.size}"
            + (" (truncated)" if size < expected.size else "")
        )
    if sha256 != expected.sha256:
        raise ArtifactCorrupt(
            f"artifact {expected.name}: sha256 {sha256} but the manifest says {expected.sha256}"
        )


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_artifact(path: Path, expected: Artifact) -> None:
    """Raise :class:`ArtifactCorrupt` unless ``path`` is byte-for-byte the manifest's artifact."""
    if not path.is_file():
        raise ArtifactCorrupt(f"artifact {expected.name}: missing at {path}")
    _compare(expected, *file_digest(path))


def _write_chunk(fd: int, chunk: memoryview, path: Path) -> None:
    try:
        write_all(fd, chunk, path)
    except DiskFull as full:
        raise BackupError(str(full.strerror)) from full
