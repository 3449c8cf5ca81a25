"""Move file ledgers into the PostgreSQL state backend without losing an entry.

Each stack's entries (in their newest readable state), the readable lines of a legacy
``releases.jsonl``, its config snapshots and a held ``lock.json`` are inserted, never
overwriting a row the database already has (workers may have written newer states since a
first run), so running it twice adds nothing. Then everything is read back through the
PostgreSQL store and compared with the files: any difference is reported and fails the
command. The files are left in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from opsflow.paths import stack_state_dir
from opsflow.releases.ledger import (
    LEDGER_FILE,
    LEGACY_HISTORY_FILE,
    FileLedgerStore,
    Ledger,
    LedgerEntry,
    Release,
    entry_record,
)
from opsflow.releases.lock import LOCK_FILE, FileLockStore, StackLock
from opsflow.state.postgres import PostgresLedgerStore, PostgresLockStore, storable_json

_SNAPSHOT = re.compile(r"^([0-9a-f]{64})\.tar$")


@dataclass
class Counts:
    found: int = 0
    copied: int = 0
    verified: int = 0

    def describe(self, what: str) -> str:
        return f"{what} {self.copied} copied, {self.verified}/{self.found} verified"


@dataclass
class StackReport:
    stack: str
    entries: Counts = field(default_factory=Counts)
    releases: Counts = field(default_factory=Counts)
    configs: Counts = field(default_factory=Counts)
    lock: str = "free"
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        summary = "; ".join(
            [
                self.entries.describe("entries"),
                self.releases.describe("legacy releases"),
                self.configs.describe("config snapshots"),
                f"lock {self.lock}",
            ]
        )
        return [f"{self.stack}: {summary}"] + [
            f"{self.stack}: MISMATCH {problem}" for problem in self.problems
        ]


def file_stacks(state: Path) -> list[str]:
    """The stacks that have ledger state under ``state`` (other directories are ignored)."""
    names = []
    for directory in sorted(p for p in state.iterdir() if p.is_dir()) if state.is_dir() else []:
        try:
            stack_state_dir(directory.name)
        except ValueError:
            continue
        parts = (LEDGER_FILE, LEGACY_HISTORY_FILE, LOCK_FILE, "configs")
        if any((directory / part).exists() for part in parts):
            names.append(directory.name)
    return names


def _as_stored(entry: LedgerEntry) -> LedgerEntry:
    """The entry as a row holds it (a NUL character, which jsonb refuses, is U+FFFD)."""
    return LedgerEntry.from_dict(json.loads(storable_json(entry_record(entry)[1])))


def _legacy_json(release: Release) -> str:
    """A legacy line in the form the ledger reads back into an equal ``Release``."""
    return json.dumps(
        {
            "stack": release.stack,
            "version": release.version,
            "run_id": release.run_id,
            "recorded_at": release.recorded_at.isoformat(),
            "images": release.images,
        },
        sort_keys=True,
    )


def migrate_stack(stack: str, conn_id: str) -> StackReport:
    """Copy one stack's file state (under ``$OPSFLOW_STATE_DIR``) and verify the copy."""
    report = StackReport(stack)
    directory = stack_state_dir(stack)
    files = Ledger(stack, FileLedgerStore(directory))
    rows = PostgresLedgerStore(stack, conn_id)
    database = Ledger(stack, rows)

    file_entries = files.entries()
    report.entries.found = len(file_entries)
    for entry in file_entries:
        report.entries.copied += rows.insert_entry(entry.entry_id, *entry_record(entry))
    stored = {entry.entry_id: entry for entry in database.entries()}
    for entry in file_entries:
        found = stored.get(entry.entry_id)
        if found == _as_stored(entry):
            report.entries.verified += 1
        elif found is None:
            report.problems.append(f"entry {entry.entry_id} is not in the database")
        else:
            report.problems.append(
                f"entry {entry.entry_id}: the database holds another state "
                f"({found.describe()}) than the file ({entry.describe()})"
            )

    legacy = files.legacy_releases()
    report.releases.found = len(legacy)
    for seq, release in enumerate(legacy):
        report.releases.copied += rows.insert_legacy(seq, _legacy_json(release))
    stored_legacy = database.legacy_releases()
    _compare(report, report.releases, "legacy release", legacy, stored_legacy)

    snapshots = [
        (match.group(1), path)
        for path in sorted(files.configs.iterdir() if files.configs.is_dir() else [])
        if (match := _SNAPSHOT.fullmatch(path.name)) and path.is_file()
    ]
    report.configs.found = len(snapshots)
    for digest, path in snapshots:
        content = path.read_bytes()
        report.configs.copied += rows.put_config(digest, content)
        if rows.get_config(digest) == content:
            report.configs.verified += 1
        else:
            report.problems.append(f"config snapshot {digest[:12]} differs in the database")

    _migrate_lock(report, stack, conn_id)
    return report


def _compare(
    report: StackReport, counts: Counts, what: str, files: list[Release], rows: list[Release]
) -> None:
    for seq, release in enumerate(files):
        if seq < len(rows) and rows[seq] == release:
            counts.verified += 1
        else:
            report.problems.append(
                f"{what} {seq} ({release.version} {release.run_id}) differs in the database"
            )


def _migrate_lock(report: StackReport, stack: str, conn_id: str) -> None:
    try:
        held = StackLock(stack, FileLockStore(stack_state_dir(stack))).holder()
    except RuntimeError as exc:
        report.lock = "unreadable"
        report.problems.append(str(exc))
        return
    if held is None:
        return
    result = StackLock(stack, PostgresLockStore(stack, conn_id)).adopt(held)
    verb = "copied" if result.acquired else "already there"
    if result.holder == held:
        report.lock = f"held by {held.describe()}: {verb}, verified"
    else:
        report.lock = "held by another run in the database"
        other = result.holder.describe() if result.holder else "nobody"
        report.problems.append(
            f"lock: the file names {held.describe()}, the database {other}; not copied"
        )


def migrate_files(
    state: Path, stacks: Iterable[str], conn_id: str, say: Callable[[str], None] = print
) -> bool:
    """Migrate ``stacks`` (every stack with state under ``state`` when empty); True when
    every file entry, release, snapshot and lock is in the database as in the files."""
    chosen = list(stacks) or file_stacks(state)
    ok = True
    for stack in chosen:
        report = migrate_stack(stack, conn_id)
        for line in report.lines():
            say(line)
        ok = ok and not report.problems
    if not chosen:
        say(f"no stack state found under {state}")
    say(
        f"the files under {state} were left in place: archive them once every worker "
        "runs with OPSFLOW_STATE_BACKEND=postgres"
    )
    return ok
