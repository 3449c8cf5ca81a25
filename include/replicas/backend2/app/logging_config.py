"""The guide's logging configuration, verbatim: console, and a JSON file handler rotating
``logs/app.log`` (relative to the working dir /app) at 10 MB, keeping 10 files."""

from __future__ import annotations

import logging.config
import os

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.jsonlogger.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "standard": {
            "format": "%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "standard",
        },
        "file": {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": "logs/app.log",
            "formatter": "json",
            "maxBytes": 10485760,  # 10MB
            "backupCount": 10,
        },
    },
    "root": {
        "handlers": ["console", "file"],
        "level": os.getenv("LOG_LEVEL", "INFO"),
    },
}


def configure() -> None:
    logging.config.dictConfig(LOGGING)
