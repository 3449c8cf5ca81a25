"""Where the suite's time goes, and the order that keeps both workers busy to the end.

`make test` runs a test module at a time on each of two workers (``--dist loadfile``). A
module of replicas or DAG runs takes minutes, a unit module seconds: dealt out last, one
long module leaves the other worker idle for its whole length. So the long tiers are
collected first (longest processing time first, the classic rule for two machines) and
the short ones fill the gaps at the end; the summary at the end of a run prints each
module's time and each worker's busy time, to see when the order needs another look.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import PurePosixPath

import pytest

# Tiers in the order they are dealt out: the DAG modules of the demo run longest (minutes
# each), the systems modules next, then the integration tier; unit modules fill the gaps.
TIER_ORDER = ("e2e", "systems", "integration")
SUMMARY_MODULES = 25

_module_seconds: dict[str, float] = defaultdict(float)
_module_worker: dict[str, str] = {}
_worker_busy: dict[str, float] = defaultdict(float)


def tier_rank(nodeid: str) -> int:
    """Rank of a test's tier in TIER_ORDER (unit, dags and the rest after them)."""
    parts = PurePosixPath(nodeid.split("::", 1)[0]).parts
    tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else ""
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tiers first; a stable sort keeps each module's tests in their written order."""
    items.sort(key=lambda item: tier_rank(item.nodeid))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)  # set by xdist on the controller's copy
    worker = str(getattr(getattr(node, "gateway", None), "id", "main"))
    module = report.nodeid.split("::", 1)[0]
    _module_seconds[module] += report.duration
    _module_worker[module] = worker
    _worker_busy[worker] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _module_seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time per test module (setup + call + teardown)")
    ranked = sorted(_module_seconds.items(), key=lambda item: -item[1])
    for module, seconds in ranked[:SUMMARY_MODULES]:
        write(f"{seconds:8.1f} s  {_module_worker[module]:>4}  {module}")
    rest = ranked[SUMMARY_MODULES:]
    if rest:
        write(f"{sum(s for _, s in rest):8.1f} s  in {len(rest)} more modules")
    busy = ", ".join(f"{w} {s:.0f} s" for w, s in sorted(_worker_busy.items()))
    write(f"busy time per worker: {busy}")
