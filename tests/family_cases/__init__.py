"""Tiny configs of every covered diffusers joint-attention family, with naive references, for tests/test_families.py.

Each group module (`sd3_flux`, `group_a`, …) exports CASES: a list of `Case`. A case builds the real diffusers
transformer class at a tiny width (seeded), the keyword arguments of one forward (batch 2, a non-square image token
grid, a short text), and a naive reference: from an attention module and the arguments its forward received, the
full joint softmax(QKᵀ·scale) in the order the stock processor concatenates tokens, from the module's own
projections, norms and rotary embeddings (materialising N×N on purpose: it shares no code with seg4diff.capture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    name: str  # the transformer class, as diffusers names it (= the FAMILIES row's name)
    build: Callable[[], torch.nn.Module]  # the tiny transformer, seeded, fp32, eval mode
    inputs: Callable[[torch.nn.Module], dict]  # one forward's keyword arguments (return_dict=False)
    naive: Callable[[torch.nn.Module, tuple, dict], torch.Tensor]  # (module, args, kwargs) → (batch, head, q, k)
    grid: tuple[int, int]  # the image token grid (rows, columns) of `inputs`
    text_length: int  # text keys of the joint attention (every layer)
    image_first: bool  # the joint sequence: image tokens first (True) or text first
    queries_only: tuple[int, ...] = ()  # layers where only the image tokens query
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # image-stream projections of a layer
