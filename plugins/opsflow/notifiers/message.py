"""The content of an opsflow failure alert, independent of where it is delivered.

Every route (Slack, email, JSON webhook) renders the same :class:`AlertMessage`, so a
person reading any of them sees the same facts. Text that comes from the failure itself
(the exception, extra lines) passes through Airflow's secrets masker before it is stored
here: connection passwords fetched in this process never leave it inside an alert.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

ERROR_MAX_CHARS = 500
EXTRA_LINE_MAX_CHARS = 500
_ELLIPSIS = "…"
# user:password@ inside any URL, e.g. a DSN echoed in a driver's error message.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact_text(text: str) -> str:
    """Mask registered secrets and URL credentials in free text from a failure."""
    from airflow.sdk._shared.secrets_masker import redact

    masked = redact(text)
    masked = masked if isinstance(masked, str) else str(masked)
    return _URL_USERINFO.sub(r"\g<scheme>***@", masked)


def truncate(text: str, limit: int) -> str:
    """Shorten to ``limit`` characters, marking the cut so nobody mistakes it for the end."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


def error_first_line(error: object, limit: int = ERROR_MAX_CHARS) -> str:
    """First non-empty line of ``error``, masked *before* cutting.

    Masking first matters: a cut through the middle of a secret would leave a fragment
    the masker no longer recognises.
    """
    if error is None:
        return "no exception recorded"
    if isinstance(error, BaseException):
        detail = str(error).strip()
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    else:
        text = str(error)
    lines = [line.strip() for line in redact_text(text).splitlines() if line.strip()]
    return truncate(lines[0], limit) if lines else "no error message"


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def fallback_log_url(dag_id: str, run_id: str, task_id: str, try_number: int | None) -> str:
    """The UI URL of a task's log, as the runtime task instance builds ``ti.log_url``."""
    from airflow.sdk.configuration import conf

    base_url = conf.get("api", "base_url", fallback="http://localhost:8080/") or ""
    url = f"{base_url.rstrip('/')}/dags/{dag_id}/runs/{quote(run_id)}/tasks/{task_id}"
    return f"{url}?try_number={try_number}" if try_number else url


def _escape_slack(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class AlertMessage:
    """A task failure, reduced to what a person on call needs to act on it."""

    stack: str
    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None
    error: str
    log_url: str
    logical_date: str | None = None
    start_date: str | None = None
    map_index: int | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_context(
        cls,
        context: Mapping[str, Any],
        *,
        stack: str | None = None,
        extra: Sequence[str] = (),
    ) -> AlertMessage:
        """Build from the context Airflow passes to ``on_failure_callback``.

        In Airflow 3 the callback runs in the task process: ``context["ti"]`` is the
        runtime task instance (ids, ``try_number``, ``start_date``, ``log_url``) and
        ``context["exception"]`` the error the task raised.
        """
        ti = context.get("ti") or context.get("task_instance")
        dag_id = str(getattr(ti, "dag_id", None) or _dag_id(context) or "unknown-dag")
        task_id = str(getattr(ti, "task_id", None) or _task_id(context) or "unknown-task")
        run_id = str(getattr(ti, "run_id", None) or context.get("run_id") or "unknown-run")
        try_number = getattr(ti, "try_number", None)
        try_number = try_number if isinstance(try_number, int) else None
        map_index = getattr(ti, "map_index", None)
        map_index = map_index if isinstance(map_index, int) and map_index >= 0 else None
        log_url = getattr(ti, "log_url", None)
        if not isinstance(log_url, str) or not log_url:
            log_url = fallback_log_url(dag_id, run_id, task_id, try_number)
        return cls(
            # DAG ids are "<stack>__<kind>", so the stack is recoverable without being told.
            stack=stack or dag_id.split("__", 1)[0],
            dag_id=dag_id,
            task_id=task_id,
            run_id=run_id,
            try_number=try_number,
            error=error_first_line(context.get("exception")),
            log_url=log_url,
            logical_date=_iso(context.get("logical_date")),
            start_date=_iso(getattr(ti, "start_date", None)),
            map_index=map_index,
            extra=tuple(truncate(redact_text(line), EXTRA_LINE_MAX_CHARS) for line in extra),
        )

    def with_extra(self, *lines: str) -> AlertMessage:
        """A copy with more lines (e.g. "rolled back to 1.1.0"), masked like the error."""
        added = tuple(truncate(redact_text(line), EXTRA_LINE_MAX_CHARS) for line in lines)
        return replace(self, extra=self.extra + added)

    @property
    def task_label(self) -> str:
        return self.task_id if self.map_index is None else f"{self.task_id}[{self.map_index}]"

    @property
    def subject(self) -> str:
        attempt = f" (try {self.try_number})" if self.try_number is not None else ""
        return f"[opsflow] {self.dag_id} failed: {self.task_label}{attempt}"

    def _rows(self) -> list[tuple[str, str]]:
        return [
            ("stack", self.stack),
            ("dag", self.dag_id),
            ("task", self.task_label),
            ("run", self.run_id),
            ("try", str(self.try_number) if self.try_number is not None else "-"),
            ("logical date", self.logical_date or "-"),
            ("started", self.start_date or "-"),
            ("error", self.error),
            ("log", self.log_url),
        ]

    @property
    def body(self) -> str:
        """Plain text: aligned ``key: value`` rows, then the extra lines."""
        rows = self._rows()
        width = max(len(key) for key, _ in rows) + 1
        lines = [self.subject, ""]
        lines += [f"{key + ':':<{width}} {value}" for key, value in rows]
        if self.extra:
            lines += ["", *self.extra]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON payload of the generic webhook; keys are a stable contract for receivers."""
        return {
            "source": "opsflow",
            "event": "task_failed",
            "subject": self.subject,
            "stack": self.stack,
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "run_id": self.run_id,
            "try_number": self.try_number,
            "error": self.error,
            "log_url": self.log_url,
            "logical_date": self.logical_date,
            "start_date": self.start_date,
            "extra": list(self.extra),
        }

    def slack_payload(self, channel: str | None = None) -> dict[str, Any]:
        """Incoming-webhook JSON: ``text`` is the notification fallback, ``blocks`` the layout."""
        esc = _escape_slack
        fields = [
            f"*Stack*\n{esc(self.stack)}",
            f"*DAG*\n{esc(self.dag_id)}",
            f"*Task*\n{esc(self.task_label)}",
            f"*Try*\n{self.try_number if self.try_number is not None else '-'}",
            f"*Run*\n{esc(self.run_id)}",
            f"*Logical date*\n{esc(self.logical_date or '-')}",
        ]
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{esc(self.subject)}*"}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": text} for text in fields],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{esc(self.error)}```"}},
        ]
        if self.extra:
            text = "\n".join(esc(line) for line in self.extra)
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"<{self.log_url}|View task log>"}],
            }
        )
        payload: dict[str, Any] = {
            "text": f"{self.subject}: {self.error}\n{self.log_url}",
            "blocks": blocks,
        }
        if channel:
            payload["channel"] = channel
        return payload


def _dag_id(context: Mapping[str, Any]) -> str | None:
    dag = context.get("dag")
    return getattr(dag, "dag_id", None)


def _task_id(context: Mapping[str, Any]) -> str | None:
    task = context.get("task")
    return getattr(task, "task_id", None)
