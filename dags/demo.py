"""Airflow DAGs of the `demo` stack, generated from include/stacks/demo.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("demo", globals())
