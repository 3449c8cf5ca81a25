"""Fixtures of the end-to-end tier: the demo stack deployed as its own Compose project."""

from __future__ import annotations

from support.demo import deployment

__all__ = ["deployment"]
