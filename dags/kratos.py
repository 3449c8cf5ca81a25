"""Airflow DAGs of the `kratos` stack, generated from include/stacks/kratos.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("kratos", globals())
