"""Reporting: figures, the attention explorer page, and tracked outputs written reproducibly."""
