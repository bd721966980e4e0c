"""Prefect flows: one per pipeline stage, plus the pipeline flow that chains them."""
