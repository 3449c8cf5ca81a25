"""DAG integrity: every DAG file parses with no network, DB or subprocess, and is well formed."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
STACKS = REPO / "include" / "stacks"
STACK_NAMES = sorted(p.stem for p in STACKS.glob("*.yaml"))


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("DAG files must not use the network or subprocesses at parse time")


def _parse(dag_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setattr(socket.socket, "connect", _forbidden)
    monkeypatch.setattr(socket, "create_connection", _forbidden)
    monkeypatch.setattr(subprocess.Popen, "__init__", _forbidden)
    try:
        return DagBag(dag_folder=str(dag_folder), safe_mode=True)
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def dagbag() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("OPSFLOW_STACKS_DIR", raising=False)
        yield _parse(DAGS, monkeypatch)


def test_every_dag_file_imports_without_network_db_or_subprocess(dagbag: Any) -> None:
    assert dagbag.import_errors == {}


def test_every_stack_file_has_a_dag_file() -> None:
    assert sorted(p.stem for p in DAGS.glob("*.py")) == sorted(
        [*STACK_NAMES, "airflow_maintenance"]
    )


@pytest.mark.parametrize("stack", STACK_NAMES)
def test_each_stack_gets_its_dags(dagbag: Any, stack: str) -> None:
    workflows = ("deploy", "log_cleanup", "backup", "restore")
    expected = {f"{stack}__{workflow}" for workflow in workflows}
    assert expected <= set(dagbag.dags)
    assert dagbag.dags[f"{stack}__deploy"].schedule is None
    assert dagbag.dags[f"{stack}__restore"].schedule is None


def test_backup_is_nightly_in_the_stack_timezone_with_a_group_per_source(dagbag: Any) -> None:
    demo = yaml.safe_load((STACKS / "demo.yaml").read_text())
    dag = dagbag.dags["demo__backup"]
    assert dag.schedule == demo.get("schedules", {}).get("backup", "0 2 * * *")
    assert str(dag.timezone.name) == demo.get("timezone", "UTC")
    groups = {task.task_group.group_id for task in dag.tasks if task.task_group.group_id}
    assert groups == {"app_db", "cache", "config"}
    assert dag.get_task("app_db.verify").upstream_task_ids == {"app_db.dump"}
    always = {"retention", "freshness", "cleanup", "summary"}
    assert {t.task_id for t in dag.tasks if t.trigger_rule == "all_done"} == always


def test_log_cleanup_is_nightly_from_the_stack_file(dagbag: Any) -> None:
    demo = yaml.safe_load((STACKS / "demo.yaml").read_text())
    expected = demo.get("schedules", {}).get("log_cleanup", "30 3 * * *")
    dag = dagbag.dags["demo__log_cleanup"]
    assert dag.schedule == expected
    assert dag.get_task("summary").upstream_task_ids == {
        "log_files", "container_logs", "prune_images",
    }  # fmt: skip
    assert all(task.retries == 1 for task in dag.tasks if task.task_id != "summary")


def test_airflow_log_cleanup_dag(dagbag: Any) -> None:
    from airflow.exceptions import ParamValidationError

    dag = dagbag.dags["airflow__log_cleanup"]
    assert dag.schedule == "15 4 * * *"
    params = _serialized(dagbag, "airflow__log_cleanup").params
    assert params.deep_merge({"retention_days": 7}).validate()["retention_days"] == 7
    with pytest.raises(ParamValidationError):
        params.deep_merge({"retention_days": 0}).validate()
    assert "airflow db clean" in dag.doc_md


def test_dags_have_owner_tags_docs_and_explicit_retries(dagbag: Any) -> None:
    assert dagbag.dags
    for dag_id, dag in dagbag.dags.items():
        stack = dag_id.split("__")[0]
        assert "opsflow" in dag.tags, dag_id
        assert dag.doc_md, dag_id
        if stack != "airflow":
            assert f"stack:{stack}" in dag.tags and f"`{stack}`" in dag.doc_md, dag_id
        assert dag.max_active_runs == 1, dag_id
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", (dag_id, task.task_id)
            assert isinstance(task.retries, int), (dag_id, task.task_id)


@pytest.mark.parametrize("kind", ["deploy", "upgrade", "rollback", "restore"])
def test_every_release_task_retries_what_failed_before_it_ran(dagbag: Any, kind: str) -> None:
    # A task the scheduler queued before the API server listened fails without running;
    # it must get another try (verdicts raise AirflowFailException and are never retried).
    dag = dagbag.dags[f"demo__{kind}"]
    assert {task.task_id: task.retries for task in dag.tasks} == {
        task.task_id: 2 for task in dag.tasks
    }


def test_deploy_runs_its_steps_in_order(dagbag: Any) -> None:
    dag = dagbag.dags["demo__deploy"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "lock", "build", "migrate", "start", "verify", "record", "unlock", "summary",
    ]  # fmt: skip
    always = {t.task_id for t in dag.tasks if t.trigger_rule == "all_done"}
    assert always == {"record", "unlock", "summary"}


def test_upgrade_rolls_back_after_the_snapshot_and_always_unlocks(dagbag: Any) -> None:
    dag = dagbag.dags["demo__upgrade"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "lock", "preflight", "snapshot", "build", "pre_upgrade_backup", "migrate", "start",
        "verify", "rollback", "rollback_verify", "record", "unlock", "summary",
    ]  # fmt: skip
    always = {t.task_id for t in dag.tasks if t.trigger_rule == "all_done"}
    assert always == {"rollback", "record", "unlock", "summary"}
    # One alert per failed run, from the summary, saying how the rollback ended.
    alerting = [t.task_id for t in dag.tasks if t.on_failure_callback]
    assert alerting == []
    # The backup may be skipped on purpose (no PostgreSQL source); a failure stops the rest.
    assert dag.get_task("migrate").trigger_rule == "none_failed"
    assert dag.get_task("rollback_verify").trigger_rule == "all_success"


def test_an_upgrade_whose_guide_goes_down_first_takes_the_old_release_down_after_the_backup(
    dagbag: Any,
) -> None:
    # WeKnora's guide: back up, `docker-compose down`, build, `migrate.sh up`, start.
    dag = dagbag.dags["weknora__upgrade"]
    assert [t.task_id for t in dag.topological_sort()][:9] == [
        "lock", "preflight", "snapshot", "build", "pre_upgrade_backup", "down", "migrate",
        "start", "verify",
    ]  # fmt: skip
    assert dag.get_task("down").trigger_rule == "none_failed"
    assert "down" in dag.get_task("rollback").step_task_ids
    assert "`down`" in (dag.doc_md or "")
    assert "down" not in dagbag.dags["demo__upgrade"].task_ids


def test_every_stack_changing_dag_takes_the_stack_lock_first(dagbag: Any) -> None:
    for kind in ("deploy", "upgrade", "rollback", "restore"):
        dag = dagbag.dags[f"demo__{kind}"]
        order = [t.task_id for t in dag.topological_sort()]
        assert order[0] == "lock" and order[-2:] == ["unlock", "summary"], kind
        assert dag.get_task("lock").mode == "reschedule", kind
        assert dag.get_task("unlock").trigger_rule == "all_done", kind


def test_rollback_form_offers_previous_and_refuses_shell_text(dagbag: Any) -> None:
    from airflow.exceptions import ParamValidationError

    params = _serialized(dagbag, "demo__rollback").params
    assert params.validate()["release"] == "previous"
    assert params.deep_merge({"release": "1.0.0"}).validate()["restore_data"] is False
    with pytest.raises(ParamValidationError):
        params.deep_merge({"release": "1.0.0; rm -rf /"}).validate()


def test_pull_stacks_pull_instead_of_building(dagbag: Any) -> None:
    assert "pull" in dagbag.dags["echomind__deploy"].task_ids


@pytest.mark.parametrize("dag_id", ["demo__deploy", "demo__log_cleanup"])
def test_failing_tasks_alert_through_the_stack_routes(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    for task in dag.tasks:
        callbacks = task.on_failure_callback or []
        routes = sorted(type(cb).__name__ for cb in callbacks)
        if task.task_id == "summary":
            assert routes == []  # the failing step has alerted already
        else:
            assert routes == ["EmailAlert", "WebhookAlert"], task.task_id


def _serialized(dagbag: Any, dag_id: str) -> Any:
    """The DAG as the scheduler and API server see it; they validate a run's conf on it."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags[dag_id]))


@pytest.mark.parametrize(
    "version", ["1.0.0", "1.1.0", "1.2.0-never-ready", "v2_rc.1", "2026.11.21"]
)
def test_trigger_form_accepts_plain_versions(dagbag: Any, version: str) -> None:
    params = _serialized(dagbag, "demo__deploy").params.deep_merge({"version": version})
    assert params.validate()["version"] == version


@pytest.mark.parametrize(
    "conf",
    [
        {"version": "1.0.0; rm -rf /"},
        {"version": "$(reboot)"},
        {"version": "1.0.0 && id"},
        {"version": "../../etc"},
        {"version": "1.0.0\n"},
        {"version": ""},
        {"version": 100},
        {"version": "1.0.0", "dry_run": "yes"},
        {},
    ],
)
def test_trigger_form_refuses_bad_input(dagbag: Any, conf: dict[str, Any]) -> None:
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param"):
        _serialized(dagbag, "demo__deploy").params.deep_merge(conf).validate()


def test_a_broken_stack_file_is_an_import_error_of_its_own_dag_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stacks, dags = tmp_path / "stacks", tmp_path / "dags"
    shutil.copytree(STACKS, stacks)
    shutil.copytree(DAGS, dags)
    broken = yaml.safe_load((stacks / "kratos.yaml").read_text())
    broken["services"][0]["health"] = [{"kind": "tcp", "port": 99999}]
    (stacks / "kratos.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(stacks))

    bag = _parse(dags, monkeypatch)

    assert list(bag.import_errors) == ["kratos.py"] or all(
        key.endswith("kratos.py") for key in bag.import_errors
    )
    message = next(iter(bag.import_errors.values()))
    assert "kratos.yaml" in message
    assert "services[0].health[0].port" in message
    assert "99999" in message
    assert "kratos__deploy" not in bag.dags and "kratos__log_cleanup" not in bag.dags
    assert {f"{s}__deploy" for s in STACK_NAMES if s != "kratos"} <= set(bag.dags)
    assert "airflow__log_cleanup" in bag.dags


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        ("demo__backup", {"sources": ["app_db", "nope"]}),
        ("demo__backup", {"sources": []}),
        ("demo__backup", {"verify": "no"}),
        ("demo__restore", {}),
        ("demo__restore", {"confirm": "dem"}),
        ("demo__restore", {"confirm": "demo\n"}),
        ("demo__restore", {"confirm": "demo", "backup_id": "../../etc/passwd"}),
        ("demo__restore", {"confirm": "demo", "backup_id": "20261121T020000Z-1a2b3c; id"}),
        ("demo__restore", {"confirm": "demo", "target_database": "x; DROP DATABASE app"}),
        ("demo__restore", {"confirm": "demo", "sources": ["config"]}),
    ],
)
def test_backup_and_restore_forms_refuse_bad_input(
    dagbag: Any, dag_id: str, conf: dict[str, Any]
) -> None:
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param"):
        _serialized(dagbag, dag_id).params.deep_merge(conf).validate()


def test_restore_form_accepts_a_backup_id_or_latest(dagbag: Any) -> None:
    params = _serialized(dagbag, "demo__restore").params
    for backup_id in ("latest", "20261121T020000Z-1a2b3c"):
        conf = {"confirm": "demo", "backup_id": backup_id, "target_database": "copy_1"}
        assert params.deep_merge(conf).validate()["backup_id"] == backup_id
