"""Backups: sources (PostgreSQL, Redis, buckets, config files), the streaming pipeline,
destinations, restore verification, retention and freshness. No Airflow imports at module
level: operators in ``opsflow.operators.backup`` wire these into DAGs."""
