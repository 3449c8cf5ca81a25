"""Airflow DAGs of the `backend2-k8s` stack (backend2 on Kubernetes), generated from
include/stacks/backend2-k8s.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("backend2-k8s", globals())
