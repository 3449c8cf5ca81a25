"""Logging to stderr (docker logs) and, when APP_LOG_DIR is set, to a file in a volume.

The file handler reopens its file when it disappears, so an external log cleanup may
delete or rotate it while the process runs.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from opsflow_demo.settings import log_dir


def setup(name: str) -> logging.Logger:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    directory = log_dir()
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.WatchedFileHandler(directory / f"{name}.log")
        except OSError as exc:
            root.warning("file logging disabled: %s", exc)
        else:
            handler.setFormatter(fmt)
            root.addHandler(handler)
    return logging.getLogger(name)
