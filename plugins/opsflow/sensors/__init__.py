"""Deferrable sensors: wait in the triggerer, not in a worker slot."""
