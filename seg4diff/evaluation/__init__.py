"""Evaluation: metrics (one IoU), bootstrap statistics, layer scoring and selection, protocols, fidelity, the causal
test."""
