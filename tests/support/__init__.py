"""Helpers and fixtures of the test suite, one module per thing they hold.

Test modules import helpers from here (``from support.demo import DemoDeployment``); the
conftest of each tier registers the fixtures that tier uses, tests/conftest.py those that
more than one tier uses. ``tests`` is on pytest's ``pythonpath`` (pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
