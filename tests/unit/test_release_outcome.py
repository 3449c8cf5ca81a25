"""How an upgrade ended, decided from what runs, not from which tasks happened to run.

The cases are the paths a crash can take: a gate and a rollback that failed before they
ran, a rollback whose gate never ran, a half-switched stack, nothing of the new release
reaching the stack. Each asserts the outcome and the exact alert text.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from opsflow.releases.outcome import (
    Observation,
    StepFacts,
    observe,
    rollback_decision,
    settle_upgrade,
)

NEW = {"api": "sha256:new-api", "worker": "sha256:new-worker"}
OLD = {"api": "sha256:old-api", "worker": "sha256:old-worker"}
RELEASES = [("1.1.1", NEW), ("1.1.0", OLD)]


@dataclass(frozen=True)
class Container:
    service: str
    image_id: str
    state: str = "running"

    @property
    def up(self) -> bool:
        return self.state in ("running", "restarting")


def running(images: dict[str, str], **states: str) -> Observation:
    containers = [Container(s, i, states.get(s, "running")) for s, i in images.items()]
    containers.append(Container("postgres", "sha256:pg"))  # not versioned: ignored
    return observe(containers, ["api", "worker"], RELEASES)


def test_observe_names_the_release_every_service_runs() -> None:
    assert running(NEW).release == "1.1.1"
    assert running(OLD).release == "1.1.0"
    assert running(NEW).describe() == "api, worker run 1.1.1"


def test_observe_tells_a_half_switched_stack_apart() -> None:
    mixed = running({"api": NEW["api"], "worker": OLD["worker"]})
    assert mixed.release is None
    assert mixed.describe() == "api runs 1.1.1; worker runs 1.1.0"
    stopped = running(NEW, worker="exited")
    assert stopped.release is None
    assert stopped.describe() == "api runs 1.1.1; worker is not running"
    stranger = running({"api": "sha256:0123456789abcdef0123", "worker": NEW["worker"]})
    assert stranger.describe() == (
        "api runs an image no release of this run recorded (sha256:0123456789ab); worker runs 1.1.1"
    )


def test_a_shared_image_counts_for_both_releases_and_the_first_candidate_wins() -> None:
    shared = observe(
        [Container("api", "sha256:same")],
        ["api"],
        [("1.1.1", {"api": "sha256:same"}), ("1.1.0", {"api": "sha256:same"})],
    )
    assert shared.release == "1.1.1"
    assert shared.services == {"api": ("1.1.1", "1.1.0")}


FAILED_BEFORE_RUNNING = (
    "verify",
    "failed before it ran (an infrastructure error, see its task log)",
)


def decide(facts: StepFacts, observed: Observation, touched: bool = True) -> tuple[bool, str]:
    decision = rollback_decision(
        target="1.1.1",
        previous="1.1.0",
        has_snapshot=True,
        facts=facts,
        observed=observed,
        touched=touched,
    )
    return decision.needed, decision.reason


def test_a_gate_that_never_ran_does_not_skip_the_rollback() -> None:
    # The crash of the issue: start finished, verify failed without running.
    facts = StepFacts(failure=FAILED_BEFORE_RUNNING, verify_ok=False)
    assert decide(facts, running(NEW)) == (
        True,
        "verify: failed before it ran (an infrastructure error, see its task log)",
    )


def test_a_verified_release_that_runs_needs_no_rollback() -> None:
    assert decide(StepFacts(verify_ok=True), running(NEW)) == (
        False,
        "the upgrade succeeded: api, worker run 1.1.1",
    )


def test_a_verified_gate_is_not_enough_when_the_engine_runs_something_else() -> None:
    needed, reason = decide(StepFacts(verify_ok=True), running(NEW, api="exited"))
    assert (
        needed
        and reason == "1.1.1 is not verified as running: api is not running; worker runs 1.1.1"
    )


def test_nothing_reached_the_stack_so_nothing_is_rolled_back() -> None:
    facts = StepFacts(failure=("build", "build of demo 9.9.9 failed: no such release"))
    assert decide(facts, running(OLD), touched=False) == (
        False,
        "nothing of 1.1.1 reached the stack (stopped at build)",
    )
    assert decide(facts, running(OLD), touched=True)[0] is True


def test_no_snapshot_means_nothing_changed() -> None:
    decision = rollback_decision(
        target="1.1.1",
        previous=None,
        has_snapshot=False,
        facts=StepFacts(failure=("preflight", "not healthy")),
        observed=running(OLD),
        touched=True,
    )
    assert not decision.needed


def settle(facts: StepFacts, observed: Observation) -> tuple[str, str | None]:
    settled = settle_upgrade(target="1.1.1", previous="1.1.0", facts=facts, observed=observed)
    return settled.outcome, settled.alert("demo", "1.1.0", "1.1.1")


def test_succeeded_only_when_verified_and_running() -> None:
    assert settle(StepFacts(verify_ok=True), running(NEW)) == ("succeeded", None)


def test_rolled_back_only_when_the_previous_release_runs_and_its_gate_passed() -> None:
    facts = StepFacts(
        failure=("verify", "health gate failed after 20s: 1 of 8 checks failing; http: 503"),
        rollback="ok",
        rollback_verify_ok=True,
    )
    assert settle(facts, running(OLD)) == (
        "rolled-back",
        "upgrade demo 1.1.0 -> 1.1.1 failed at verify with health gate failed after 20s: "
        "1 of 8 checks failing; http: 503; rolled back to 1.1.0; healthy",
    )


def test_the_issues_crash_says_what_really_runs() -> None:
    # verify and rollback both failed without running; 1.1.1 runs, unverified.
    facts = StepFacts(failure=FAILED_BEFORE_RUNNING, rollback=None)
    assert settle(facts, running(NEW)) == (
        "rollback-failed",
        "upgrade demo 1.1.0 -> 1.1.1 failed at verify with failed before it ran (an "
        "infrastructure error, see its task log); rollback failed at rollback with it did not "
        "run; api, worker run 1.1.1, not verified; human needed",
    )


def test_a_rollback_whose_gate_never_ran_is_not_called_healthy() -> None:
    facts = StepFacts(
        failure=("verify", "gate failed"),
        rollback="ok",
        rollback_verify_ok=False,
        rollback_verify_error="did not finish",
    )
    outcome, alert = settle(facts, running(OLD))
    assert outcome == "rollback-failed"
    assert alert is not None and alert.endswith(
        "rollback failed at rollback_verify with did not finish; api, worker run 1.1.0; "
        "human needed"
    )


def test_a_skipped_rollback_with_the_old_release_running_is_a_plain_failure() -> None:
    facts = StepFacts(failure=("build", "no such release"), rollback="skipped")
    assert settle(facts, running(OLD)) == (
        "failed",
        "upgrade demo 1.1.0 -> 1.1.1 failed at build with no such release; the running "
        "release was not changed (api, worker run 1.1.0)",
    )


@pytest.mark.parametrize(
    "observed",
    [running({"api": NEW["api"], "worker": OLD["worker"]}), running(OLD, api="exited")],
)
def test_a_half_switched_stack_needs_a_human_even_after_a_rollback(observed: Observation) -> None:
    facts = StepFacts(failure=("verify", "gate failed"), rollback="ok", rollback_verify_ok=True)
    outcome, alert = settle(facts, observed)
    assert outcome == "rollback-failed"
    assert alert is not None and alert.endswith(
        f"rollback failed at rollback_verify with 1.1.0 passed its gate, but that is not what "
        f"runs now; {observed.describe()}; human needed"
    )


def test_a_long_error_never_cuts_off_how_the_run_ended() -> None:
    from opsflow.notifiers.message import ERROR_MAX_CHARS, error_first_line

    body = "x" * 2000
    facts = StepFacts(failure=("verify", f"health gate failed: {body}"), rollback="ok",
                      rollback_verify_ok=True)  # fmt: skip
    _, alert = settle(facts, running(OLD))
    assert alert is not None and alert.endswith("xxx; rolled back to 1.1.0; healthy")
    assert "failed at verify with health gate failed: xxx" in alert and " ... " in alert
    # What the notifier sends (type name and all) still ends with the outcome.
    sent = error_first_line(RuntimeError(alert))
    assert len(sent) <= ERROR_MAX_CHARS and sent.endswith("rolled back to 1.1.0; healthy")


def test_a_long_error_keeps_its_cause_at_the_end() -> None:
    """A crash-looping worker's evidence says why only at its end (Backend2's replica: the
    container's last output line after the service, container and restart count)."""
    evidence = (
        "health gate failed after 2s (conclusive evidence from the runtime): service "
        "worker-lumina: opsflow-sys-backend2-worker-lumina-1 exited with code 2 and is "
        "restarting (restart 1): a crash loop; service "
        "worker-standard: opsflow-sys-backend2-worker-standard-1 exited with code 2 and is "
        "restarting (restart 2): a crash loop; last output: ModuleNotFoundError: No module "
        "named 'lumina_sdk'"
    )
    facts = StepFacts(failure=("verify", evidence), rollback="ok", rollback_verify_ok=True)

    _, alert = settle(facts, running(OLD))

    assert alert is not None
    assert alert.startswith(
        "upgrade demo 1.1.0 -> 1.1.1 failed at verify with health gate failed after 2s "
        "(conclusive evidence from the runtime): service worker-lumina: "
        "opsflow-sys-backend2-worker-lumina-1 exited with code 2"
    )
    assert alert.endswith(
        "a crash loop; last output: ModuleNotFoundError: No module named 'lumina_sdk'; "
        "rolled back to 1.1.0; healthy"
    )
    assert " ... " in alert and len(alert) < len(evidence) + 100
