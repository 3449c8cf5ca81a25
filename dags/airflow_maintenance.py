"""Airflow DAGs that keep Airflow itself tidy, from include/airflow-maintenance.yaml."""

from opsflow.factory import register_airflow_maintenance_dags

register_airflow_maintenance_dags(globals())
