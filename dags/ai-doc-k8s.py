"""Airflow DAGs of the `ai-doc-k8s` stack (ai-doc on Kubernetes), generated from
include/stacks/ai-doc-k8s.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("ai-doc-k8s", globals())
