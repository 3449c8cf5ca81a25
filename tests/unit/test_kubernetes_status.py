"""The rollout, Job and pod rules of the Kubernetes runtime, on status JSON as the API
server returns it (field names and values from the Deployment, StatefulSet and Job
controllers' documentation)."""

from __future__ import annotations

from typing import Any

import pytest

from opsflow.runtimes.evidence import conclusive, judge
from opsflow.runtimes.kubernetes_status import container_states, job_outcome, rollout


def deployment(generation: int = 2, wanted: int = 3, **status: Any) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "api", "generation": generation},
        "spec": {"replicas": wanted, "progressDeadlineSeconds": 120},
        "status": status,
    }


def test_a_rollout_is_done_only_when_every_rule_holds() -> None:
    done = rollout(deployment(observedGeneration=2, replicas=3, updatedReplicas=3,
                              availableReplicas=3, readyReplicas=3))  # fmt: skip
    assert (done.done, done.failure) == (True, None)


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        ({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3},
         "the controller has not seen generation 2 yet"),
        ({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3},
         "1 of 3 replicas updated"),
        # Ready == replicas, yet an old pod still serves: the provider's helper says done.
        ({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "readyReplicas": 3,
          "availableReplicas": 3}, "1 old replica(s) still running"),
        ({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2},
         "2 of 3 replicas available"),
    ],
)  # fmt: skip
def test_a_rollout_in_the_middle_is_not_done(status: dict[str, Any], detail: str) -> None:
    state = rollout(deployment(**status))
    assert (state.done, state.failure, state.detail) == (False, None, detail)


def test_a_progress_deadline_is_a_failure_with_the_controllers_message() -> None:
    message = 'ReplicaSet "api-7d9" has timed out progressing.'
    state = rollout(
        deployment(
            observedGeneration=2, replicas=3, updatedReplicas=1, availableReplicas=2,
            conditions=[{"type": "Progressing", "status": "False",
                         "reason": "ProgressDeadlineExceeded", "message": message}],
        )
    )  # fmt: skip
    assert state.failure == f"exceeded its progress deadline (120s): {message}"
    assert state.line.startswith("deployment/api: exceeded its progress deadline")


def test_a_statefulset_waits_for_its_update_revision() -> None:
    obj = {
        "kind": "StatefulSet",
        "metadata": {"name": "postgres", "generation": 3},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1,
                   "readyReplicas": 1, "availableReplicas": 1,
                   "currentRevision": "postgres-a", "updateRevision": "postgres-b"},
    }  # fmt: skip
    assert rollout(obj).detail == "revision postgres-a is being replaced by postgres-b"
    obj["status"]["currentRevision"] = "postgres-b"
    assert rollout(obj).done


def test_job_outcome_reads_its_conditions() -> None:
    assert job_outcome({"status": {"active": 1}}) == (False, None)
    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert job_outcome(complete) == (True, None)
    message = "Job has reached the specified backoff limit"
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True",
              "reason": "BackoffLimitExceeded", "message": message}]}}  # fmt: skip
    assert job_outcome(failed) == (
        True, "BackoffLimitExceeded: Job has reached the specified backoff limit"
    )  # fmt: skip


def pod(*statuses: dict[str, Any], probe: bool = True) -> dict[str, Any]:
    container = {"name": "api", **({"readinessProbe": {"httpGet": {"path": "/"}}} if probe else {})}
    return {
        "metadata": {"name": "api-1", "uid": "u1", "creationTimestamp": "2026-12-02T03:00:00Z"},
        "spec": {"containers": [container]},
        "status": {"phase": "Running", "containerStatuses": list(statuses)},
    }


def test_a_crash_loop_reads_as_a_restarting_container_with_its_exit_code() -> None:
    (state,) = container_states(
        pod({"name": "api", "restartCount": 4, "image": "demo/api:1.4.0",
             "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 3}}}),
        "api",
    )  # fmt: skip
    assert (state.service, state.name, state.state, state.exit_code) == (
        "api", "api-1/api", "restarting", 3
    )  # fmt: skip
    assert judge(state, 4) == "exited with code 3 and is restarting (restart 4): a crash loop"


def test_an_image_pull_failure_is_a_container_that_cannot_start() -> None:
    states = container_states(
        pod({"name": "api", "restartCount": 0, "image": "demo/api:9.9.9",
             "state": {"waiting": {"reason": "ImagePullBackOff",
                                   "message": 'Back-off pulling image "demo/api:9.9.9"'}}}),
        "api",
    )  # fmt: skip
    (evidence,) = conclusive(states, {"api"}, {})
    assert (
        evidence.detail == 'cannot start: ImagePullBackOff: Back-off pulling image "demo/api:9.9.9"'
    )


def test_a_running_pod_not_ready_yet_is_no_verdict() -> None:
    (state,) = container_states(
        pod({"name": "api", "restartCount": 0, "ready": False, "image": "demo/api:1.1.0",
             "state": {"running": {"startedAt": "2026-12-02T03:00:05Z"}}}),
        "api",
    )  # fmt: skip
    assert (state.state, state.health, judge(state, 0)) == ("running", "starting", None)
    assert state.started_at is not None and state.started_at.minute == 0


def test_a_pod_without_container_statuses_is_created() -> None:
    (state,) = container_states(
        {"metadata": {"name": "api-2"}, "status": {"phase": "Pending"}}, "api"
    )
    assert (state.state, judge(state, 0)) == ("created", None)
