"""Airflow DAGs of the `backend2` stack, generated from include/stacks/backend2.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("backend2", globals())
