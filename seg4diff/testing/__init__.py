"""Naive references and helpers for tests and benchmarks: they materialise what the library never does."""
