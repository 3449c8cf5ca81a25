"""Where opsflow keeps the release ledger and the stack lock: files on one machine, or one
PostgreSQL database shared by every worker host (``OPSFLOW_STATE_BACKEND``).

This package only chooses and talks to the PostgreSQL database; what an entry or a lock
holder means stays in :mod:`opsflow.releases`. Nothing here connects at import time.
"""
