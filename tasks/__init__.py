"""Prefect tasks: thin wrappers adding retries, logging and artifacts around seg4diff library calls."""
