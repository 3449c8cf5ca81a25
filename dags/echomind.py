"""Airflow DAGs of the `echomind` stack, generated from include/stacks/echomind.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("echomind", globals())
