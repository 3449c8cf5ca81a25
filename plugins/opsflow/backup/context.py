"""Plain values handed from the operators to the source modules (no Airflow objects).

Connections arrive as :class:`opsflow.connections.Endpoint` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from opsflow.backup.scratch import scratch_label
from opsflow.backup.stream import Pipeline
from opsflow.runtimes.process import LineLogger


@dataclass
class RunContext:
    """One backup (or verification) run of one source."""

    stack: str
    backup_id: str
    # Directory the artifacts are written to (dump) or read from (verify).
    staging: Path
    log: LineLogger
    level: int = 3
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.log, f"{self.stack}/{self.backup_id}")

    @property
    def scratch_label(self) -> str:
        return scratch_label(self.stack, self.backup_id)
