"""Backbones: loading diffusers pipelines (hub id or local directory) and the organism behind one interface, LoRA
adapters."""
