"""Prefect tasks: thin wrappers adding retries, logging and artifacts around seg4diff library calls."""

from seg4diff.numerics import pin_cpu_numerics

pin_cpu_numerics()  # a Dask worker imports tasks, not flows: it pins its own process (seg4diff.numerics)
