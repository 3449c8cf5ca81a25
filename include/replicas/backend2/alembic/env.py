"""Alembic environment of Backend2: online mode, DATABASE_URL, one transaction per revision.

Without ``transaction_per_migration`` alembic runs every pending revision in one
transaction, and PostgreSQL's transactional DDL would roll a failing upgrade back whole.
With it, each revision commits on its own: a revision that fails rolls back alone and the
ones before it stay applied (``alembic_version`` names the last good one), which is what
a real half-finished ``alembic upgrade head`` leaves behind.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool


def run_migrations_online() -> None:
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection, target_metadata=None, transaction_per_migration=True
        )
        with context.begin_transaction():
            context.run_migrations()


if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)
if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported by Backend2's migrations")
run_migrations_online()
