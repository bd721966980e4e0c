"""Attention capture and intervention on MM-DiT joint attention: one mechanism for observing and editing a layer,
the fused kernels it uses, perturbation, whole-generation traces, and extraction into the attention store."""
