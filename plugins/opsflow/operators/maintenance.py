"""Housekeeping steps: log files, container logs, old images, Airflow's own logs.

Each step processes everything it was given before it fails, so one unreadable root does
not hide what happened to the others; its record (XCom) carries the full report for the
run summary and its return value shows the same report in the UI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Context

from opsflow.operators.steps import StepOperator, StepRecord, human_bytes, run_stack
from opsflow.stack.model import LogRoot, Stack


class MaintenanceStepOperator(StepOperator):
    """Base of the housekeeping steps: every root is handled before the step fails."""

    ui_color = "#eef6ea"
    returns_record = True

    def housekeep(self, record: StepRecord) -> list[str]:
        """Do the work, fill ``record``; return the problems that must fail the task."""
        raise NotImplementedError

    def _out_of_reach(self, stack: Stack, work: str, record: StepRecord) -> bool:
        """Say plainly, in the log and the summary, what this runtime keeps out of reach."""
        from opsflow.runtimes.registry import runtime_for

        reason = runtime_for(stack).out_of_reach(work)
        if reason is None:
            return False
        self.log.info("Nothing done: %s", reason)
        record.detail = f"out of reach: {reason}"
        record.lines.append(record.detail)
        return True

    def run(self, record: StepRecord, context: Context) -> None:
        record.problems = self.housekeep(record)


def describe_root_report(label: str, report: dict[str, Any]) -> list[str]:
    if report["status"] == "missing":
        return [f"{label}: WARNING root does not exist, nothing to do"]
    verb = "would " if report["dry_run"] else ""
    lines = [
        f"{label}: {report['status']}; {verb}compress {report['compressed']}, "
        f"{verb}delete {report['deleted']}, {verb}remove {report['dirs_removed']} dirs; "
        f"{human_bytes(report['bytes_before'])} -> {human_bytes(report['bytes_after'])} "
        f"({report['files_matched']} of {report['files_seen']} files matched; skipped: "
        f"{report['skipped_open']} open, {report['skipped_recent']} recent, "
        f"{report['skipped_changed']} changed while compressing)"
    ]
    if report["largest"]:
        largest = ", ".join(f"{name} ({human_bytes(size)})" for name, size in report["largest"])
        lines.append(f"{label}: largest remaining: {largest}")
    if report.get("error"):
        lines.append(f"{label}: ERROR {report['error']}")
    if report.get("note"):
        lines.append(f"{label}: NOTE {report['note']}")
    return lines


def clean_roots(
    roots: Sequence[tuple[str, Path, Any]], *, dry_run: bool, record: StepRecord
) -> list[str]:
    """Run the file-cleanup engine over ``(label, path, rule)`` roots; return the failures."""
    from opsflow.logs.files import clean_root, open_file_ids

    open_files = open_file_ids()
    reports = [
        (label, str(path), clean_root(path, rule, dry_run=dry_run, open_files=open_files).to_dict())
        for label, path, rule in roots
    ]
    return summarise_roots(reports, dry_run=dry_run, record=record)


def summarise_roots(
    reports: Sequence[tuple[str, str, dict[str, Any]]], *, dry_run: bool, record: StepRecord
) -> list[str]:
    """Fill ``record`` from ``(label, where, report)`` of every root; return the failures."""
    problems: list[str] = []
    for label, where, report in reports:
        record.lines.extend(describe_root_report(label, report))
        if report["status"] == "error":
            problems.append(f"log root {label} ({where}) failed: {report['error']}")
    record.report = {"roots": {label: report for label, _, report in reports}}
    before = sum(report["bytes_before"] for _, _, report in reports)
    after = sum(report["bytes_after"] for _, _, report in reports)
    record.detail = f"{len(reports)} roots, {human_bytes(before)} -> {human_bytes(after)}" + (
        " (dry run)" if dry_run else ""
    )
    return problems


def root_rule(root: LogRoot) -> Any:
    from opsflow.logs.files import CleanupRule, parse_size

    return CleanupRule(
        patterns=tuple(root.patterns),
        compress_after_days=root.compress_after_days,
        delete_after_days=root.delete_after_days,
        delete_uncompressed=root.delete_uncompressed,
        max_total_bytes=parse_size(root.max_total_size) if root.max_total_size else None,
        min_age_minutes=root.min_age_minutes,
        compression=root.compression,
    )


def root_path(stack: Stack, root: LogRoot) -> Path:
    """Host path of a log root (a relative one under the runtime's working dir); a named
    volume's comes from the Docker Engine."""
    if root.path is not None:
        from opsflow.runtimes.registry import runtime_for

        base = runtime_for(stack).host_path(root.path)
    else:
        from opsflow.runtimes.engine import volume_mountpoint

        assert root.volume is not None
        base = volume_mountpoint(root.volume) or Path(f"/nonexistent-volume/{root.volume}")
    return base / root.subdir if root.subdir else base


class StackLogFilesOperator(MaintenanceStepOperator):
    """Compress, delete and cap the log files of every ``logs.roots`` entry of a stack:
    host paths and volumes here, claims through the runtime (a pod that mounts them)."""

    def housekeep(self, record: StepRecord) -> list[str]:
        stack = run_stack(self.stack_name)
        if not stack.logs.roots:
            record.detail = "the stack declares no log roots"
            return []
        from opsflow.logs.files import open_file_ids

        # One snapshot of the open files for every root on this host (none for claims).
        local = any(root.claim is None for root in stack.logs.roots)
        open_files = open_file_ids() if local else frozenset()
        reports = [
            self._clean(stack, root, record.dry_run, open_files) for root in stack.logs.roots
        ]
        return summarise_roots(reports, dry_run=record.dry_run, record=record)

    def _clean(
        self,
        stack: Stack,
        root: LogRoot,
        dry_run: bool,
        open_files: frozenset[tuple[int, int]],
    ) -> tuple[str, str, dict[str, Any]]:
        from opsflow.logs.files import RootReport, clean_root
        from opsflow.runtimes.base import RuntimeFailure
        from opsflow.runtimes.registry import runtime_for

        if root.claim is None:
            path = root_path(stack, root)
            label = root.path or f"volume:{root.volume}"
            report = clean_root(path, root_rule(root), dry_run=dry_run, open_files=open_files)
            return label, str(path), report.to_dict()
        label = f"claim:{root.claim}" + (f"/{root.subdir}" if root.subdir else "")
        rule = dataclasses.asdict(root_rule(root))
        try:
            found = runtime_for(stack).clean_claim(
                root.claim, root.subdir, rule, dry_run=dry_run, log=self.log
            )
        except RuntimeFailure as error:
            failed = RootReport(root=label, status="error", dry_run=dry_run, error=str(error))
            return label, label, failed.to_dict()
        return label, label, found


class ContainerLogsOperator(MaintenanceStepOperator):
    """Report each container's log size; fail when required log limits are missing."""

    def housekeep(self, record: StepRecord) -> list[str]:
        from opsflow.logs.containers import container_log_report, log_limit_violations

        stack = run_stack(self.stack_name)
        if self._out_of_reach(stack, "container_logs", record):
            return []
        report = container_log_report(stack)
        record.report = [entry.to_dict() for entry in report]
        for entry in report:
            size = "?" if entry.log_bytes is None else human_bytes(entry.log_bytes)
            limits = f"max-size={entry.max_size or '-'} max-file={entry.max_file or '-'}"
            record.lines.append(
                f"{entry.service:<12} {entry.container}: log {size} ({entry.log_driver}, {limits})"
            )
        violations = log_limit_violations(stack, report)
        record.detail = f"{len(report)} containers, {len(violations)} without required limits"
        return violations


class PruneImagesOperator(MaintenanceStepOperator):
    """Remove the stack's images older than the last K releases, never a rollback image."""

    def housekeep(self, record: StepRecord) -> list[str]:
        from opsflow.logs.containers import plan_image_pruning, prune_images

        stack: Stack = run_stack(self.stack_name)
        if self._out_of_reach(stack, "images", record):
            return []
        plan = plan_image_pruning(stack, stack.logs.keep_images_releases)
        outcome = prune_images(plan, dry_run=record.dry_run)
        record.report = {"plan": plan.to_dict(), "outcome": outcome}
        record.lines.extend(outcome)
        record.detail = f"{len(outcome)} image actions" + (" (dry run)" if record.dry_run else "")
        return []


class AirflowLogsOperator(MaintenanceStepOperator):
    """Delete Airflow's task and DAG-processor logs older than the retention."""

    template_fields: Sequence[str] = (*MaintenanceStepOperator.template_fields, "retention_days")

    def __init__(self, *, retention_days: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days

    def housekeep(self, record: StepRecord) -> list[str]:
        from opsflow.logs.airflow_logs import airflow_log_roots

        days = int(self.retention_days)
        if days < 1:
            raise ValueError(f"retention_days must be at least 1, got {self.retention_days!r}")
        return clean_roots(airflow_log_roots(days), dry_run=record.dry_run, record=record)
