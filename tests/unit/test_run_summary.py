"""The run summary says what the run did and what runs, in exact words.

Built from the step records the steps push and the task states Airflow reports, as the
summary task reads them at the end of a run.
"""

from __future__ import annotations

from typing import Any

from opsflow.operators.summary import render_summary


def record(status: str, detail: str = "", **more: Any) -> dict[str, Any]:
    return {"status": status, "detail": detail, "seconds": 1.0, "commands": [], "lines": [],
            "images": {}, "health": [], **more}  # fmt: skip


def summary(steps: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"stack": "demo", "workflow": "upgrade", "version": "1.1.0", "run_id": "manual__1",
            "total_seconds": 9.0, "steps": steps, **more}  # fmt: skip


def test_a_green_upgrade_with_a_skipped_rollback_gate_reads_succeeded() -> None:
    text = render_summary(
        summary(
            {
                "verify": record("ok", "3 rounds"),
                "rollback": record("skipped", "succeeded"),
                "rollback_verify": None,
            },
            outcome="succeeded",
            states={"rollback_verify": "skipped"},
            running="api, worker run 1.1.0",
            images={"api": {"image": "opsflow-demo/api:1.1.0", "id": "sha256:" + "a" * 64}},
        )
    )
    lines = text.splitlines()
    assert lines[0] == "==== opsflow upgrade summary: demo 1.1.0 -> SUCCEEDED ===="
    assert "rollback_verify skipped          -  skipped" in lines
    assert "running now (as the engine reports it): api, worker run 1.1.0" in lines
    assert "  api          opsflow-demo/api:1.1.0  sha256:aaaaaaaaaaaa" in lines


def test_a_step_that_failed_before_it_ran_is_named_so() -> None:
    text = render_summary(summary({"verify": None}, outcome="failed", states={"verify": "failed"}))
    assert (
        "verify     failed           -  failed before it ran (an infrastructure error, "
        "see its task log)"
    ) in text.splitlines()


def test_dry_run_checks_are_not_failures() -> None:
    health = [{"name": "http GET http://127.0.0.1:18080/health/ready", "ok": None,
               "detail": "not run"}]  # fmt: skip
    text = render_summary(summary({"verify": record("dry-run", health=health)}, outcome="dry-run"))
    assert "FAIL" not in text
    assert "  ---- http GET http://127.0.0.1:18080/health/ready: not run" in text.splitlines()


def test_images_are_what_runs_not_what_the_fetch_step_built() -> None:
    # After a rollback the record names the previous release's images; the fetch step's
    # images (the failed release) are not the stack's.
    built = {"api": {"image": "opsflow-demo/api:1.2.0", "id": "sha256:" + "b" * 64}}
    back = {"api": {"image": "opsflow-demo/api:1.1.0", "id": "sha256:" + "c" * 64}}
    text = render_summary(
        summary({"build": record("ok", images=built)}, outcome="rolled-back", images=back)
    )
    assert "opsflow-demo/api:1.2.0" not in text
    assert "  api          opsflow-demo/api:1.1.0  sha256:cccccccccccc" in text.splitlines()
    assert text.splitlines()[0].endswith("-> ROLLED-BACK ====")
