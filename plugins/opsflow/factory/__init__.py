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
    from opsflow.factory.backup import build_backup_dag
    from opsflow.factory.deploy import build_deploy_dag
    from opsflow.factory.maintenance import build_log_cleanup_dag
    from opsflow.factory.restore import build_restore_dag
    from opsflow.factory.rollback import build_rollback_dag
    from opsflow.factory.upgrade import build_upgrade_dag
    from opsflow.stack.loader import load_stack

    stack = load_stack(stack_name)
    dags = [
        build_deploy_dag(stack),
        build_upgrade_dag(stack),
        build_rollback_dag(stack),
        build_log_cleanup_dag(stack),
    ]
    if stack.backup.enabled:
        dags += [build_backup_dag(stack), build_restore_dag(stack)]
    return dags


def _register(dags: list[DAG], namespace: dict[str, Any]) -> list[DAG]:
    for dag in dags:
        namespace[dag.dag_id.replace("-", "_")] = dag
    return dags


def register_stack_dags(stack_name: str, namespace: dict[str, Any]) -> list[DAG]:
    """Build the stack's DAGs and put them in the calling DAG file's globals."""
    return _register(build_stack_dags(stack_name), namespace)


def register_airflow_maintenance_dags(namespace: dict[str, Any]) -> list[DAG]:
    """DAGs that keep Airflow itself tidy (``include/airflow-maintenance.yaml``)."""
    from opsflow.factory.maintenance import build_airflow_log_cleanup_dag
    from opsflow.stack.loader import load_airflow_maintenance

    return _register([build_airflow_log_cleanup_dag(load_airflow_maintenance())], namespace)
