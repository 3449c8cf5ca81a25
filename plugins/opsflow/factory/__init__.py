"""Turn stack files into Airflow DAGs.

A thin file in ``dags/`` calls :func:`register_stack_dags` for one stack. One DAG file per
stack is deliberate: Airflow records import errors per DAG file, so a broken stack file
becomes an import error of its own file (naming the stack file, the field and the value)
while every other stack's DAGs keep loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG


def build_stack_dags(stack_name: str) -> list[DAG]:
    from opsflow.factory.deploy import build_deploy_dag
    from opsflow.stack.loader import load_stack

    stack = load_stack(stack_name)
    return [build_deploy_dag(stack)]


def register_stack_dags(stack_name: str, namespace: dict[str, Any]) -> list[DAG]:
    """Build the stack's DAGs and put them in the calling DAG file's globals."""
    dags = build_stack_dags(stack_name)
    for dag in dags:
        namespace[dag.dag_id.replace("-", "_")] = dag
    return dags
