"""Triggers that run in the triggerer; importable from ``plugins/`` on ``sys.path``."""
