"""The docs the Airflow UI shows for the backup, restore, rollback and log cleanup DAGs,
read as a person reads them: rendered from Markdown, raw HTML dropped (as the UI does),
durations written the way a stack file writes them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from markdown_it import MarkdownIt

from opsflow.backup.manifest import (
    Artifact,
    Manifest,
    SourceBackup,
    Verification,
    new_backup_id,
    utcnow,
)
from opsflow.factory.backup import build_backup_dag
from opsflow.factory.maintenance import build_airflow_log_cleanup_dag, build_log_cleanup_dag
from opsflow.factory.restore import build_restore_dag
from opsflow.factory.rollback import build_rollback_dag
from opsflow.operators.backup import BackupFreshnessOperator
from opsflow.operators.steps import StepRecord, human_duration
from opsflow.stack.loader import load_airflow_maintenance, load_stack

STACKS = sorted(p.stem for p in (Path(__file__).parents[2] / "include" / "stacks").glob("*.yaml"))
BUILDERS = {
    "backup": build_backup_dag,
    "restore": build_restore_dag,
    "rollback": build_rollback_dag,
    "log_cleanup": build_log_cleanup_dag,
}


def rendered(doc: str) -> tuple[str, list[str]]:
    """The visible text of ``doc`` (CommonMark + tables) and the raw HTML it contains,
    which the UI's Markdown renderer drops: a ``<placeholder>`` outside backticks vanishes."""
    tokens = MarkdownIt("commonmark").enable("table").parse(doc)
    text: list[str] = []
    html: list[str] = []
    for token in tokens:
        if token.type == "html_block":
            html.append(token.content)
        for child in token.children or []:
            if child.type == "html_inline":
                html.append(child.content)
            elif child.type in ("text", "code_inline"):
                text.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                text.append(" ")
        if token.type in ("td_close", "th_close"):
            text.append(" ")
        if token.type in ("paragraph_close", "tr_close", "heading_close"):
            text.append("\n")
    return "".join(text), html


def docs_of(stack_name: str) -> dict[str, str]:
    stack = load_stack(stack_name)
    docs = {}
    for kind, build in BUILDERS.items():
        if kind in ("backup", "restore") and not stack.backup.enabled:
            continue
        dag: Any = build(stack)
        docs[dag.dag_id] = dag.doc_md
    return docs


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=26), "26h"),
        (timedelta(days=1), "24h"),
        (timedelta(days=7), "7d"),
        (timedelta(days=2, hours=12), "2d12h"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(seconds=3), "3s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(0), "0s"),
        (2.6, "3s"),
        (-timedelta(hours=2), "-2h"),
    ],
)
def test_durations_read_as_people_write_them(value: timedelta | float, text: str) -> None:
    assert human_duration(value) == text


def test_backup_doc_says_the_freshness_limit_in_hours() -> None:
    text, _ = rendered(docs_of("demo")["demo__backup"])
    assert (
        "freshness always runs: fails when a source's newest verified backup is older than 26h"
        in text
    )
    assert "1 day, 2:00:00" not in text
    assert "<source>.dump PostgreSQL: pg_dump -Fc inside an exported snapshot" in text
    assert "<source>.verify restores the dump into a throwaway server" in text
    assert "Restore a backup with demo__restore." in text


def test_restore_doc_names_its_steps_and_params() -> None:
    text, _ = rendered(docs_of("demo")["demo__restore"])
    assert "plan finds the backup (latest = newest not-failed one)" in text
    assert "stop_writers stops api, worker" in text
    assert "health always runs: the stack's health gate (8 checks, 3 rounds)" in text
    assert "Params: backup_id (e.g. 20261121T020000Z-1a2b3c, or latest)" in text
    assert "confirm (type demo)" in text


def test_rollback_doc_names_the_ledger() -> None:
    text, _ = rendered(docs_of("demo")["demo__rollback"])
    assert "recorded in the release ledger ($OPSFLOW_STATE_DIR/demo/ledger.jsonl)" in text
    assert "verify health gate (8 checks, 3 rounds in a row)" in text


def test_log_cleanup_doc_names_the_limits_and_the_kept_releases() -> None:
    text, _ = rendered(docs_of("demo")["demo__log_cleanup"])
    assert "log limits the stack requires (json-file max-size=10m, max-file=3)" in text
    assert "removes the stack's images older than the last 3 releases" in text
    text, html = rendered(build_airflow_log_cleanup_dag(load_airflow_maintenance()).doc_md or "")
    assert html == []
    assert "Deletes task logs and DAG-processor logs older than retention_days" in text


@pytest.mark.parametrize("stack_name", STACKS)
def test_no_doc_text_is_lost_as_html(stack_name: str) -> None:
    for dag_id, doc in docs_of(stack_name).items():
        text, html = rendered(doc)
        assert html == [], (dag_id, html)
        assert ", 0:" not in text and " day, " not in text, (dag_id, text)


def test_the_freshness_step_says_its_limit_in_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verified backup of every source, an hour old: the step says so, in stack-file units."""
    repo = Path(__file__).resolve().parents[2]
    stacks, local = tmp_path / "stacks", tmp_path / "backups"
    stacks.mkdir()
    data = yaml.safe_load((repo / "include" / "stacks" / "demo.yaml").read_text())
    data["runtime"]["working_dir"] = str(repo / "include" / "demo")
    data["backup"]["local_dir"] = str(local)
    (stacks / "demo.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("OPSFLOW_STACKS_DIR", str(stacks))
    monkeypatch.setenv("OPSFLOW_ALLOWED_ROOTS", str(tmp_path))
    taken = utcnow() - timedelta(hours=1)
    backup_id = new_backup_id(taken, "scheduled__fresh")
    stamp = taken.isoformat()
    manifest = Manifest(
        backup_id=backup_id,
        stack="demo",
        trigger="scheduled",
        run_id="scheduled__fresh",
        started_at=stamp,
        ended_at=stamp,
        sources=[
            SourceBackup(
                name=name,
                kind=kind,  # type: ignore[arg-type]
                artifacts=[Artifact(name=f"{name}.zst", size=1, sha256="0" * 64)],
                started_at=stamp,
                ended_at=stamp,
                verification=Verification(status="passed"),
            )
            for name, kind in (("app_db", "postgres"), ("cache", "redis"), ("config", "files"))
        ],
    )
    (local / backup_id).mkdir(parents=True)
    (local / backup_id / "manifest.json").write_text(manifest.to_json())
    record = StepRecord(step="freshness")
    step = BackupFreshnessOperator(task_id="freshness", stack_name="demo")
    assert step.run(record, {}) == []  # type: ignore[arg-type]
    assert record.lines == ["every source has a verified backup newer than 26h"]
