"""The opsflow demo application: one codebase, several releases selected at build time."""
