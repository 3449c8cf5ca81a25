"""The fake controllers, observed only through the real `kubernetes` client: the status
fields and conditions a rollout gate reads, as the real Deployment, StatefulSet and Job
controllers and the kubelet write them, including the failure modes a test can ask for."""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from support.fake_kube_clients import (
    APPLY,
    NS,
    apply_deployment,
    deployment_complete,
    fake_clients,
    fake_deployment,
    pod_log_text,
)
from support.fake_kube_controllers import FakeKubeCluster, fake_kube_cluster

__all__ = ["fake_kube_cluster"]


# ---------------------------------------------------------------- controllers


def test_fake_rollout_is_visible_mid_way_and_complete(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    body = fake_deployment("api", "demo/api:1.0.0", replicas=3)
    apply_deployment(apps, body)
    first = fake_kube_cluster.wait_for("first rollout", lambda: deployment_complete(apps, "api"))
    assert first.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "demo/api:1.1.0"
    generation = apply_deployment(apps, body).metadata.generation
    seen_mid_way = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        d = apps.read_namespaced_deployment("api", NS)
        s = d.status
        caught_up = s.observed_generation == generation
        if caught_up and ((s.updated_replicas or 0) < 3 or (s.replicas or 0) > 3):
            seen_mid_way.append((s.replicas, s.updated_replicas, s.available_replicas))
        if deployment_complete(apps, "api"):
            break
        time.sleep(0.03)
    done = deployment_complete(apps, "api")
    assert seen_mid_way, "never saw the rollout in the middle"
    assert done is not None and done.status.unavailable_replicas is None
    reasons = {c.type: (c.status, c.reason) for c in done.status.conditions}
    assert reasons == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }
    assert done.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    pods = core.list_namespaced_pod(NS, label_selector="app=api").items
    assert len(pods) == 3
    assert {p.spec.containers[0].image for p in pods} == {"demo/api:1.1.0"}
    assert len({p.metadata.labels["pod-template-hash"] for p in pods}) == 1
    statuses = [p.status.container_statuses[0] for p in pods]
    assert all(s.ready and s.state.running for s in statuses)
    assert statuses[0].image_id.startswith("docker-pullable://demo/api@sha256:")
    owners = {p.metadata.owner_references[0].kind for p in pods}
    assert owners == {"ReplicaSet"}
    sets = apps.list_namespaced_replica_set(NS).items
    assert sorted(rs.spec.replicas for rs in sets) == [0, 3]
    apps.patch_namespaced_deployment("api", NS, {"spec": {"replicas": 0}})
    fake_kube_cluster.wait_for("scale to 0", lambda: not core.list_namespaced_pod(NS).items)


def test_fake_rollout_that_never_becomes_available_keeps_old_pods(
    fake_kube_cluster: FakeKubeCluster,
) -> None:
    _, apps, _ = fake_clients(fake_kube_cluster)
    body = fake_deployment("api", "demo/api:1.0.0", replicas=2, progressDeadlineSeconds=1)
    apply_deployment(apps, body)
    fake_kube_cluster.wait_for("1.0.0 rollout", lambda: deployment_complete(apps, "api"))
    fake_kube_cluster.controllers.fail_image("demo/api:9.9.9", "never_ready")
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "demo/api:9.9.9"
    apply_deployment(apps, body)

    def stuck() -> Any:
        d = apps.read_namespaced_deployment("api", NS)
        reasons = {c.type: (c.status, c.reason) for c in d.status.conditions}
        return d if reasons["Progressing"] == ("False", "ProgressDeadlineExceeded") else None

    d = fake_kube_cluster.wait_for("the progress deadline", stuck)
    assert d.status.observed_generation == d.metadata.generation == 2
    assert (d.status.replicas, d.status.updated_replicas, d.status.available_replicas) == (3, 1, 2)
    assert d.status.unavailable_replicas == 1
    available = next(c for c in d.status.conditions if c.type == "Available")
    assert available.status == "True"  # the old pods still serve: Available alone misleads


def test_fake_statefulset_rolls_pods_in_order(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    labels = {"app": "db"}
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": labels},
            "volumeClaimTemplates": [claim],
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "db", "image": "demo/db:15"}]},
            },
        },
    }
    apps.patch_namespaced_stateful_set("db", NS, body, field_manager="opsflow", _content_type=APPLY)

    def settled() -> Any:
        sts = apps.read_namespaced_stateful_set("db", NS)
        s = sts.status
        return (
            sts
            if s.observed_generation == sts.metadata.generation
            and s.ready_replicas == s.updated_replicas == 2
            and s.current_revision == s.update_revision
            else None
        )

    first = fake_kube_cluster.wait_for("db ready", settled)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "demo/db:16"
    apps.patch_namespaced_stateful_set("db", NS, body, field_manager="opsflow", _content_type=APPLY)
    fake_kube_cluster.wait_for(
        "an update in progress",
        lambda: (
            apps.read_namespaced_stateful_set("db", NS).status.current_revision
            != apps.read_namespaced_stateful_set("db", NS).status.update_revision
        ),
    )
    second = fake_kube_cluster.wait_for("db updated", settled)
    assert second.status.update_revision != first.status.update_revision
    pods = core.list_namespaced_pod(NS, label_selector="app=db").items
    assert sorted(p.metadata.name for p in pods) == ["db-0", "db-1"]
    assert {p.spec.containers[0].image for p in pods} == {"demo/db:16"}
    claims = core.list_namespaced_persistent_volume_claim(NS).items
    assert sorted((c.metadata.name, c.status.phase) for c in claims) == [
        ("data-db-0", "Bound"),
        ("data-db-1", "Bound"),
    ]


def test_fake_failure_modes_set_the_fields_a_gate_reads(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, _ = fake_clients(fake_kube_cluster)
    controllers = fake_kube_cluster.controllers
    controllers.fail_image("demo/never:1", "never_ready")
    controllers.fail_image("demo/crash:1", "crash_loop", log="panic: no database")
    controllers.fail_image("demo/pull:9.9.9", "image_pull")
    controllers.fail_image("demo/slow:1", "progress_deadline")
    for name, image in (
        ("never", "demo/never:1"),
        ("crash", "demo/crash:1"),
        ("pull", "demo/pull:9.9.9"),
        ("slow", "demo/slow:1"),
    ):
        apply_deployment(apps, fake_deployment(name, image, replicas=1, progressDeadlineSeconds=1))

    def pod(name: str) -> Any:
        items = core.list_namespaced_pod(NS, label_selector=f"app={name}").items
        return items[0] if items else None

    def timed_out(name: str) -> bool:
        conditions = apps.read_namespaced_deployment(name, NS).status.conditions or []
        return any(
            c.type == "Progressing"
            and c.status == "False"
            and c.reason == "ProgressDeadlineExceeded"
            for c in conditions
        )

    for name in ("never", "slow"):
        fake_kube_cluster.wait_for(f"{name} deadline", functools.partial(timed_out, name))
        never = pod(name)
        assert never.status.phase == "Running"
        assert not never.status.container_statuses[0].ready
        assert apps.read_namespaced_deployment(name, NS).status.available_replicas is None
    crash = fake_kube_cluster.wait_for(
        "a second crash",
        lambda: (p := pod("crash")) and p.status.container_statuses[0].restart_count >= 2 and p,
    )
    state = crash.status.container_statuses[0]
    assert state.state.waiting.reason == "CrashLoopBackOff"
    assert state.last_state.terminated.exit_code == 1
    log = pod_log_text(core, crash.metadata.name)
    assert log.startswith("panic: no database\n")
    last = core.read_namespaced_pod_log(
        crash.metadata.name, NS, tail_lines=1, _preload_content=False
    ).data
    assert last == b"panic: no database\n"
    pull = fake_kube_cluster.wait_for(
        "back-off", lambda: (p := pod("pull")) and p.status.container_statuses and p
    )
    status = pull.status.container_statuses[0]
    assert pull.status.phase == "Pending" and not status.ready and status.image_id == ""
    assert status.state.waiting.reason == "ImagePullBackOff"  # ErrImagePull came first
    assert status.state.waiting.message.startswith('Back-off pulling image "demo/pull:9.9.9"')
    with pytest.raises(ApiException) as not_started:
        core.read_namespaced_pod_log(pull.metadata.name, NS)
    assert not_started.value.status == 400
    assert timed_out("pull") and timed_out("crash")


def test_fake_jobs_succeed_fail_and_keep_their_logs(fake_kube_cluster: FakeKubeCluster) -> None:
    core, _, batch = fake_clients(fake_kube_cluster)
    seen: dict[str, Any] = {}

    def migrate(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
        seen.update(argv=argv, env=env)
        return (0, "migrated 3\n") if env["DB_PASSWORD"] == "pw" else (1, "wrong password\n")

    fake_kube_cluster.controllers.job_handler("demo/migrate:1", migrate)
    core.create_namespaced_secret(NS, {"metadata": {"name": "db"}, "stringData": {"pw": "pw"}})

    def job(name: str, image: str) -> dict[str, Any]:
        env = [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]
        container = {"name": "migrate", "image": image, "command": ["migrate", "up"], "env": env}
        return {
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            },
        }

    def finished(name: str) -> Any:
        found = batch.read_namespaced_job(name, NS)
        types = {c.type for c in found.status.conditions or [] if c.status == "True"}
        return found if types & {"Complete", "Failed"} else None

    batch.create_namespaced_job(NS, job("migrate-ok", "demo/migrate:1"))
    fake_kube_cluster.controllers.fail_image("demo/migrate:broken", "crash_loop", log="boom")
    batch.create_namespaced_job(NS, job("migrate-bad", "demo/migrate:broken"))
    retried = job("migrate-retry", "demo/migrate:broken")
    retried["spec"]["backoffLimit"] = 1
    batch.create_namespaced_job(NS, retried)
    ok = fake_kube_cluster.wait_for("job ok", lambda: finished("migrate-ok"))
    assert ok.status.succeeded == 1 and ok.status.failed is None and ok.status.completion_time
    assert {c.type for c in ok.status.conditions} == {"SuccessCriteriaMet", "Complete"}
    assert seen == {"argv": ["migrate", "up"], "env": {"DB_PASSWORD": "pw"}}
    pods = core.list_namespaced_pod(NS, label_selector="job-name=migrate-ok").items
    assert len(pods) == 1 and pods[0].status.phase == "Succeeded"
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 0
    assert pod_log_text(core, pods[0].metadata.name) == "migrated 3\n"
    bad = fake_kube_cluster.wait_for("job bad", lambda: finished("migrate-bad"))
    failed = next(c for c in bad.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded" and bad.status.failed == 1
    bad_pod = core.list_namespaced_pod(NS, label_selector="job-name=migrate-bad").items[0]
    assert bad_pod.status.container_statuses[0].state.terminated.exit_code == 1
    assert pod_log_text(core, bad_pod.metadata.name) == "boom"
    again = fake_kube_cluster.wait_for("job retried", lambda: finished("migrate-retry"))
    assert again.status.failed == 2 and again.status.active is None
    assert len(core.list_namespaced_pod(NS, label_selector="job-name=migrate-retry").items) == 2


def test_fake_garbage_collection_follows_propagation(fake_kube_cluster: FakeKubeCluster) -> None:
    core, apps, batch = fake_clients(fake_kube_cluster)
    apply_deployment(apps, fake_deployment("api", "demo/api:1", replicas=2))
    fake_kube_cluster.wait_for("api", lambda: deployment_complete(apps, "api"))
    apps.delete_namespaced_deployment("api", NS)
    assert not apps.list_namespaced_replica_set(NS).items
    assert not core.list_namespaced_pod(NS, label_selector="app=api").items
    spec = {
        "backoffLimit": 0,
        "template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "demo/job:1"}]}
        },
    }
    for name in ("kept", "gone"):
        batch.create_namespaced_job(NS, {"metadata": {"name": name}, "spec": spec})
    fake_kube_cluster.wait_for("job pods", lambda: len(core.list_namespaced_pod(NS).items) == 2)
    batch.delete_namespaced_job("kept", NS)  # batch/v1 orphans by default
    batch.delete_namespaced_job("gone", NS, propagation_policy="Foreground")
    left = core.list_namespaced_pod(NS).items
    assert [p.metadata.labels["job-name"] for p in left] == ["kept"]
    assert left[0].metadata.owner_references is None
