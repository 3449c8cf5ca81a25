"""Airflow DAGs of the `kratos-k8s` stack (kratos on Kubernetes), generated from
include/stacks/kratos-k8s.yaml."""

from opsflow.factory import register_stack_dags

register_stack_dags("kratos-k8s", globals())
