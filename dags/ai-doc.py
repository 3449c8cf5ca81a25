"""Airflow DAGs of the `ai-doc` stack, generated from include/stacks/ai-doc.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("ai-doc", globals())
