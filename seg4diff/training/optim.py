"""The one optimiser and learning-rate schedule shared by every trainer (pretrain, MAGNET)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Returns the learning-rate factor: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def adamw_warmup_cosine(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Returns (AdamW, its schedule): linear warm-up over `warmup_steps`, then cosine decay to zero at `steps`."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, steps)
    )
