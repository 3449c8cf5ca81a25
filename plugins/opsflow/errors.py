"""The one base of opsflow's own errors.

Every error opsflow raises on purpose derives from :class:`OpsflowError` and carries its
context (which stack, file, source, command) in its message, so a caller can tell an
opsflow verdict from an accident and a person can act on the text alone.
"""

from __future__ import annotations


class OpsflowError(Exception):
    """An error opsflow raises on purpose, with its context in the message."""
