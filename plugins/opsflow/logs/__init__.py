"""Log cleanup: the file engine (no Airflow imports) used by the log cleanup DAG."""
