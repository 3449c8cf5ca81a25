"""Retention plans and freshness checks: every rule, including the traps of age-only policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsflow.backup.manifest import Artifact, Manifest, VerificationStatus, new_backup_id
from opsflow.backup.retention import RetentionPlan, check_freshness, plan_retention
from support.backup import demo_manifest

NOW = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)
STATUS_TO_VERIFICATION: dict[str, VerificationStatus | None] = {
    "verified": "passed",
    "failed": "failed",
    "unverified": None,
}


def backup(days_ago: float, status: str, sources: tuple[str, ...] = ("app_db",)) -> Manifest:
    started = NOW - timedelta(days=days_ago)
    backup_id = new_backup_id(started, f"run-{days_ago}-{status}")
    artifacts = [Artifact(f"{name}.dump.zst", 10, "0" * 64) for name in sources]
    manifest = demo_manifest(
        backup_id, started, f"run-{days_ago}", artifacts, STATUS_TO_VERIFICATION[status]
    )
    assert manifest.status == status
    return manifest


# Each case: backups as (days ago, status), keep_days, K, then what is kept (days ago ->
# reason) and what is deleted (days ago).
CASES = {
    "age keeps everything young, whatever its status": (
        [(0.5, "failed"), (1, "unverified"), (2, "verified"), (6.9, "failed")],
        7,
        3,
        {0.5: "within 7 days", 1: "within 7 days", 2: "within 7 days", 6.9: "within 7 days"},
        [],
    ),
    "trap: only failed backups recently, the old verified one stays": (
        [(1, "failed"), (2, "failed"), (3, "failed"), (40, "verified")],
        7,
        3,
        {1: "within 7 days", 2: "within 7 days", 3: "within 7 days", 40: "newest verified"},
        [],
    ),
    "K counts only verified backups": (
        [
            (8, "verified"),
            (9, "failed"),
            (10, "unverified"),
            (11, "verified"),
            (12, "failed"),
            (13, "verified"),
            (14, "verified"),
        ],
        7,
        3,
        {8: "newest verified", 11: "one of the last 3 verified", 13: "one of the last 3 verified"},
        [9, 10, 12, 14],
    ),
    "unverified and failed older than N days are deleted": (
        [(1, "verified"), (8, "unverified"), (20, "failed")],
        7,
        1,
        {1: "within 7 days"},
        [8, 20],
    ),
    "young verified backups count toward K": (
        [(1, "verified"), (2, "verified"), (8, "verified"), (9, "verified")],
        7,
        3,
        {1: "within 7 days", 2: "within 7 days", 8: "one of the last 3 verified"},
        [9],
    ),
    "newest verified kept even with K=0 and older than N days": (
        [(1, "failed"), (10, "verified"), (11, "verified")],
        7,
        0,
        {1: "within 7 days", 10: "newest verified"},
        [11],
    ),
    "K=0 and a young verified backup: age keeps it, old ones go": (
        [(1, "verified"), (10, "verified")],
        7,
        0,
        {1: "within 7 days"},
        [10],
    ),
    "no verified backup at all: only age keeps anything": (
        [(1, "failed"), (8, "unverified"), (30, "failed")],
        7,
        3,
        {1: "within 7 days"},
        [8, 30],
    ),
    "exactly N days old is no longer within N days": (
        [(7, "unverified"), (6.99, "unverified")],
        7,
        3,
        {6.99: "within 7 days"},
        [7],
    ),
    "offsite days (30)": (
        [(29, "unverified"), (31, "verified"), (45, "verified"), (60, "verified")],
        30,
        2,
        {29: "within 30 days", 31: "newest verified", 45: "one of the last 2 verified"},
        [60],
    ),
    "empty store": ([], 7, 3, {}, []),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_plan(case: str) -> None:
    specs, keep_days, k, kept, deleted = CASES[case]
    manifests = {days: backup(days, status) for days, status in specs}
    plan = plan_retention(list(manifests.values()), NOW, keep_days, k)
    assert plan.keep == {manifests[days].backup_id: reason for days, reason in kept.items()}
    assert plan.delete == sorted(manifests[days].backup_id for days in deleted)
    assert set(plan.keep) | set(plan.delete) == {m.backup_id for m in manifests.values()}
    assert not set(plan.keep) & set(plan.delete)


def test_plan_never_deletes_the_newest_verified_whatever_the_numbers() -> None:
    statuses = ["failed", "unverified", "verified"]
    manifests = [backup(days, statuses[days % 3]) for days in range(1, 60)]
    newest_verified = max(m.backup_id for m in manifests if m.status == "verified")
    for keep_days in (1, 7, 30):
        for k in (0, 1, 3):
            plan = plan_retention(manifests, NOW, keep_days, k)
            assert newest_verified in plan.keep
            assert len([b for b in plan.keep if plan.statuses[b] == "verified"]) >= min(k, 1)


def test_plan_input_order_and_duplicates_do_not_matter() -> None:
    manifests = [backup(d, "verified") for d in (9, 8, 10, 11)]
    plan = plan_retention([*manifests, manifests[0]], NOW, 7, 2)
    again = plan_retention(sorted(manifests, key=lambda m: m.backup_id), NOW, 7, 2)
    assert plan.keep == again.keep and plan.delete == again.delete
    assert plan.delete == sorted([manifests[2].backup_id, manifests[3].backup_id])


def test_plan_lines_name_every_backup_with_reason_and_status() -> None:
    young, old_good, old_bad = backup(1, "failed"), backup(9, "verified"), backup(10, "failed")
    plan = plan_retention([young, old_good, old_bad], NOW, 7, 3)
    assert plan.lines() == [
        f"delete {old_bad.backup_id} (failed)",
        f"keep {old_good.backup_id} (verified): newest verified",
        f"keep {young.backup_id} (failed): within 7 days",
    ]
    assert plan.lines(dry_run=True)[0] == f"would delete {old_bad.backup_id} (failed)"
    assert RetentionPlan().lines() == []


# ------------------------------------------------------------------------------ freshness


def test_freshness_ok_when_every_source_has_a_recent_verified_backup() -> None:
    manifests = [backup(0.5, "verified", ("app_db", "cache")), backup(3, "verified")]
    assert check_freshness(manifests, ["app_db", "cache"], NOW, timedelta(hours=26)) == []


def test_freshness_names_stale_and_missing_sources() -> None:
    stale = backup(50 / 24, "verified", ("app_db",))
    newer_but_failed = backup(0.1, "failed", ("app_db", "cache"))
    newer_unverified = backup(0.2, "unverified", ("app_db", "cache"))
    problems = check_freshness(
        [stale, newer_but_failed, newer_unverified], ["app_db", "cache"], NOW,
        timedelta(hours=26),
    )  # fmt: skip
    assert problems == [
        f"app_db: newest verified backup {stale.backup_id} is 50h old (max 26h)",
        "cache: no verified backup",
    ]


def test_freshness_picks_the_newest_verified_per_source() -> None:
    old_both = backup(5, "verified", ("app_db", "cache"))
    new_db_only = backup(0.5, "verified", ("app_db",))
    problems = check_freshness(
        [new_db_only, old_both], ["app_db", "cache"], NOW, timedelta(hours=26)
    )
    assert problems == [f"cache: newest verified backup {old_both.backup_id} is 120h old (max 26h)"]


def test_freshness_durations_with_minutes() -> None:
    manifest = backup((2 * 60 + 5) / (24 * 60), "verified")
    problems = check_freshness([manifest], ["app_db"], NOW, timedelta(minutes=45))
    assert problems == [
        f"app_db: newest verified backup {manifest.backup_id} is 2h05m old (max 45m)"
    ]
    assert check_freshness([], [], NOW, timedelta(hours=1)) == []
