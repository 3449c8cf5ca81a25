"""``python -m opsflow.state``: create the state database schema, or move file ledgers in.

    python -m opsflow.state init-schema
    python -m opsflow.state migrate-files [--state-dir DIR] [--stack NAME ...]

The database is the Airflow connection ``$OPSFLOW_STATE_CONN_ID`` (``opsflow_state``),
resolved as in a task; outside one, Airflow reads it from ``AIRFLOW_CONN_OPSFLOW_STATE``
(or its secrets backend), so no password is ever an argument.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from opsflow.paths import STATE_DIR_ENV, state_dir
from opsflow.state.backend import CONN_ID_ENV, DEFAULT_CONN_ID


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsflow.state", description=__doc__)
    parser.add_argument(
        "--conn-id",
        default=os.environ.get(CONN_ID_ENV) or DEFAULT_CONN_ID,
        help=f"Airflow connection of the state database (default ${CONN_ID_ENV} or "
        f"{DEFAULT_CONN_ID})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init-schema", help="create or migrate the schema, then exit")
    files = commands.add_parser("migrate-files", help="copy file ledgers into the database")
    files.add_argument("--state-dir", type=Path, help=f"default ${STATE_DIR_ENV}")
    files.add_argument("--stack", action="append", default=[], help="only this stack")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from opsflow.state.postgres import SCHEMA_VERSION, StateDatabase

    try:
        if args.command == "init-schema":
            with StateDatabase(args.conn_id).connection():
                pass
            print(f"state database {args.conn_id}: schema version {SCHEMA_VERSION}")
            return 0
        if args.state_dir is not None:
            os.environ[STATE_DIR_ENV] = str(args.state_dir)
        from opsflow.state.migrate import migrate_files

        return 0 if migrate_files(state_dir(), args.stack, args.conn_id) else 1
    except Exception as exc:  # a command line: one line saying why, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
