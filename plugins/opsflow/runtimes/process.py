"""Run one argv command, streaming its output to a log as it happens.

Long builds and migrations must show progress in the task log, and a failure must carry
the command's last lines so the alert and the summary say what went wrong.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

TAIL_LINES = 40


class CommandFailed(RuntimeError):
    """A command exited non-zero or timed out; the message keeps its last output lines."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        tail = "\n".join(result.tail[-15:])
        super().__init__(f"{self.summary}\n$ {result.command}\n{tail}")

    @property
    def summary(self) -> str:
        """One line: how it ended and the last thing it printed (usually the cause)."""
        result = self.result
        why = "timed out" if result.timed_out else f"exited with {result.returncode}"
        last = next((line.strip() for line in reversed(result.tail) if line.strip()), "")
        return f"{why} after {result.seconds:.1f}s" + (f": {last}" if last else "")


class LineLogger(Protocol):
    """Anything with ``info(msg, *args)``: a stdlib logger or Airflow's task logger."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    seconds: float
    tail: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass
class ProcessRunner:
    """Runs commands with a fixed environment; keeps the child so ``on_kill`` can stop it."""

    log: LineLogger
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    _child: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)

    def run(
        self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True
    ) -> CommandResult:
        argv = list(argv)
        self.log.info("$ %s", shlex.join(argv))
        started = time.monotonic()
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        timed_out = False
        with subprocess.Popen(
            argv,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        ) as child:
            self._child = child
            pump = threading.Thread(target=self._pump, args=(child, tail), daemon=True)
            pump.start()
            try:
                returncode = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.terminate()
                returncode = child.wait()
            finally:
                pump.join(timeout=10)
                self._child = None
        result = CommandResult(argv, returncode, time.monotonic() - started, list(tail), timed_out)
        if check and (returncode != 0 or timed_out):
            raise CommandFailed(result)
        return result

    def _pump(self, child: subprocess.Popen[str], tail: deque[str]) -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.rstrip()
            tail.append(line)
            self.log.info("  %s", line)

    def terminate(self) -> None:
        """Stop the running command and its children (``docker compose`` spawns some)."""
        child = self._child
        if child is None or child.poll() is not None:
            return
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
