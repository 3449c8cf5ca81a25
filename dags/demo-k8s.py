"""Airflow DAGs of the `demo-k8s` stack (the demo on Kubernetes), generated from
include/stacks/demo-k8s.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("demo-k8s", globals())
