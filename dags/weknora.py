"""Airflow DAGs of the `weknora` stack, generated from include/stacks/weknora.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("weknora", globals())
