"""The one optimiser and learning-rate schedule shared by every trainer (pretrain, MAGNET)."""
from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Returns the learning-rate factor: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
