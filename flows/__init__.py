"""Prefect flows: one per pipeline stage, plus the pipeline flow that chains them."""

from seg4diff.numerics import pin_cpu_numerics

pin_cpu_numerics()  # before torch runs anything: the same bits on any x86-64 machine (SEG4DIFF_NUMERICS=native: off)
