"""What the bench scripts share: errors, commands, ports, signals, timing, memory, verdicts.

Standard library only and cheap to import: ``bench_parse.py`` times fresh interpreters that
import it. A bench script imports it as ``benchlib`` (Python puts the script's directory
first on ``sys.path``; pytest has ``scripts`` on its ``pythonpath`` for tests that load a
bench script by path).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "include" / "demo"
GNU_TIME = Path("/usr/bin/time")
MB = 1 << 20
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class BenchError(RuntimeError):
    """The benchmark itself could not run, or a result it checks was wrong (exit status 2),
    as opposed to a target missed (exit status 1)."""


# ====================================================================== commands and ports


def run(argv: list[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    """Run ``argv`` (with ``env`` over this process's environment); its stdout, or BenchError."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])}... exited with {done.returncode}: {done.stderr}")
    return done.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    """Wait until ``process`` accepts connections on 127.0.0.1:``port``; BenchError if it
    exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{what} did not start on 127.0.0.1:{port}") from None
            time.sleep(0.1)


def raise_on_signals() -> None:
    """Turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt, so cleanup code runs.

    SIGINT too: a shell starts background jobs with it ignored, which Python inherits.
    """

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for number in _SIGNALS:
        signal.signal(number, interrupted)


def ignore_signals() -> None:
    """Ignore those signals from now on: the cleanup under way runs to its end."""
    for number in _SIGNALS:
        signal.signal(number, signal.SIG_IGN)


class TimedLog:
    """A LineLogger (``info(msg, *args)``) writing ``+seconds line`` to ``stream``; it keeps
    the lines, to find when something happened (``when``) or show the last ones (``tail``)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.lines: list[tuple[float, str]] = []

    def info(self, msg: Any, /, *args: Any) -> None:
        line = str(msg) % args if args else str(msg)
        now = time.perf_counter() - self.started
        self.lines.append((now, line))
        self.stream.write(f"+{now:8.2f}s {line}\n")
        self.stream.flush()

    def when(self, pattern: str) -> float | None:
        """Seconds from the start to the last line matching ``pattern``."""
        found = [at for at, line in self.lines if re.search(pattern, line)]
        return found[-1] if found else None

    def tail(self, count: int) -> list[str]:
        return [f"+{at:8.2f}s {line}" for at, line in self.lines[-count:]]

    def close(self) -> None:
        self.stream.close()


# ====================================================================== the machine


def machine_line() -> str:
    """CPUs (and their model), RAM and the load average: what a reader needs to compare runs."""
    mem = Path("/proc/meminfo").read_text()
    found = re.search(r"MemTotal:\s+(\d+)", mem)
    total = int(found.group(1)) / 1024 / 1024 if found else 0.0
    model = ""
    with contextlib.suppress(OSError):
        named = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = f" ({named.group(1).strip()})" if named else ""
    return (
        f"CPUs: {os.cpu_count()}{model}, RAM {total:.1f} GiB, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )


# ====================================================================== time and memory


def gnu_time_argv(argv: list[str], out: Path) -> list[str]:
    """``argv`` under GNU time, which writes max RSS (KB), user and system seconds to ``out``.

    ``ru_maxrss`` of a child started from this process would include this process's own
    peak (Linux carries the pre-exec high-water mark over ``exec``); GNU time, a small C
    program, starts the child and reports the child's own.
    """
    return [str(GNU_TIME), "-f", "%M %U %S", "-o", str(out), *argv]


def gnu_time_result(out: Path) -> tuple[float, float] | None:
    """(max RSS of the largest process in MB, CPU seconds of the tree) from ``out``, if any."""
    with contextlib.suppress(OSError, ValueError):
        rss, user, system = out.read_text().split()[-3:]
        return int(rss) / 1024.0, float(user) + float(system)
    return None


class TreeSampler(threading.Thread):
    """Peak of the summed RSS of ``root``'s descendants (``root`` itself excluded: GNU time),
    sampled every ``every`` seconds."""

    def __init__(self, root: int, every: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.every = every
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.seen: set[int] = set()
        self.known: dict[int, tuple[str, int]] = {}  # pid -> (name, parent)
        self.done = threading.Event()

    @staticmethod
    def _stat(pid: int) -> tuple[str, int] | None:
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return None
        head, _, rest = raw.rpartition(b")")
        name = head.partition(b"(")[2].decode(errors="replace")
        return name, int(rest.split()[1])

    @staticmethod
    def _statm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/statm").read_text()
        except OSError:
            return ""

    def sample(self) -> None:
        # Parents and names are read once per pid (a /proc scan per sample would cost this
        # process ~3 ms of CPU each time, taken from the contenders on a small machine).
        alive = {int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()}
        for pid in alive - self.known.keys():
            stat = self._stat(pid)
            if stat is not None:
                self.known[pid] = stat
        for pid in self.known.keys() - alive:
            del self.known[pid]
        children: dict[int, list[tuple[int, str]]] = {}
        for pid, (name, parent) in self.known.items():
            children.setdefault(parent, []).append((pid, name))
        total, names = 0, {}
        stack = [(self.root, "")]
        while stack:
            parent, parent_name = stack.pop()
            for pid, _ in children.get(parent, []):
                # Re-read: a child first seen before its exec had its parent's name then.
                name = (self._stat(pid) or self.known[pid])[0]
                stack.append((pid, name))
                self.seen.add(pid)
                statm = self._statm(pid)
                if not statm or name == parent_name:
                    # Gone, or between (v)fork and exec: those pages are its parent's. No
                    # contender runs a child of its own program without exec.
                    continue
                rss = int(statm.split()[1]) * self.page
                total += rss
                names[name] = names.get(name, 0) + rss
        if total > self.peak:
            self.peak, self.at_peak = total, names

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def kill_tree(pids: Iterable[int]) -> None:
    """SIGKILL every pid (those already gone are skipped)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# ====================================================================== verdicts


@dataclass
class Check:
    """One target: ``where`` (the contender or tree) ``label``: ``value`` against ``target``."""

    label: str
    where: str
    value: str
    target: str
    ok: bool


def print_beside(head: str, lines: Iterable[str]) -> None:
    """Print ``lines`` side by side with ``head``: after it on the first, indented below."""
    for number, line in enumerate(lines):
        print(f"{head if number == 0 else ' ' * len(head)}{line}")


def finish(checks: list[Check], started: float, *, enforce: bool) -> int:
    """Print one PASS/FAIL line per check and the total time; the exit status (1: a target
    missed, only when ``enforce``)."""
    print()
    for check in checks:
        verdict = "PASS" if check.ok else "FAIL"
        print(f"{verdict}  {check.where} {check.label}: {check.value} ({check.target})")
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f} s")
    if not enforce:
        return 0
    return 0 if all(check.ok for check in checks) else 1


# ====================================================================== the demo stack


def write_demo_compose_copy(working_dir: Path) -> None:
    """The demo compose file with absolute build contexts, and its ``.env``, in
    ``working_dir``: a rollback puts back the config files it recorded, and must never
    write into the checkout."""
    text = (DEMO_DIR / "docker-compose.yml").read_text()
    contexts = {
        "context: ./app": f"context: {DEMO_DIR / 'app'}",
        "context: ../../docker/postgres": f"context: {REPO / 'docker' / 'postgres'}",
        "context: ../../docker/redis": f"context: {REPO / 'docker' / 'redis'}",
    }
    for old, new in contexts.items():
        text = text.replace(old, new)
    left = [line for line in text.splitlines() if re.search(r"context:\s*\.", line)]
    if left:
        raise BenchError(f"relative build context left in the compose copy: {left}")
    working_dir.mkdir(mode=0o700)
    (working_dir / "docker-compose.yml").write_text(text)
    env_copy = working_dir / ".env"
    shutil.copyfile(DEMO_DIR / ".env", env_copy)
    env_copy.chmod(0o600)
