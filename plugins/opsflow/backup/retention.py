"""Which backups to keep, and whether the newest proven one is recent enough. Pure: no I/O.

The rules guard against the classic trap of age-only retention: when backups silently
start failing, an age rule deletes the last good one after N days. Here only verified
backups count toward "the last K", and the newest verified backup is never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opsflow.backup.manifest import Manifest


@dataclass
class RetentionPlan:
    # backup_id -> why it stays
    keep: dict[str, str] = field(default_factory=dict)
    # oldest first
    delete: list[str] = field(default_factory=list)
    # backup_id -> manifest status, for the log
    statuses: dict[str, str] = field(default_factory=dict)

    def lines(self, dry_run: bool = False) -> list[str]:
        verb = "would delete" if dry_run else "delete"
        ids = sorted({*self.keep, *self.delete})
        out: list[str] = []
        for backup_id in ids:
            status = self.statuses.get(backup_id, "?")
            if backup_id in self.keep:
                out.append(f"keep {backup_id} ({status}): {self.keep[backup_id]}")
            else:
                out.append(f"{verb} {backup_id} ({status})")
        return out


def plan_retention(
    manifests: list[Manifest], now: datetime, keep_days: int, keep_last_verified: int
) -> RetentionPlan:
    """Keep the young, the last K verified and always the newest verified; delete the rest."""
    by_id = {manifest.backup_id: manifest for manifest in manifests}
    newest_first = sorted(by_id.values(), key=lambda m: m.backup_id, reverse=True)
    verified = [m.backup_id for m in newest_first if m.status == "verified"]
    plan = RetentionPlan(statuses={m.backup_id: m.status for m in newest_first})
    last_k = set(verified[: max(keep_last_verified, 0)])
    for manifest in newest_first:
        backup_id = manifest.backup_id
        if now - manifest.created < timedelta(days=keep_days):
            plan.keep[backup_id] = f"within {keep_days} days"
        elif verified and backup_id == verified[0]:
            plan.keep[backup_id] = "newest verified"
        elif backup_id in last_k:
            plan.keep[backup_id] = f"one of the last {keep_last_verified} verified"
        else:
            plan.delete.append(backup_id)
    plan.delete.sort()
    return plan


def _duration(value: timedelta) -> str:
    if value.total_seconds() < 60:
        return f"{int(value.total_seconds())}s"
    minutes = int(value.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, rest = divmod(minutes, 60)
    return f"{hours}h" + (f"{rest:02d}m" if rest else "")


def check_freshness(
    manifests: list[Manifest], sources: list[str], now: datetime, max_age: timedelta
) -> list[str]:
    """One line per source whose newest verified backup is missing or older than max_age."""
    problems: list[str] = []
    for source in sources:
        newest = max(
            (
                m
                for m in manifests
                if m.status == "verified" and any(s.name == source for s in m.sources)
            ),
            key=lambda m: m.backup_id,
            default=None,
        )
        if newest is None:
            problems.append(f"{source}: no verified backup")
            continue
        age = now - newest.created
        if age > max_age:
            problems.append(
                f"{source}: newest verified backup {newest.backup_id} is {_duration(age)} old "
                f"(max {_duration(max_age)})"
            )
    return problems
