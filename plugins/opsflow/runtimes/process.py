"""Run one argv command, streaming its output to a log as it happens.

Long builds and migrations must show progress in the task log, and a failure must say
what went wrong in one line: the first line of the output that looks like an error (a
tool's last line is usually a generic "Deploy failed" or a traceback's footer), bounded
and scrubbed of secrets, because that line becomes the step record and the alert.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from opsflow.errors import OpsflowError

TAIL_LINES = 40
# The cause line's bound: with "migrate of <stack> <version> failed: exited with 1 after
# 2.6s: " in front, the whole line still fits an alert's 300 characters.
CAUSE_MAX_CHARS = 220
# Longer lines are cut before they are matched and scrubbed (a minified bundle, a dump).
_SCAN_MAX_CHARS = 4000

# A line that states an error, as tools print them. Matched after an optional
# "service-1  | " prefix (docker compose) and leading spaces.
_ERROR_LINE = re.compile(
    r"""^(?:[\w.-]+\s+\|\s)?\s*(?:
        (?:\S+\s+){0,4}?\[?(?:ERROR|FATAL|PANIC|CRITICAL)\b(?!=)  # a level, maybe after a time
      | (?:error|fatal|panic)(?:\[\w+\])?:                    # error: fatal: panic: error[E1]:
      | Error(?::|\s)                                         # Error: ..., Error response from ...
      | FAILED:                                               # alembic's CommandError
      | npm\s+ERR!
      | Exception\s+in\s+thread\b                             # Java
      | .*\blevel=(?:error|fatal|panic)\b                      # logfmt
      | [A-Za-z_][\w]*(?:\.[\w]+)*\.(?:errors|exc)\.\w+        # psycopg.errors.X, sqlalchemy.exc.X
      | [A-Za-z_][\w.$]*(?:Error|Exception|Failure|Violation|Fault)(?::|$)  # SomethingError: ...
    )""",
    re.VERBOSE,
)
# Credentials by their shape, for what the secrets masker was never told about.
_URL_USERINFO = re.compile(r"(?P<keep>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_AUTH_SCHEME = re.compile(
    r"(?i)(?P<keep>\bbearer\s+|\bauthorization\s*[:=]\s*(?:basic\s+)?)[A-Za-z0-9._~+/=-]{8,}"
)
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?P<keep>\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)[\w.-]*
        ["']?\s*[:=]\s*)
    (?:"[^"]*"|'[^']*'|[^\s"',;&]+)
    """
)


# Every process group a task started and has not seen end: ``on_kill`` ends them all.
_STARTED: set[subprocess.Popen[Any]] = set()
_STARTED_LOCK = threading.Lock()


def track(child: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    """Remember a child started in its own session, for :func:`terminate_started`."""
    with _STARTED_LOCK:
        _STARTED.difference_update({p for p in _STARTED if p.poll() is not None})
        _STARTED.add(child)
    return child


def terminate_started(grace: float = 20.0) -> int:
    """End the process group of every tracked child still running (SIGTERM, then SIGKILL
    after ``grace``); how many there were. A killed task must leave no ``docker compose``,
    ``pg_dump`` or ``zstd`` behind."""
    with _STARTED_LOCK:
        running = [p for p in _STARTED if p.poll() is None]
        _STARTED.clear()
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    return len(running)


def is_error_line(line: str) -> bool:
    """Whether ``line`` states an error (``ERROR``, ``error:``, ``panic:``, an exception)."""
    return bool(_ERROR_LINE.match(line[:_SCAN_MAX_CHARS]))


def scrub_secrets(text: str) -> str:
    """Mask the values Airflow's secrets masker knows, then credentials by their shape:
    URL userinfo, ``Bearer`` and ``Authorization:`` tokens, ``password=...``,
    ``PASSWORD: ...``."""
    try:
        from airflow.sdk._shared.secrets_masker import redact
    except ImportError:  # used outside Airflow (benchmarks): the shapes still apply
        masked = text
    else:
        redacted = redact(text)
        masked = redacted if isinstance(redacted, str) else str(redacted)
    masked = _URL_USERINFO.sub(r"\g<keep>***@", masked)
    masked = _AUTH_SCHEME.sub(r"\g<keep>***", masked)
    return _KEY_VALUE.sub(r"\g<keep>***", masked)


def bounded(text: str, limit: int = CAUSE_MAX_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def cause_line(lines: Iterable[str], first_error: str | None = None) -> str:
    """The line that says why a command failed: the first error line of its output, else
    its last non-empty line; scrubbed before it is cut, so no fragment of a secret stays."""
    line = first_error
    if line is None:
        line = next((text for text in reversed(list(lines)) if text.strip()), "")
    return bounded(scrub_secrets(line[:_SCAN_MAX_CHARS]))


class CommandFailed(OpsflowError, RuntimeError):
    """A command exited non-zero or timed out; the message keeps its last output lines."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(f"{self.summary}\n{self.details}")

    @property
    def summary(self) -> str:
        """One line: how it ended and the first error it printed (else its last line)."""
        result = self.result
        why = "timed out" if result.timed_out else f"exited with {result.returncode}"
        cause = cause_line(result.tail, result.first_error)
        return f"{why} after {result.seconds:.1f}s" + (f": {cause}" if cause else "")

    @property
    def details(self) -> str:
        """The command and its last output lines, scrubbed like the summary."""
        lines = [f"$ {self.result.command}", *self.result.tail[-15:]]
        return "\n".join(scrub_secrets(line[:_SCAN_MAX_CHARS]) for line in lines)


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
    # The first line that looked like an error, from the whole output (not only the tail).
    first_error: str | None = None

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
        errors: list[str] = []
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
            self._child = track(child)
            pump = threading.Thread(target=self._pump, args=(child, tail, errors), daemon=True)
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
        seconds = time.monotonic() - started
        first_error = errors[0] if errors else None
        result = CommandResult(argv, returncode, seconds, list(tail), timed_out, first_error)
        if check and (returncode != 0 or timed_out):
            raise CommandFailed(result)
        return result

    def _pump(self, child: subprocess.Popen[str], tail: deque[str], errors: list[str]) -> None:
        assert child.stdout is not None
        for raw in child.stdout:
            line = raw.rstrip()
            tail.append(line)
            if not errors and is_error_line(line):
                errors.append(line)
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
